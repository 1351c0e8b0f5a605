"""Timing of one callable: first call, warm-up and steady state kept apart.

The one timer of every benchmark here: the suites, the kernel benchmarks
(`benchmarks/kernels/`), the quantized GEMMs and the pytest entry (`benchmarks/test_bench_*`).

GPU work is timed with CUDA events around each repetition after warm-up, and the L2
cache is flushed (by writing a buffer larger than L2) before every repetition, so that
a small workload does not report cache-resident speed that a real generation never
sees. CPU work is timed with `time.perf_counter`.

The first call is timed on its own (wall clock, synchronized): on the engine path it
holds Triton compilation, autotuning and CUDA-graph capture, which a skeptic wants to
see but which must not leak into the steady-state median.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

# Fallback when the driver does not report L2 size; larger than any current card's L2
# (H100 50 MiB, H200 60 MiB, B200 126 MiB).
_DEFAULT_L2_BYTES = 128 * 1024 * 1024


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted, non-empty list; q in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac


def summarize(samples_ms: list[float]) -> dict:
    """median / p10 / p90 / mean / min / max of a list of milliseconds."""
    if not samples_ms:
        raise ValueError("cannot summarize zero timing samples")
    s = sorted(float(v) for v in samples_ms)
    return {
        "median_ms": percentile(s, 50.0),
        "p10_ms": percentile(s, 10.0),
        "p90_ms": percentile(s, 90.0),
        "mean_ms": sum(s) / len(s),
        "min_ms": s[0],
        "max_ms": s[-1],
    }


@dataclass
class TimingResult:
    """What one timed callable produced.

    first_call_s: wall time of the very first call (compile, autotune, graph capture).
    warmup_s: wall time of the remaining warm-up calls together.
    compile_s: first call minus one steady-state call, floored at 0: the one-off cost.
    """

    samples_ms: list[float]
    wall_samples_ms: list[float]  # host clock per repetition (synchronized); equals samples_ms on CPU
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    first_call_s: float
    warmup_s: float
    compile_s: float
    reps: int
    warmup: int
    device: str
    method: str
    l2_flushed: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class L2Flusher:
    """Evicts the GPU L2 cache by writing a buffer larger than it.

    Writing (not reading) is used because a write-allocate of a fresh pattern replaces
    every line, whatever the replacement policy.
    """

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        l2 = int(getattr(props, "L2_cache_size", 0) or _DEFAULT_L2_BYTES)
        self.nbytes = 2 * l2
        self.buffer = torch.empty(self.nbytes // 4, dtype=torch.int32, device=device)
        self._value = 0

    def flush(self) -> None:
        self._value = (self._value + 1) % 1024
        self.buffer.fill_(self._value)


def sync(device: torch.device | str) -> None:
    """Waits for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_first_call(fn: Callable[[], object], device: torch.device | str) -> tuple[object, float]:
    """(result, seconds) of one synchronized call: the first call of a workload, which
    holds any compilation, autotuning or CUDA-graph capture."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def _choose_reps(per_call_s: float, reps: int | None, budget_s: float | None,
                 min_reps: int, max_reps: int) -> int:
    if reps is not None:
        if reps < 1:
            raise ValueError(f"reps must be >= 1, got {reps}")
        return reps
    if budget_s is None:
        return max_reps
    fit = int(budget_s / max(per_call_s, 1e-6))
    return max(min_reps, min(max_reps, fit))


def time_callable(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    *,
    warmup: int = 2,
    reps: int | None = None,
    budget_s: float | None = None,
    min_reps: int = 3,
    max_reps: int = 50,
    flush_l2: bool = True,
    first_call_s: float | None = None,
) -> TimingResult:
    """Time `fn()` on `device`; returns samples and summary statistics.

    warmup: calls after the first one that are run but not recorded (>= 0).
    reps: recorded repetitions; if None they are chosen to fit `budget_s` from the
      warm-up's per-call time, clamped to [min_reps, max_reps].
    flush_l2: on CUDA, flush L2 before every recorded repetition (not timed).
    first_call_s: pass the measured time when the caller already made the first call
      (e.g. to check the result); it is then not repeated.
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"time_callable supports cpu and cuda devices, got {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("time_callable: device is cuda but torch.cuda.is_available() is False")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")

    if first_call_s is None:
        _, first_call_s = timed_first_call(fn, device)

    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warmup_s = time.perf_counter() - t0
    per_call_s = warmup_s / warmup if warmup else first_call_s
    n = _choose_reps(per_call_s, reps, budget_s, min_reps, max_reps)

    notes: list[str] = []
    if device.type == "cuda":
        flusher = L2Flusher(device) if flush_l2 else None
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        wall_ms = []
        for i in range(n):
            if flusher is not None:
                flusher.flush()
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            starts[i].record()
            fn()
            ends[i].record()
            # Synchronizing each repetition also gives a wall-clock cross-check: events on the
            # current stream miss work that a callee queued on other streams without joining.
            torch.cuda.synchronize(device)
            wall_ms.append((time.perf_counter() - t0) * 1e3)
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        method = "cuda_events"
        ev_med, wall_med = summarize(samples)["median_ms"], summarize(wall_ms)["median_ms"]
        if wall_med > 1.1 * ev_med + 0.05:
            notes.append(f"wall-clock median {wall_med:.3f} ms exceeds the CUDA-event median {ev_med:.3f} ms: "
                         "launch overhead, host work or work on other streams; see wall_samples_ms")
    else:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        method = "perf_counter"
        flusher = None
        wall_ms = samples
        notes.append("CPU timing: caches not flushed between repetitions")

    stats = summarize(samples)
    compile_s = max(0.0, first_call_s - stats["median_ms"] / 1e3)
    return TimingResult(
        samples_ms=[float(s) for s in samples],
        wall_samples_ms=[float(s) for s in wall_ms],
        first_call_s=first_call_s,
        warmup_s=warmup_s,
        compile_s=compile_s,
        reps=n,
        warmup=warmup,
        device=str(device),
        method=method,
        l2_flushed=flusher is not None,
        notes=notes,
        **stats,
    )
