"""Text -> waveform through AudioXPipeline, Turbo and the longest teacher
(`python -m pytest benchmarks -k e2e`)."""

import pytest

from audiox_engine.benchmarks import workloads
from audiox_engine.benchmarks.conftest import run_benchmark, teacher_steps, unavailable_to_skip

MATRIX = [("turbo", workloads.TURBO_STEPS), ("teacher", max(teacher_steps()))]


@pytest.fixture(scope="module")
def pipelines(bench_preset, bench_device):
    cache = {}

    def get(backend):
        if backend not in cache:
            cache[backend] = unavailable_to_skip(workloads.prepare_pipeline, bench_preset, bench_device, backend)
        return cache[backend]

    return get


@pytest.mark.parametrize("backend", ["eager", "engine-bf16"])
@pytest.mark.parametrize("mode,steps", MATRIX, ids=[f"{m}-{n}" for m, n in MATRIX])
def test_end_to_end(record_property, pipelines, backend, mode, steps, bench_rounds):
    w = unavailable_to_skip(workloads.e2e_workload, pipelines(backend), mode, steps, batch=1)
    run_benchmark(record_property, w, bench_rounds)
