"""The runner that turns workloads into result entries, within a time budget.

`BenchConfig` decides what a run measures (it is stored in the result's env.config);
`Runner` measures one workload at a time (`benchmarks.timing`, NVML telemetry around
it), appends its entry and rewrites the result file after every entry, so a run cut
short keeps every finished row on disk (with "complete": false).

Time budget (`time_budget_s`): rows not started before the budget is spent are recorded
under `skipped` with that reason, so the table says what was not measured. A suite
splits what is left among its parts (`Runner.share`): each backend, or each kernel
module, gets an equal share of the remaining time, and what one part leaves unused
passes on to the next. A backend's first row runs whenever the whole budget is not
spent (its model is built by then); a later row whose estimated cost exceeds what is
left of the share is not started.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from audiox_engine.benchmarks import results, telemetry, timing, workloads
from audiox_engine.benchmarks.environment import capture_environment
from audiox_engine.benchmarks.workloads import BACKENDS, COMPILE_MODES, WorkloadUnavailable

log = logging.getLogger(__name__)

HEADLINE_TEACHER_STEPS = (250, 100, 50, 25)
SMOKE_STEP_DIVISOR = 25


@dataclass
class BenchConfig:
    """Everything that decides what a run measures; stored in the result's env.config."""

    suite: str = "headline"
    preset: str = "audiox-turbo"
    smoke: bool = False
    device: str = "auto"
    batch: int = 1
    teacher_steps: tuple = HEADLINE_TEACHER_STEPS
    turbo_steps: int = workloads.TURBO_STEPS
    cfg_scale: float = workloads.TEACHER_CFG_SCALE
    backends: tuple = BACKENDS
    warmup: int = 1
    reps: int | None = None
    budget_s: float = 8.0  # per entry, steady-state repetitions only
    min_reps: int = 3
    max_reps: int = 30
    time_budget_s: float | None = None  # the whole run; see the module docstring
    telemetry_interval_s: float = 0.05
    threads: int | None = None  # torch intra-op threads for CPU runs (None: leave as is)
    depth: int | None = None  # DiT blocks for the cpu suite (None: the preset's)
    out: str | None = None
    notes: list = field(default_factory=list)

    def __post_init__(self):
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ValueError(f"unknown backend(s) {bad}; expected some of {BACKENDS}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        self.teacher_steps = tuple(int(n) for n in self.teacher_steps)
        if not self.teacher_steps or min(self.teacher_steps) < 1:
            raise ValueError(f"teacher_steps must be positive integers, got {self.teacher_steps}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0 seconds, got {self.time_budget_s}")

    @classmethod
    def smoke_defaults(cls, **overrides) -> "BenchConfig":
        """Tiny preset, teacher steps divided by 25 (250 -> 10), no warm-up beyond the first
        call, two repetitions: checks the harness on 2 CPU cores."""
        teacher = overrides.pop("teacher_steps", HEADLINE_TEACHER_STEPS)
        base = dict(
            preset="tiny", smoke=True, warmup=0, reps=2, min_reps=2, max_reps=2, budget_s=1.0,
            teacher_steps=tuple(sorted({max(1, n // SMOKE_STEP_DIVISOR) for n in teacher}, reverse=True)),
        )
        base.update(overrides)
        return cls(**base)

    def calls_per_row(self) -> int:
        """Calls of a workload's fn for one row at the least: first, warm-up, repetitions."""
        return 1 + self.warmup + (self.reps if self.reps is not None else self.min_reps)


class Runner:
    """Measures workloads into one result run and keeps the file on disk current."""

    def __init__(self, config: BenchConfig):
        self.config = config
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = workloads.resolve_device(config.device)  # WorkloadUnavailable: no such device
        self.env = capture_environment(self.device, config=_jsonable(dataclasses.asdict(config)))
        self.run = results.new_run(config.suite, self.env)
        self.out = Path(config.out) if config.out else None
        self.failures = 0
        self._start = time.monotonic()
        self._share_end: float | None = None
        self._share_s = 0.0
        nvml_reason = telemetry.unavailable_reason()  # warns once when NVML is missing
        self._telemetry_reason = None
        if self.device.type != "cuda":
            self._telemetry_reason = "benchmark device is cpu; NVML measures GPUs only" + (
                f" (and {nvml_reason})" if nvml_reason else "")

    # -- time budget

    def time_left(self, share: bool = True) -> float:
        """Seconds left to the current share of the budget (with `share`) or to the whole
        budget; infinite without a budget."""
        if self.config.time_budget_s is None:
            return float("inf")
        end = self._start + self.config.time_budget_s
        if share and self._share_end is not None:
            end = min(end, self._share_end)
        return end - time.monotonic()

    def out_of_time(self, share: bool = True) -> str | None:
        """Why nothing more may start now (within the current share, or at all), or None."""
        if self.time_left(share) > 0:
            return None
        if self._share_end is not None and time.monotonic() < self._start + self.config.time_budget_s:
            return f"not run: its share ({self._share_s:.0f} s) of the {self.config.time_budget_s:g} s time budget was spent"
        return f"not run: the {self.config.time_budget_s:g} s time budget was spent"

    def too_long(self, estimate_s: float) -> str | None:
        """Why a row estimated at `estimate_s` seconds may not start, or None."""
        left = self.time_left()
        if estimate_s > left:
            return f"not run: would take about {estimate_s:.1f} s, {max(left, 0):.1f} s of the time budget left"
        return self.out_of_time()

    @contextmanager
    def share(self, parts: int):
        """The next of `parts` remaining parts of the suite gets 1/parts of the time left."""
        saved = self._share_end, self._share_s
        left = self.time_left()
        if left != float("inf"):
            self._share_s = max(left, 0.0) / max(parts, 1)
            self._share_end = time.monotonic() + self._share_s
        try:
            yield
        finally:
            self._share_end, self._share_s = saved

    # -- recording

    def _save(self) -> None:
        if self.out is not None:
            results.save(self.run, self.out)

    def skip(self, name: str, group: str, reason: str, quiet: bool = False) -> None:
        """Records a row not measured, with why (logged unless `quiet`)."""
        if not quiet:
            log.info("skipped %s [%s]: %s", name, group, reason)
        self.run["skipped"].append({"name": name, "group": group, "reason": str(reason)})
        self._save()

    def sampled(self, fn):
        """(fn(), telemetry summary or None, why it is None) with NVML sampling around fn."""
        sampler = None
        if self.device.type == "cuda":
            idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
            sampler = telemetry.NvmlSampler(idx, self.config.telemetry_interval_s,
                                            pci_bus_id=telemetry.torch_device_pci_bus_id(idx)).start()
        try:
            value = fn()
        finally:
            if sampler is not None:
                sampler.stop()
        if sampler is None:
            return value, None, self._telemetry_reason
        summary = sampler.summary()
        return value, summary, (None if summary is not None else sampler.reason or "NVML returned no samples")

    def progress(self, group: str, what: str) -> None:
        """A line on stderr as a long step starts (building a model, a row), so that a slow
        run is never silent; the measured rows themselves go to stdout."""
        tqdm.write(f"  {group:9s} {what} ...", file=sys.stderr)

    def measure(self, w: workloads.Workload) -> dict:
        """Times one workload (with telemetry) and appends its entry."""
        c = self.config
        compiles = w.params.get("backend") in COMPILE_MODES
        self.progress(w.group, f"measuring {w.name}" + (" (its first call compiles: torch.compile)" if compiles else ""))
        t, tel, reason = self.sampled(lambda: timing.time_callable(
            w.fn, w.device, warmup=c.warmup, reps=c.reps, budget_s=min(c.budget_s, max(self.time_left(), 0.1)),
            min_reps=c.min_reps, max_reps=c.max_reps, first_call_s=w.first_call_s))
        entry = results.make_entry(
            name=w.name, group=w.group, params=w.params, timing=t.to_dict(), nfe=w.nfe, batch=w.batch,
            audio_seconds=w.audio_seconds, setup_s=w.setup_s, metrics=w.metrics, telemetry=tel,
            telemetry_reason=reason,
        )
        seconds = entry["median_ms"] / 1e3
        if w.metrics.get("flops_per_call"):
            entry["metrics"]["tflops"] = w.metrics["flops_per_call"] / seconds / 1e12
        if w.metrics.get("bytes_per_call"):
            entry["metrics"]["gbps"] = w.metrics["bytes_per_call"] / seconds / 1e9
        self.add(entry)
        rtf = f", RTF {entry['rtf']:.2f}" if entry["rtf"] is not None else ""
        tqdm.write(f"  {w.group:9s} {w.name:28s} median {entry['median_ms']:10.3f} ms "
                   f"(p10 {entry['p10_ms']:.3f}, p90 {entry['p90_ms']:.3f}, n={len(entry['samples_ms'])}){rtf}")
        return entry

    def add(self, entry: dict) -> dict:
        self.run["entries"].append(entry)
        self._save()
        return entry

    def attempt(self, name: str, group: str, step, share: bool = True):
        """Runs `step()` (build and measure something); returns its value, or None after
        recording the row as skipped: when the time budget (its current share, with
        `share`) is spent, with the reason when it is unavailable here, as FAILED with the
        error otherwise (the suite goes on; `bench` then exits 3)."""
        why = self.out_of_time(share)
        if why is not None:
            self.skip(name, group, why)
            return None
        try:
            return step()
        except WorkloadUnavailable as exc:
            self.skip(name, group, str(exc))
        except Exception as exc:  # a broken row must not cost the rest of a one-shot GPU run
            log.exception("%s [%s] failed", name, group)
            self.failures += 1
            self.skip(name, group, f"FAILED: {type(exc).__name__}: {exc}")
            free_memory(self.device)
        return None

    def finish(self) -> dict:
        self.run["complete"] = True
        results.validate(self.run, "run")
        self._save()
        return self.run


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
