"""One DiT forward per backend (`python -m pytest benchmarks -k dit`)."""

import pytest

from audiox_engine.benchmarks import workloads
from audiox_engine.benchmarks.conftest import run_benchmark, unavailable_to_skip


@pytest.fixture(scope="module")
def eager_dit(bench_preset, bench_device):
    return unavailable_to_skip(workloads.prepare_dit, bench_preset, bench_device, "eager")


@pytest.mark.parametrize("backend", workloads.BACKENDS)
def test_dit_forward(record_property, eager_dit, backend, bench_rounds):
    prep = eager_dit if backend == "eager" else unavailable_to_skip(
        workloads.prepare_dit, eager_dit.preset, eager_dit.device, backend, base=eager_dit)
    w = workloads.dit_forward_workload(prep, batch=1, count_flops=False)
    run_benchmark(record_property, w, bench_rounds)
