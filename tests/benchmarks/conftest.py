"""Fixtures of the benchmark-harness tests: the real `tiny` preset, work kept small.

`smoke_run` is one `bench --suite all --smoke` over the real model code on the CPU,
shared by the tests that read its result file. torch.compile is replaced by the identity
while it runs: Inductor's CPU compile of the DiT takes a minute on two cores, and these
tests check the harness (the peers' rows, their names, their ratios), not Inductor;
`gpu_suite.sh --dry-run` runs the real compile.
"""

from __future__ import annotations

import pytest
import torch

from audiox_engine.benchmarks import cli

SMOKE_BACKENDS = "eager,engine-fp32,compile,engine-fp8,eager-fp32,compile-max-autotune"


def no_compile(fn=None, **kwargs):
    """Stands in for torch.compile (as a function and as Module.compile's callee)."""
    return fn if fn is not None else (lambda f: f)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests time nothing that matters; one intra-op thread avoids the large
    per-op cost of thread hand-offs on a busy 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_torch_compile(monkeypatch):
    """torch.compile replaced by the identity for one test (see the module docstring)."""
    monkeypatch.setattr(torch, "compile", no_compile)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """`bench --suite all --smoke` on the CPU: one teacher N (25, scaled to 1), one repetition."""
    mp = pytest.MonkeyPatch()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.setattr(torch, "compile", no_compile)
        out = tmp_path_factory.mktemp("bench") / "smoke.json"
        rc = cli.main(["bench", "--suite", "all", "--smoke", "--device", "cpu", "--backends", SMOKE_BACKENDS,
                       "--teacher-steps", "25", "--reps", "1", "--out", str(out)])
    finally:
        mp.undo()
        torch.set_num_threads(before)
    assert rc == 0
    return out
