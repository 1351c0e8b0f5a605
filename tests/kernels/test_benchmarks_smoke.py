"""Smoke test of the kernel benchmarks' ``run(device="cpu", quick=True)``.

Quick CPU runs leave the ``torch.compile`` baselines out (Inductor's CPU compile alone
would take longer than this whole directory's time budget), as a row that says so; the
rows' shape is what is checked. ``tests/benchmarks/test_timing.py`` covers the compiled row.
"""

import importlib
import math

import pytest

from audiox_engine.benchmarks.kernels import measure_copy_bandwidth

REQUIRED = {"kernel", "impl", "shape", "dtype"}


@pytest.mark.parametrize("module", ["adaln", "dit_attention", "conv1d_k3", "snake_beta"])
def test_run_quick_on_cpu(module):
    rows = list(importlib.import_module(f"audiox_engine.benchmarks.kernels.{module}").run("cpu", quick=True))
    impls = {r["impl"] for r in rows}
    assert {"ours", "eager", "torch.compile"} <= impls
    for row in rows:
        assert REQUIRED <= row.keys(), row
        assert "error" not in row, row
        if row["impl"] == "torch.compile":
            assert "quick CPU run" in row["skipped"]
            continue
        assert ("gbps" in row) or ("tflops" in row), row
        t = row["timing"]
        assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] and t["reps"] == len(t["samples_ms"]) == 3, row


def test_measure_copy_bandwidth():
    gbps = measure_copy_bandwidth("cpu", nbytes=1 << 20)
    assert math.isfinite(gbps) and gbps > 0
