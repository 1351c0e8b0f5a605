"""Timing helpers shared by the kernel benchmarks.

GPU: ``triton.testing.do_bench`` (CUDA events, L2 flushed before every rep), quantiles
p10 / median / p90. CPU: ``time.perf_counter`` around each call, for smoke tests of
``run(device="cpu", quick=True)`` only: those numbers mean nothing for the GPU.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def bench(fn: Callable[[], object], device: str, quick: bool = False) -> dict[str, float]:
    """Median / p10 / p90 milliseconds of ``fn()``."""
    if is_cuda(device):
        import triton.testing

        warmup, rep = (5, 20) if quick else (25, 200)
        med, p10, p90 = triton.testing.do_bench(fn, warmup=warmup, rep=rep,
                                                quantiles=[0.5, 0.1, 0.9])
        return {"ms_median": med, "ms_p10": p10, "ms_p90": p90}
    fn()  # warm-up
    times = []
    for _ in range(3 if quick else 20):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return {"ms_median": statistics.median(times), "ms_p10": q[0], "ms_p90": q[-1]}


def compile_fn(fn: Callable, args: tuple, device: str) -> tuple[Callable, float]:
    """``torch.compile(fn)``, run once on ``args``; returns it and the compile seconds."""
    compiled = torch.compile(fn)
    t0 = time.perf_counter()
    compiled(*args)
    sync(device)
    return compiled, time.perf_counter() - t0


def make_row(kernel: str, impl: str, shape, dtype: torch.dtype, timing: dict[str, float],
             nbytes: float | None = None, flops: float | None = None, **extra) -> dict:
    """One result: timings plus GB/s (from bytes moved) or TFLOP/s (from flops)."""
    row = {"kernel": kernel, "impl": impl, "shape": tuple(shape),
           "dtype": str(dtype).removeprefix("torch."), **timing}
    if nbytes is not None:
        row["gbps"] = nbytes / (timing["ms_median"] * 1e-3) / 1e9
    if flops is not None:
        row["tflops"] = flops / (timing["ms_median"] * 1e-3) / 1e12
    row.update(extra)
    return row


def error_row(kernel: str, impl: str, shape, dtype: torch.dtype, err: BaseException) -> dict:
    """A baseline that could not run here (not importable, unsupported, compile failed)."""
    nan = float("nan")
    return {"kernel": kernel, "impl": impl, "shape": tuple(shape),
            "dtype": str(dtype).removeprefix("torch."), "ms_median": nan, "ms_p10": nan,
            "ms_p90": nan, "error": f"{type(err).__name__}: {err}"}


def bench_impls(kernel: str, shape, dtype: torch.dtype, device: str, quick: bool,
                impls: dict[str, Callable[[], object]], nbytes: float | None = None,
                flops: float | None = None, compiled: tuple[Callable, tuple] | None = None,
                **extra) -> list[dict]:
    """Time each named zero-argument callable, plus ``torch.compile`` of ``compiled``'s
    (function, args) when given. A failing implementation gives an error row."""
    rows = []
    for impl, fn in impls.items():
        try:
            rows.append(make_row(kernel, impl, shape, dtype, bench(fn, device, quick),
                                 nbytes, flops, **extra))
        except Exception as err:  # noqa: BLE001 - a baseline failing must not stop the run
            rows.append(error_row(kernel, impl, shape, dtype, err))
    if compiled is not None:
        fn, args = compiled
        try:
            cfn, compile_s = compile_fn(fn, args, device)
            rows.append(make_row(kernel, "torch.compile", shape, dtype,
                                 bench(lambda: cfn(*args), device, quick), nbytes, flops,
                                 compile_s=compile_s, **extra))
        except Exception as err:  # noqa: BLE001
            rows.append(error_row(kernel, "torch.compile", shape, dtype, err))
    return rows


def measure_copy_bandwidth(device: str = "cuda", nbytes: int | None = None) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second),
    the roofline that memory-bound kernels are reported against."""
    if nbytes is None:
        nbytes = (1 << 30) if is_cuda(device) else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    timing = bench(lambda: dst.copy_(src), device, quick=not is_cuda(device))
    return 2 * nbytes / (timing["ms_median"] * 1e-3) / 1e9
