"""Fixtures for the pytest suites in benchmarks/test_bench_*.py: the harness's workloads as
pytest tests, timed by `benchmarks.timing` (the harness's one timer), each timing printed
and recorded as test properties (`--junitxml` keeps them).

These are collected only when asked for (`python -m pytest benchmarks -s`); the project's
default test run covers tests/ only. Settings come from the environment, so the same
command works on a laptop and a GPU box:

    AUDIOX_BENCH_DEVICE   cuda / cpu (default: cuda when available)
    AUDIOX_BENCH_PRESET   model preset (default: audiox-turbo on CUDA, tiny on CPU)
    AUDIOX_BENCH_TEACHER_STEPS  comma-separated teacher N (default: 250,100,50,25 on CUDA,
                          the smoke scaling 10,4,2,1 on CPU)
    AUDIOX_BENCH_ROUNDS   timed rounds per benchmark (default 5 on CUDA, 2 on CPU)
"""

from __future__ import annotations

import os

import pytest
import torch

from audiox_engine.benchmarks import timing, workloads
from audiox_engine.benchmarks.runner import HEADLINE_TEACHER_STEPS, SMOKE_STEP_DIVISOR


def _device() -> torch.device:
    return workloads.resolve_device(os.environ.get("AUDIOX_BENCH_DEVICE", "auto"))


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return _device()


@pytest.fixture(scope="session")
def bench_preset(bench_device) -> str:
    return os.environ.get("AUDIOX_BENCH_PRESET", "audiox-turbo" if bench_device.type == "cuda" else "tiny")


@pytest.fixture(scope="session")
def bench_rounds(bench_device) -> int:
    return int(os.environ.get("AUDIOX_BENCH_ROUNDS", 5 if bench_device.type == "cuda" else 2))


def teacher_steps() -> list[int]:
    """Teacher N values to parametrize over (read at collection time)."""
    text = os.environ.get("AUDIOX_BENCH_TEACHER_STEPS")
    if text:
        return [int(v) for v in text.split(",") if v.strip()]
    if _device().type == "cuda":
        return list(HEADLINE_TEACHER_STEPS)
    return [max(1, n // SMOKE_STEP_DIVISOR) for n in HEADLINE_TEACHER_STEPS]


def run_benchmark(record_property, w: workloads.Workload, rounds: int) -> timing.TimingResult:
    """Times `w.fn` with benchmarks.timing (CUDA events and L2 flush on a GPU); the
    workload's params and the timing go into the test's properties."""
    t = timing.time_callable(w.fn, w.device, warmup=1, reps=rounds, first_call_s=w.first_call_s)
    for key, value in {"name": w.name, "nfe": w.nfe, "batch": w.batch, "setup_s": w.setup_s,
                       **{f"param_{k}": v for k, v in w.params.items()}, "median_ms": t.median_ms,
                       "p10_ms": t.p10_ms, "p90_ms": t.p90_ms, "first_call_s": t.first_call_s}.items():
        record_property(key, value)
    print(f"\n{w.name}: median {t.median_ms:.3f} ms (p10 {t.p10_ms:.3f}, p90 {t.p90_ms:.3f}, n={t.reps}, "
          f"{t.method}), first call {t.first_call_s:.2f} s")
    return t


def unavailable_to_skip(fn, *args, **kwargs):
    """Runs a workload builder; a WorkloadUnavailable becomes a pytest skip with its reason."""
    try:
        return fn(*args, **kwargs)
    except workloads.WorkloadUnavailable as exc:
        pytest.skip(str(exc))
