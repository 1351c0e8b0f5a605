"""Fixtures for the pytest-benchmark suites in benchmarks/test_bench_*.py.

These are collected only when asked for (`python -m pytest benchmarks`); the project's
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

from audiox_engine.benchmarks import workloads
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


def run_benchmark(benchmark, w: workloads.Workload, rounds: int):
    """Times `w.fn` with pytest-benchmark; on CUDA each round ends with a synchronize,
    so the wall-clock timer sees the device work. Params go into extra_info."""
    dev = w.device

    def call():
        out = w.fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    benchmark.extra_info.update({"name": w.name, "nfe": w.nfe, "batch": w.batch, "setup_s": w.setup_s,
                                 "first_call_s": w.first_call_s, **{f"param_{k}": v for k, v in w.params.items()}})
    return benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)


def unavailable_to_skip(fn, *args, **kwargs):
    """Runs a workload builder; a WorkloadUnavailable becomes a pytest skip with its reason."""
    try:
        return fn(*args, **kwargs)
    except workloads.WorkloadUnavailable as exc:
        pytest.skip(str(exc))
