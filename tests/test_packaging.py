"""The project's shape: one import root, layers that point one way, no import loops.

Layers (lowest first): kernels <- audiox <- engine <- benchmarks <- the CLI. Every import
statement counts, including those inside functions, since a lazy import is still an arrow.
"""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "audiox_engine"
# folder in the repository -> its layer; a module may import its own layer or lower ones.
LAYERS = {"kernels": 0, "audiox": 1, "engine": 2, "benchmarks": 3, "audiox_engine": 4}
# Top-level names that other PyPI distributions install (ours must not be among them).
TAKEN = {"kernels", "benchmarks", "audiox", "engine"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for folder in LAYERS:
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts if folder == PACKAGE else [PACKAGE, *parts])
            out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import a.b.c` of a non-module attribute: its module
                t = t.rpartition(".")[0]
            if t:
                found.add(t)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else PACKAGE


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) - {name} for name, path in modules.items()}


def test_layers_point_one_way(graph):
    upward = sorted(f"{src} imports {dst}" for src, dsts in graph.items() for dst in dsts
                    if LAYERS[_layer(dst)] > LAYERS[_layer(src)])
    assert not upward, "imports against the layering kernels <- audiox <- engine <- benchmarks <- cli:\n" + \
        "\n".join(upward)


def test_no_import_loops(graph):
    # Tarjan's strongly connected components: any component of more than one module is a loop.
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                loops.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not loops, f"import loops: {loops}"


def test_the_graph_sees_real_arrows(graph):
    """Guards the parser itself: known arrows of the codebase are found."""
    assert "audiox_engine.kernels" in graph["audiox_engine.engine.fused_block"]
    assert "audiox_engine.audiox.sampling" in graph["audiox_engine.audiox.pipeline"]
    assert "audiox_engine.engine" in graph["audiox_engine.cli"]


def _wheel_top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        names = {n.split("/")[0] for n in z.namelist()}
    return {n.removesuffix(".py") for n in names if not n.endswith((".dist-info", ".data"))}


def test_wheel_installs_one_top_level_name(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject.toml's build requirement
        pytest.skip(f"setuptools {setuptools.__version__} is older than the build needs (77)")
    had_build = (ROOT / "build").exists()
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                               "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    finally:
        if not had_build:  # setuptools builds in the source tree: leave it as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("audiox_engine-*.whl")
    top = _wheel_top_level(wheel)
    assert top == {PACKAGE}, top
    assert not top & TAKEN
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    # Every package of the source tree is in the wheel (pyproject.toml lists them by hand).
    for name, path in _modules().items():
        if path.name == "__init__.py":
            assert name.replace(".", "/") + "/__init__.py" in names, f"{name} is missing from the wheel"
    assert f"{PACKAGE}/audiox/assets/tiny/model.safetensors" in names


def test_runs_beside_a_stand_in_kernels_package(tmp_path):
    """Another distribution's top-level ``kernels`` (and ``benchmarks``) on the path first:
    ours are untouched, and a fused DiT forward still runs."""
    for name in ("kernels", "benchmarks", "engine"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"STAND_IN = {name!r}\n")
    code = """
import torch
import kernels, benchmarks, engine
assert (kernels.STAND_IN, benchmarks.STAND_IN, engine.STAND_IN) == ("kernels", "benchmarks", "engine")
from audiox_engine import engine as ours
from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer
import audiox_engine.kernels
assert not hasattr(audiox_engine.kernels, "STAND_IN") and hasattr(audiox_engine.kernels, "conv1d_k3")
assert kernels.__file__.startswith(%r)
cfg = get_preset("tiny").dit
dit = MMDiffusionTransformer(cfg).eval()
fast = ours.accelerate(dit, backend="reference", dtype=torch.float32)
x = torch.randn(1, cfg.io_channels, cfg.latent_frames)
c = torch.randn(1, cfg.num_cond_tokens, cfg.cond_token_dim)
t = torch.rand(1)
with torch.no_grad():
    want, got = dit(x, t, cross_attn_cond=c), fast(x, t, c)
assert ((got - want).norm() / want.norm()).item() < 1e-5
print("ok")
""" % str(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
