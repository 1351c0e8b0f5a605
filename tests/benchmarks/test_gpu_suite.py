"""benchmarks/gpu_suite.sh: the prepared GPU run, checked on the CPU.

The dry run goes through every step of the GPU run (preflight, tests, kernels, dit,
headline, report) on a copy of the repository that is not installed anywhere, with the
small budgets and selections below, so that CI keeps it short; `--dry-run` with its own
defaults is what benchmarks/README.md describes.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audiox_engine.benchmarks import results

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_suite.sh"
STEPS = ("preflight", "tests", "kernels", "dit", "headline", "report")
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
DRY_RUN_ENV = {
    "T_TOTAL": "120", "T_PREFLIGHT": "25", "T_TESTS": "25", "T_KERNELS": "15", "T_DIT": "20", "T_HEADLINE": "25",
    "T_REPORT": "15", "TESTS": "tests/kernels/test_dispatch.py",
    "DIT_BACKENDS": "eager,engine-fp32,eager-fp32", "HEADLINE_BACKENDS": "eager,engine-fp32",
}


def _uninstalled_copy(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", ".benchmarks")
    for folder in ("audiox_engine", "audiox", "kernels", "engine", "benchmarks", "tests"):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _run(args, env_extra, timeout):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHON": sys.executable} | env_extra
    return subprocess.run(["bash", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def _summary(log: str) -> dict[str, str]:
    block = log.split("== summary", 1)[1]
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\w+)\s+(\S+)\s+rc=", block, re.MULTILINE)}


def test_dry_run_goes_through_every_step(tmp_path):
    copy = _uninstalled_copy(tmp_path / "checkout")
    out = tmp_path / "out"
    proc = _run([copy / "benchmarks" / "gpu_suite.sh", "--dry-run", out], DRY_RUN_ENV, timeout=160)
    log = (out / "gpu_suite.log").read_text()
    assert proc.returncode == 0, proc.stdout[-4000:] + log[-4000:]
    assert _summary(log) == dict.fromkeys(STEPS, "ok") and "all steps ok: yes" in proc.stdout
    assert f"audiox_engine.kernels from {copy.name}/kernels" in log  # the copy imports itself
    assert "== GPU state (before)" in log and "== GPU state (after)" in log

    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert 1 <= len(files) <= 8 and all(len(p.parts) <= 2 and all(SAFE_NAME.match(s) for s in p.parts) for p in files)
    runs = {name: results.load(out / f"{name}.json") for name in ("kernels", "dit", "headline")}
    assert all(run["complete"] and run["env"]["config"]["smoke"] for run in runs.values())
    assert any(e["metrics"].get("gbps", 0) > 0 for e in runs["kernels"]["entries"])
    assert {s["name"] for s in runs["kernels"]["skipped"]} >= {"ceilings"}
    dit = {e["name"]: e for e in runs["dit"]["entries"]}
    assert {"dit_forward/eager", "dit_forward/engine-fp32"} <= set(dit)
    assert dit["dit_forward/eager"]["metrics"]["flops_per_call"] > 0
    assert any("release's precision" in s["reason"] for s in runs["dit"]["skipped"])
    assert "turbo-4/eager" in {e["name"] for e in runs["headline"]["entries"]}
    md = (out / "BENCHMARKS.generated.md").read_text()
    assert "### One DiT forward" in md and "### Turbo (4 steps) vs teacher with CFG" in md
    assert "The engine against its peers" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run's refusal on a machine without a GPU")
def test_gpu_run_stops_at_the_preflight_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    proc = _run([SCRIPT, out], {}, timeout=90)
    log = (out / "gpu_suite.log").read_text()
    assert proc.returncode == 2 and "MISSING  a CUDA device visible to torch" in log
    assert "nothing else ran" in proc.stdout and "== tests" not in log
    assert sorted(p.name for p in out.iterdir()) == ["gpu_suite.log", "plots"]


def test_bad_usage(tmp_path):
    proc = _run([SCRIPT], {}, timeout=30)
    assert proc.returncode == 2 and "usage: benchmarks/gpu_suite.sh [--dry-run] OUT" in proc.stderr
    proc = _run([SCRIPT, "--dry-run", tmp_path / "o"], {"PYTHON": "no-such-python3"}, timeout=30)
    assert proc.returncode == 2 and "no no-such-python3" in proc.stderr


def test_gpu_run_budgets_fit_seven_minutes():
    text = SCRIPT.read_text()
    gpu_branch = text.split("\nelse\n", 1)[1].split("\nfi\n", 1)[0]
    budgets = {k: int(v) for k, v in re.findall(r'"\$\{(T_\w+):=(\d+)\}"', gpu_branch)}
    assert budgets["T_TOTAL"] == 420
    assert sum(v for k, v in budgets.items() if k != "T_TOTAL") <= 420
    assert set(budgets) == {"T_TOTAL", "T_PREFLIGHT", "T_TESTS", "T_KERNELS", "T_DIT", "T_HEADLINE", "T_REPORT"}
    assert "nvidia-smi --query-gpu" in text and not re.search(r"nvidia-smi\s+(-[a-z]*[rlp]c?|--lock|--reset)", text)
    tests_line = next(line for line in gpu_branch.splitlines() if "{TESTS:=" in line)
    assert all(t in tests_line for t in ("tests/kernels", "tests/test_engine*.py", "tests/test_quant*.py"))
    assert "distill" not in tests_line  # the distillation tests take minutes
