"""benchmarks/timing.py: the one timer every benchmark uses."""

import numpy as np
import pytest
import torch

from audiox_engine.benchmarks import timing
from audiox_engine.benchmarks.kernels import _common


def test_percentiles_match_numpy():
    vals = sorted(np.random.default_rng(0).random(37).tolist())
    for q in (0, 10, 50, 90, 100):
        assert timing.percentile(vals, q) == pytest.approx(np.percentile(vals, q))
    s = timing.summarize(vals)
    assert s["p10_ms"] <= s["median_ms"] <= s["p90_ms"] and s["min_ms"] == vals[0] and s["max_ms"] == vals[-1]
    with pytest.raises(ValueError, match="zero timing samples"):
        timing.summarize([])
    with pytest.raises(ValueError, match=r"q must be in \[0, 100\]"):
        timing.percentile(vals, 101)


def test_time_callable_counts_calls_and_keeps_first_call_apart():
    calls = []
    res = timing.time_callable(lambda: calls.append(1), "cpu", warmup=2, reps=5)
    assert len(calls) == 1 + 2 + 5
    assert len(res.samples_ms) == res.reps == 5 and res.method == "perf_counter"
    assert res.first_call_s >= 0 and res.compile_s >= 0 and not res.l2_flushed
    calls.clear()
    res = timing.time_callable(lambda: calls.append(1), "cpu", warmup=1, reps=3, first_call_s=1.5)
    assert len(calls) == 1 + 3 and res.first_call_s == 1.5
    assert res.compile_s == pytest.approx(1.5 - res.median_ms / 1e3)
    with pytest.raises(ValueError, match="cpu and cuda"):
        timing.time_callable(lambda: None, "meta")
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        timing.time_callable(lambda: None, "cpu", warmup=-1)


def test_repetitions_fit_the_budget_within_bounds():
    assert timing._choose_reps(0.01, None, 1.0, 3, 50) == 50  # 100 fit, clamped to max_reps
    assert timing._choose_reps(0.5, None, 1.0, 3, 50) == 3  # 2 fit, raised to min_reps
    assert timing._choose_reps(0.1, None, 1.0, 3, 50) == 10
    assert timing._choose_reps(0.1, 7, 1.0, 3, 50) == 7  # fixed reps win
    with pytest.raises(ValueError, match="reps must be >= 1"):
        timing._choose_reps(0.1, 0, None, 3, 50)


def test_timed_first_call_returns_the_result():
    out, seconds = timing.timed_first_call(lambda: 42, "cpu")
    assert out == 42 and seconds >= 0


def test_kernel_rows_take_their_times_from_the_timer(monkeypatch):
    """The kernel benchmarks' rows: timing from benchmarks.timing, a failing implementation
    as an error row, torch.compile with its compile seconds apart (quick CPU runs skip it)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    x = torch.randn(4096)

    def broken():
        raise RuntimeError("not on this card")

    impls = {"ours": lambda: x * 2, "broken": broken}
    rows = list(_common.bench_impls("scale", (4096,), torch.float32, "cpu", False, impls, nbytes=8 * 4096,
                                    compiled=(torch.mul, (x, 2)), layer="l0"))
    ours, bad, compiled = rows
    assert ours["timing"]["method"] == "perf_counter" and ours["gbps"] > 0 and ours["layer"] == "l0"
    assert ours["timing"]["reps"] >= _common.FULL_TIMING["min_reps"]
    assert bad["error"] == "RuntimeError: not on this card" and "timing" not in bad
    assert compiled["impl"] == "torch.compile" and compiled["compile_s"] >= 0
    assert compiled["timing"]["first_call_s"] == compiled["compile_s"]
    quick = list(_common.bench_impls("scale", (4096,), torch.float32, "cpu", True, impls, nbytes=8 * 4096,
                                     compiled=(torch.mul, (x, 2))))
    assert quick[0]["timing"]["reps"] == 3 and "quick CPU run" in quick[-1]["skipped"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_callable_cuda_events_flush_l2():
    x = torch.randn(1 << 20, device="cuda")
    res = timing.time_callable(lambda: x * 2, "cuda", warmup=2, reps=5)
    assert res.method == "cuda_events" and res.l2_flushed and len(res.samples_ms) == 5
    assert len(res.wall_samples_ms) == 5 and all(w > 0 for w in res.wall_samples_ms)
