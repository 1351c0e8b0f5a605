"""Rows of the kernel benchmarks; every time in them comes from ``benchmarks.timing``.

A row is one (kernel, implementation, shape, dtype) with ``timing`` (a
``TimingResult.to_dict()``: CUDA events with the L2 flushed before each repetition on a
GPU, ``time.perf_counter`` on the CPU) and ``gbps`` or ``tflops``; ``torch.compile`` rows
add ``compile_s``. An implementation that cannot run here gives a row with ``error``
instead of ``timing``, one left out on purpose a row with ``skipped`` (the reason). Rows are yielded one at a time, so the harness saves each as soon
as it is measured.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from audiox_engine.benchmarks import timing

# Steady-state repetitions: a full run fits about a quarter second per row; quick runs
# (tiny shapes, CPU smoke checks) take three repetitions, which say nothing about speed.
FULL_TIMING = {"warmup": 5, "budget_s": 0.25, "min_reps": 10, "max_reps": 100}
QUICK_TIMING = {"warmup": 1, "reps": 3}
QUICK_CPU_NO_COMPILE = ("not compiled in a quick CPU run: Inductor's CPU compile of one baseline takes longer "
                        "than a whole smoke run; full runs measure it")


def time_fn(fn: Callable[[], object], device: str, quick: bool, first_call_s: float | None = None):
    """``benchmarks.timing.time_callable`` with the kernel benchmarks' repetition settings."""
    return timing.time_callable(fn, device, first_call_s=first_call_s, **(QUICK_TIMING if quick else FULL_TIMING))


def _key(kernel: str, impl: str, shape, dtype: torch.dtype) -> dict:
    return {"kernel": kernel, "impl": impl, "shape": tuple(shape), "dtype": str(dtype).removeprefix("torch.")}


def make_row(kernel: str, impl: str, shape, dtype: torch.dtype, t: timing.TimingResult,
             nbytes: float | None = None, flops: float | None = None, **extra) -> dict:
    """One measured row: its timing plus GB/s (from bytes moved) or TFLOP/s (from flops)."""
    row = _key(kernel, impl, shape, dtype) | {"timing": t.to_dict()}
    if nbytes is not None:
        row["gbps"] = nbytes / (t.median_ms * 1e-3) / 1e9
    if flops is not None:
        row["tflops"] = flops / (t.median_ms * 1e-3) / 1e12
    return row | extra


def error_row(kernel: str, impl: str, shape, dtype: torch.dtype, err: BaseException, **extra) -> dict:
    """An implementation that could not run here (not importable, unsupported, compile failed)."""
    return _key(kernel, impl, shape, dtype) | {"error": f"{type(err).__name__}: {err}"[:300]} | extra


def _compiled_row(kernel, shape, dtype, device, quick, compiled, nbytes, flops, extra) -> dict:
    fn, args = compiled
    cfn = torch.compile(fn)
    # The first call compiles: timed on its own, kept out of the steady-state samples.
    _, compile_s = timing.timed_first_call(lambda: cfn(*args), device)
    t = time_fn(lambda: cfn(*args), device, quick, first_call_s=compile_s)
    return make_row(kernel, "torch.compile", shape, dtype, t, nbytes, flops, compile_s=compile_s, **extra)


def bench_impls(kernel: str, shape, dtype: torch.dtype, device: str, quick: bool,
                impls: dict[str, Callable[[], object]], nbytes: float | None = None,
                flops: float | None = None, compiled: tuple[Callable, tuple] | None = None,
                **extra) -> Iterator[dict]:
    """Yields a row per named zero-argument callable, then one for ``torch.compile`` of
    ``compiled``'s (function, args) when given (a skipped row in quick CPU runs). A failing
    implementation gives an error row."""
    for impl, fn in impls.items():
        try:
            row = make_row(kernel, impl, shape, dtype, time_fn(fn, device, quick), nbytes, flops, **extra)
        except Exception as err:  # noqa: BLE001 - a baseline failing must not stop the run
            row = error_row(kernel, impl, shape, dtype, err, **extra)
        yield row
    if compiled is not None and quick and torch.device(device).type == "cpu":
        yield _key(kernel, "torch.compile", shape, dtype) | {"skipped": QUICK_CPU_NO_COMPILE} | extra
    elif compiled is not None:
        try:
            row = _compiled_row(kernel, shape, dtype, device, quick, compiled, nbytes, flops, extra)
        except Exception as err:  # noqa: BLE001
            row = error_row(kernel, "torch.compile", shape, dtype, err, **extra)
        yield row


def measure_copy_bandwidth(device: str = "cuda", nbytes: int | None = None) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second),
    the roofline that memory-bound kernels are reported against."""
    on_gpu = torch.device(device).type == "cuda"
    if nbytes is None:
        nbytes = (1 << 30) if on_gpu else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, quick=not on_gpu)
    return 2 * nbytes / (t.median_ms * 1e-3) / 1e9
