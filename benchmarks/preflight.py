"""Preflight of a benchmark run: everything it needs, checked in seconds, before anything long.

    python3 -m audiox_engine.benchmarks.preflight            # GPU run: CUDA, a compiled Triton kernel
    python3 -m audiox_engine.benchmarks.preflight --dry-run  # CPU dry run: Triton's interpreter

Checks every module the run imports (the tests' too), that the project imports from this
checkout, the C compiler and Python headers Triton needs to build its launcher (and, for
a CPU run, the C++ compiler Inductor needs), then launches one trivial Triton kernel and
checks its result. Prints one line per check and, when something required is missing,
the list of what to install or fix. Exit status 0 when the run can start, 2 otherwise.
Imports nothing at module level, so a missing torch is reported like anything else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# import name -> what to install
REQUIRED = {
    "torch": "torch", "triton": "triton", "numpy": "numpy", "tqdm": "tqdm", "safetensors": "safetensors",
    "transformers": "transformers", "einops": "einops", "hypothesis": "hypothesis", "pytest": "pytest",
    "matplotlib": "matplotlib",
}
# Media I/O (reading prompts and videos, writing WAVs) is on no benchmark's or GPU test's path;
# the H200 image of 2026-11 has neither package.
OPTIONAL = {
    "soundfile": "soundfile: audio files cannot be read or written (not needed by this run)",
    "av": "av (PyAV): videos cannot be decoded (not needed by this run)",
    "pynvml": "nvidia-ml-py: without it GPU telemetry (power, clocks, throttling) is null",
    "flash_attn": "flash-attn: one attention baseline less", "xformers": "xformers: one attention baseline less",
    "bitsandbytes": "bitsandbytes: one INT8 baseline less",
}
# The project, as the run imports it: each must come from this checkout.
PROJECT = {"audiox_engine": "audiox_engine", "audiox_engine.audiox": "audiox", "audiox_engine.kernels": "kernels",
           "audiox_engine.engine": "engine", "audiox_engine.benchmarks": "benchmarks"}
PROJECT_ENTRY_POINTS = ("audiox_engine.audiox.pipeline", "audiox_engine.benchmarks.suites",
                        "audiox_engine.benchmarks.report", "audiox_engine.benchmarks.charts")


class Checks:
    def __init__(self):
        self.missing: list[str] = []

    def ok(self, what: str) -> None:
        print(f"  ok       {what}", flush=True)

    def note(self, what: str) -> None:
        print(f"  note     {what}", flush=True)

    def fail(self, what: str, fix: str) -> None:
        print(f"  MISSING  {what}", flush=True)
        self.missing.append(fix)


def _check_modules(c: Checks) -> None:
    for name, dist in REQUIRED.items():
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # ImportError, or a broken install failing at import
            c.fail(f"import {name}: {type(exc).__name__}: {exc}", f"pip install {dist}")
        else:
            c.ok(f"import {name} {getattr(mod, '__version__', '')}".rstrip())
    for name, why in OPTIONAL.items():
        try:
            importlib.import_module(name)
        except Exception:
            c.note(f"no {why}")


def _check_project(c: Checks) -> None:
    for name, folder in PROJECT.items():
        try:
            mod = importlib.import_module(name)
        except Exception as exc:
            c.fail(f"import {name}: {type(exc).__name__}: {exc}", f"fix the import of {name} (see the line above)")
            continue
        where = Path(mod.__file__).resolve().parent
        if where != REPO_ROOT / folder:
            c.fail(f"{name} comes from {where}, not this checkout ({REPO_ROOT / folder})",
                   f"run from {REPO_ROOT} (or uninstall the other audiox-engine) so that {name} is this checkout's")
        else:
            c.ok(f"{name} from {where.relative_to(REPO_ROOT.parent)}")
    before = len(c.missing)
    for name in PROJECT_ENTRY_POINTS:
        try:
            importlib.import_module(name)
        except Exception as exc:
            c.fail(f"import {name}: {type(exc).__name__}: {exc}", f"fix the import of {name} (see the line above)")
    if len(c.missing) == before:
        c.ok(f"project entry points import: {', '.join(PROJECT_ENTRY_POINTS)}")


def _check_compilers(c: Checks, dry_run: bool) -> None:
    cc = next((shutil.which(x) for x in (os.environ.get("CC"), "cc", "gcc", "clang") if x and shutil.which(x)), None)
    if cc is None:
        c.fail("a C compiler (cc, gcc or clang; or $CC): Triton builds its kernel launcher with it",
               "install gcc (e.g. apt-get install build-essential)")
    else:
        c.ok(f"C compiler {cc}")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        c.fail(f"Python headers ({header}): Triton's launcher includes Python.h",
               f"install the Python {sys.version_info.major}.{sys.version_info.minor} development headers (python3-dev)")
    else:
        c.ok(f"Python headers {header.parent}")
    if dry_run:
        cxx = next((shutil.which(x) for x in (os.environ.get("CXX"), "c++", "g++", "clang++") if x and shutil.which(x)),
                   None)
        if cxx is None:
            c.fail("a C++ compiler (c++, g++ or clang++; or $CXX): torch.compile's CPU code needs it", "install g++")
        else:
            c.ok(f"C++ compiler {cxx}")


def _check_device_and_triton(c: Checks, dry_run: bool) -> None:
    import torch

    if dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            c.fail("TRITON_INTERPRET=1 (a CPU run executes the Triton kernels in Triton's interpreter)",
                   "export TRITON_INTERPRET=1 before starting python")
            return
        device = "cpu"
        c.ok(f"CPU run, {torch.get_num_threads()} torch threads, Triton interpreter")
    else:
        if os.environ.get("TRITON_INTERPRET"):
            c.fail("TRITON_INTERPRET is set: the GPU run must execute compiled kernels", "unset TRITON_INTERPRET")
            return
        if not torch.cuda.is_available():
            c.fail(f"a CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda})",
                   "run on a machine with an NVIDIA GPU and a CUDA build of torch")
            return
        device = "cuda"
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        c.ok(f"CUDA {torch.version.cuda}: {props.name}, sm_{props.major}{props.minor}, "
             f"{free / 2**30:.0f} of {total / 2**30:.0f} GiB free")
    t0 = time.perf_counter()
    try:
        from audiox_engine.benchmarks._preflight_kernel import add_one

        x = torch.arange(1000, device=device, dtype=torch.float32)
        add_one(x)
        if not torch.equal(x.cpu(), torch.arange(1000, dtype=torch.float32) + 1):
            raise RuntimeError("wrong result")
    except Exception as exc:
        c.fail(f"a trivial Triton kernel on {device}: {type(exc).__name__}: {str(exc)[:500]}",
               "fix Triton (the C compiler, the CUDA driver or the Triton install; see the line above)")
    else:
        c.ok(f"trivial Triton kernel on {device} ({'interpreted' if dry_run else 'compiled and launched'}): "
             f"right result ({time.perf_counter() - t0:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="preflight", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="a CPU run (Triton's interpreter), not a GPU run")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    print(f"preflight ({'CPU dry run' if args.dry_run else 'GPU run'}): python {sys.version.split()[0]} "
          f"at {sys.executable}, checkout {REPO_ROOT}", flush=True)
    c = Checks()
    _check_modules(c)
    _check_compilers(c, args.dry_run)
    if "torch" not in " ".join(c.missing) and "triton" not in " ".join(c.missing):
        _check_project(c)
        _check_device_and_triton(c, args.dry_run)
    took = time.perf_counter() - t0
    if c.missing:
        print(f"preflight FAILED in {took:.1f} s; missing:\n" + "\n".join(f"  - {m}" for m in dict.fromkeys(c.missing)),
              flush=True)
        return 2
    print(f"preflight ok in {took:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
