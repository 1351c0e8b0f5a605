"""The sampling loops over the DiT, Turbo and teacher with CFG
(`python -m pytest benchmarks -k loops`)."""

import pytest

from audiox_engine.benchmarks import workloads
from audiox_engine.benchmarks.conftest import run_benchmark, teacher_steps, unavailable_to_skip

MATRIX = [("turbo", workloads.TURBO_STEPS)] + [("teacher", n) for n in teacher_steps()]


@pytest.fixture(scope="module")
def prepared(bench_preset, bench_device):
    """One eager DiT and, when the engine takes it, one engine-bf16 copy (built lazily)."""
    cache = {}

    def get(backend):
        if backend not in cache:
            base = cache.get("eager")
            cache[backend] = unavailable_to_skip(workloads.prepare_dit, bench_preset, bench_device, backend, base=base)
        return cache[backend]

    get("eager")
    return get


@pytest.mark.parametrize("backend", ["eager", "engine-bf16"])
@pytest.mark.parametrize("mode,steps", MATRIX, ids=[f"{m}-{n}" for m, n in MATRIX])
def test_sampling_loop(record_property, prepared, backend, mode, steps, bench_rounds):
    w = workloads.loop_workload(prepared(backend), mode, steps, batch=1)
    run_benchmark(record_property, w, bench_rounds)
