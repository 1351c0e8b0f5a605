"""Smoke test of the kernel benchmarks' ``run(device="cpu", quick=True)``.

``torch.compile`` is replaced by the identity: Inductor's CPU compile alone would take
longer than this whole directory's time budget; the rows' shape is what is checked.
"""

import importlib
import math

import pytest
import torch

from audiox_engine.benchmarks.kernels import measure_copy_bandwidth

REQUIRED = {"kernel", "impl", "shape", "dtype", "ms_median", "ms_p10", "ms_p90"}


@pytest.mark.parametrize("module", ["adaln", "dit_attention", "conv1d_k3", "snake_beta"])
def test_run_quick_on_cpu(module, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn: fn)
    rows = importlib.import_module(f"audiox_engine.benchmarks.kernels.{module}").run("cpu", quick=True)
    impls = {r["impl"] for r in rows}
    assert {"ours", "eager", "torch.compile"} <= impls
    for row in rows:
        assert REQUIRED <= row.keys(), row
        assert "error" not in row, row
        assert ("gbps" in row) or ("tflops" in row), row
        assert 0 < row["ms_p10"] <= row["ms_median"] <= row["ms_p90"], row
        if row["impl"] == "torch.compile":
            assert row["compile_s"] >= 0


def test_measure_copy_bandwidth():
    gbps = measure_copy_bandwidth("cpu", nbytes=1 << 20)
    assert math.isfinite(gbps) and gbps > 0
