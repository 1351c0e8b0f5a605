"""The `throughput` suite's rows (`suites.run_throughput`): clips per second against batch size,
end to end (group `throughput`).

One call makes `batch` clips the way `audiox generate --prompts` makes them: each item
conditioned alone with its own generator, one sampler call for the batch (per-item noise),
each clip decoded alone (`AudioXPipeline.__call__` with a list of generators). What the
command adds around it (reading prompt files, writing each clip and its manifest line) is
not timed. Each row records the batch size, clips per second, and the 1-minute load average
before and after it (other processes on the machine slow a CPU row; the load says how much
else ran).

Backends: `eager` and the engine rows asked for (`engine-bf16`, `engine-fp32`). Batch sizes
1, 2, 4, 8, and 16, 32 on a GPU (1, 2 in smoke mode); rows run smallest first, and a row
estimated to overrun the time budget is not started.
"""

from __future__ import annotations

import os

import torch
from tqdm import tqdm

from audiox_engine.benchmarks import workloads
from audiox_engine.benchmarks.runner import Runner
from audiox_engine.benchmarks.timing import timed_first_call

__all__ = ["measure_throughput", "throughput_workload", "batch_sizes", "THROUGHPUT_BACKENDS"]

THROUGHPUT_BACKENDS = ("eager", "engine-bf16", "engine-fp32")


def batch_sizes(device: torch.device, smoke: bool = False) -> tuple[int, ...]:
    if smoke:
        return (1, 2)
    return (1, 2, 4, 8, 16, 32) if device.type == "cuda" else (1, 2, 4, 8)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def throughput_workload(prep: workloads.Prepared, batch: int, steps: int,
                        group: str = "throughput") -> workloads.Workload:
    """`batch` Turbo clips of the model's full length, one generator per item (seeds 0..batch-1)."""
    pipe = prep.obj
    seconds = float(prep.cfg.seconds)
    texts = [f"{workloads.DEFAULT_PROMPT} ({i})" for i in range(batch)]

    def fn():
        generators = [torch.Generator(device=prep.device).manual_seed(i) for i in range(batch)]
        with torch.no_grad():
            return pipe(texts, seconds=seconds, steps=steps, generator=generators)

    load_before = _load_average()
    (wave, sr), first_call_s = timed_first_call(fn, prep.device)
    if not (isinstance(wave, torch.Tensor) and wave.shape[0] == batch):
        raise workloads.WorkloadUnavailable(f"pipeline returned {tuple(getattr(wave, 'shape', ()))}, expected "
                                            f"(B={batch}, 2, S)")
    params = {"preset": prep.preset, "backend": prep.backend, "dtype": str(prep.dtype).replace("torch.", ""),
              "batch": batch, "device": prep.device.type, "mode": "turbo", "steps": steps,
              "generators": "one per item", "threads": torch.get_num_threads()}
    return workloads.Workload(
        name=f"turbo-{steps}-b{batch}/{prep.backend}", group=group, params=params, fn=fn, device=prep.device,
        nfe=steps, batch=batch, audio_seconds=wave.shape[-1] / float(sr), setup_s=prep.setup_s,
        metrics={"sample_rate": int(sr), "load_average_1m_before": load_before, "notes": list(prep.notes)},
        first_call_s=first_call_s)


def measure_throughput(r: Runner, prep: workloads.Prepared, group: str = "throughput") -> None:
    """One row per batch size, smallest first; a row estimated to overrun the budget is skipped."""
    steps = r.config.turbo_steps
    per_clip_s = None  # the last row's seconds per clip: the next row's estimate
    sizes = batch_sizes(r.device, r.config.smoke)
    for i, batch in enumerate(tqdm(sizes, desc=f"{group} {prep.backend}", leave=False)):
        name = f"turbo-{steps}-b{batch}/{prep.backend}"
        why = None if per_clip_s is None else r.too_long(per_clip_s * batch * r.config.calls_per_row())
        if why is not None:
            r.skip(name, group, why)
            continue
        entry = r.attempt(name, group, lambda: r.measure(throughput_workload(prep, batch, steps, group)), share=i > 0)
        if entry is None:
            continue
        seconds = entry["median_ms"] / 1e3
        entry["metrics"]["clips_per_s"] = batch / seconds
        entry["metrics"]["load_average_1m_after"] = _load_average()
        per_clip_s = seconds / batch
        tqdm.write(f"  {group:9s} {name:28s} {batch / seconds:8.3f} clips/s")
