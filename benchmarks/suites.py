"""The benchmark suites, and the runner that turns workloads into result entries.

Suites (the `group` of their entries in parentheses):
- kernels: measured memory-copy and bf16-matmul ceilings of this card (ceilings), then
  every module in benchmarks/kernels/ that has `run(device, quick)` (kernels).
- dit: one DiT forward per backend (dit).
- loops: the sampling loops over the DiT alone, teacher with CFG and Turbo (loops).
- e2e: text -> waveform through AudioXPipeline, Turbo and the longest teacher (e2e),
  then the conditioning and VAE-decode stages alone (e2e_stages).
- headline: teacher with CFG at N = 250, 100, 50, 25 and Turbo at 4 steps, each eager
  and through the engine (bf16, FP8, INT8), end to end when the pipeline exists, else
  over the sampling loops; the level used is recorded in every entry's params.
- cpu (opt-in, not in "all"; benchmarks/cpu_suite.py): eager fp32, torch.compile of it,
  engine fp32 and engine bf16 on the CPU, interleaved: DiT forward, Turbo loop, VAE decode (cpu).

Smoke mode (`smoke=True`): tiny preset, teacher N divided by 25 (250 -> 10), no
warm-up beyond the first call and two repetitions, so that CI can run the harness on 2
CPU cores.

The result file is rewritten after every entry, so a suite killed by its time budget
still leaves every finished row on disk (with "complete": false).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from audiox_engine.benchmarks import results, telemetry, timing, workloads
from audiox_engine.benchmarks.cpu_suite import run_cpu
from audiox_engine.benchmarks.environment import capture_environment
from audiox_engine.benchmarks.workloads import BACKENDS, WorkloadUnavailable

log = logging.getLogger(__name__)

SUITES = ("kernels", "dit", "loops", "e2e", "headline")
OPT_IN_SUITES = ("cpu",)  # run only when named, not by "all" (benchmarks/cpu_suite.py)
HEADLINE_TEACHER_STEPS = (250, 100, 50, 25)
SMOKE_STEP_DIVISOR = 25
KERNEL_ROW_KEYS = ("kernel", "impl", "shape", "dtype", "ms_median", "ms_p10", "ms_p90")


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
    telemetry_interval_s: float = 0.05
    threads: int | None = None  # torch intra-op threads for CPU runs (None: leave as is)
    depth: int | None = None  # DiT blocks for the cpu suite (None: the preset's)
    out: str | None = None
    notes: list = field(default_factory=list)

    def __post_init__(self):
        if self.suite not in SUITES + OPT_IN_SUITES + ("all",):
            raise ValueError(f"unknown suite {self.suite!r}; expected one of {SUITES + OPT_IN_SUITES + ('all',)}")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ValueError(f"unknown backend(s) {bad}; expected some of {BACKENDS}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        self.teacher_steps = tuple(int(n) for n in self.teacher_steps)
        if not self.teacher_steps or min(self.teacher_steps) < 1:
            raise ValueError(f"teacher_steps must be positive integers, got {self.teacher_steps}")

    @classmethod
    def smoke_defaults(cls, **overrides) -> "BenchConfig":
        """Tiny preset, scaled-down teacher steps, minimal repetitions."""
        teacher = overrides.pop("teacher_steps", HEADLINE_TEACHER_STEPS)
        base = dict(
            preset="tiny", smoke=True, warmup=0, reps=2, min_reps=2, max_reps=2, budget_s=1.0,
            teacher_steps=tuple(sorted({max(1, n // SMOKE_STEP_DIVISOR) for n in teacher}, reverse=True)),
        )
        base.update(overrides)
        return cls(**base)


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
        nvml_reason = telemetry.unavailable_reason()  # warns once when NVML is missing
        self._telemetry_reason = None
        if self.device.type != "cuda":
            self._telemetry_reason = "benchmark device is cpu; NVML measures GPUs only" + (
                f" (and {nvml_reason})" if nvml_reason else "")

    # -- recording

    def _save(self) -> None:
        if self.out is not None:
            results.save(self.run, self.out)

    def skip(self, name: str, group: str, reason: str) -> None:
        log.info("skipped %s [%s]: %s", name, group, reason)
        self.run["skipped"].append({"name": name, "group": group, "reason": str(reason)})
        self._save()

    def _sampler(self):
        if self.device.type != "cuda":
            return None
        idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
        return telemetry.NvmlSampler(idx, self.config.telemetry_interval_s,
                                     pci_bus_id=telemetry.torch_device_pci_bus_id(idx))

    def _telemetry_of(self, sampler) -> tuple[dict | None, str | None]:
        if sampler is None:
            return None, self._telemetry_reason
        summary = sampler.summary()
        return summary, (None if summary is not None else sampler.reason or "NVML returned no samples")

    def measure(self, w: workloads.Workload) -> dict:
        """Times one workload (with telemetry) and appends its entry."""
        c = self.config
        sampler = self._sampler()
        if sampler is not None:
            sampler.start()
        try:
            t = timing.time_callable(
                w.fn, w.device, warmup=c.warmup, reps=c.reps, budget_s=c.budget_s,
                min_reps=c.min_reps, max_reps=c.max_reps, first_call_s=w.first_call_s,
            )
        finally:
            if sampler is not None:
                sampler.stop()
        tel, reason = self._telemetry_of(sampler)
        entry = results.make_entry(
            name=w.name, group=w.group, params=w.params, timing=t.to_dict(), nfe=w.nfe, batch=w.batch,
            audio_seconds=w.audio_seconds, setup_s=w.setup_s, metrics=w.metrics, telemetry=tel,
            telemetry_reason=reason,
        )
        flops = w.metrics.get("flops_per_call")
        if flops:
            entry["metrics"]["tflops"] = flops / (entry["median_ms"] / 1e3) / 1e12
        self.run["entries"].append(entry)
        self._save()
        rtf = f", RTF {entry['rtf']:.2f}" if entry["rtf"] is not None else ""
        tqdm.write(f"  {w.group:9s} {w.name:28s} median {entry['median_ms']:10.3f} ms "
                   f"(p10 {entry['p10_ms']:.3f}, p90 {entry['p90_ms']:.3f}, n={len(entry['samples_ms'])}){rtf}")
        return entry

    def attempt(self, name: str, group: str, step):
        """Runs `step()` (build and measure something); returns its value, or None after
        recording the row as skipped: with the reason when it is unavailable here, as
        FAILED with the error otherwise (the suite goes on; `bench` then exits 3)."""
        try:
            return step()
        except WorkloadUnavailable as exc:
            self.skip(name, group, str(exc))
        except Exception as exc:  # a broken row must not cost the rest of a one-shot GPU run
            log.exception("%s [%s] failed", name, group)
            self.failures += 1
            self.skip(name, group, f"FAILED: {type(exc).__name__}: {exc}")
            _free(self.device)
        return None

    def add_external(self, *, name, group, params, timing_dict, metrics, tel, reason) -> dict:
        entry = results.make_entry(name=name, group=group, params=params, timing=timing_dict, metrics=metrics,
                                   telemetry=tel, telemetry_reason=reason)
        self.run["entries"].append(entry)
        self._save()
        return entry

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


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- suites


def run_kernels(r: Runner) -> None:
    """Card ceilings, then every benchmarks/kernels module's rows."""
    if r.device.type == "cuda":
        _measure_ceilings(r)
    else:
        r.skip("ceilings", "ceilings", "device is cpu; ceilings are measured on a GPU only")
    try:
        pkg = importlib.import_module("audiox_engine.benchmarks.kernels")
    except ImportError as exc:
        r.skip("kernels", "kernels", f"benchmarks/kernels is not present ({exc})")
        return
    mods = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    if not mods:
        r.skip("kernels", "kernels", "benchmarks/kernels has no modules")
    for name in tqdm(mods, desc="kernels", leave=False):
        _run_kernel_module(r, f"audiox_engine.benchmarks.kernels.{name}")


def _run_kernel_module(r: Runner, modname: str) -> None:
    short = modname.rsplit(".", 1)[-1]
    try:
        mod = importlib.import_module(modname)
    except Exception as exc:
        r.skip(short, "kernels", f"import failed: {type(exc).__name__}: {exc}")
        return
    if not callable(getattr(mod, "run", None)):
        r.skip(short, "kernels", f"{modname} has no run(device, quick) function")
        return
    sampler = r._sampler()
    if sampler is not None:
        sampler.start()
    try:
        rows = mod.run(device=str(r.device), quick=r.config.smoke)
    except Exception as exc:
        r.skip(short, "kernels", f"run() raised {type(exc).__name__}: {exc}")
        return
    finally:
        if sampler is not None:
            sampler.stop()
    tel, reason = r._telemetry_of(sampler)
    if tel is not None:
        tel = dict(tel, scope=f"whole {short}.run() call, all its rows")
    for i, row in enumerate(rows or []):
        missing = [k for k in KERNEL_ROW_KEYS if k not in row]
        if missing or not ("gbps" in row or "tflops" in row):
            what = missing or ["gbps or tflops"]
            r.skip(f"{short}[{i}]", "kernels", f"{modname}.run() row lacks {what}")
            continue
        timing_dict = {
            "samples_ms": list(row.get("samples_ms", [])),
            "median_ms": row["ms_median"], "p10_ms": row["ms_p10"], "p90_ms": row["ms_p90"],
            "compile_s": row.get("compile_s"), "first_call_s": None, "method": f"{modname}.run",
        }
        metrics = {k: row[k] for k in ("gbps", "tflops") if row.get(k) is not None}
        params = {"kernel": row["kernel"], "impl": row["impl"], "shape": _jsonable(row["shape"]),
                  "dtype": str(row["dtype"]).replace("torch.", ""), "module": short}
        r.add_external(name=f"{row['kernel']}/{row['impl']}", group="kernels", params=params,
                       timing_dict=timing_dict, metrics=metrics, tel=tel, reason=reason)


def _measure_ceilings(r: Runner) -> None:
    """Device-to-device copy bandwidth and a large bf16 matmul: the roofline's two ceilings."""
    dev = r.device
    n_bytes = (256 if r.config.smoke else 1024) * 2**20
    src = torch.randn(n_bytes // 2, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    w = workloads.Workload(name="copy", group="ceilings", params={"bytes": n_bytes, "device": dev.type},
                           fn=lambda: dst.copy_(src), device=dev, nfe=None)
    e = r.measure(w)
    e["metrics"]["gbps"] = 2 * n_bytes / (e["median_ms"] / 1e3) / 1e9  # read + write
    del src, dst
    n = 4096 if r.config.smoke else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    w = workloads.Workload(name="matmul_bf16", group="ceilings", params={"m": n, "n": n, "k": n, "dtype": "bfloat16"},
                           fn=lambda: a @ b, device=dev, nfe=None)
    e = r.measure(w)
    e["metrics"]["tflops"] = 2 * n**3 / (e["median_ms"] / 1e3) / 1e12
    r._save()
    del a, b
    _free(dev)


def run_dit(r: Runner) -> None:
    """One forward per backend. Achieved TFLOP/s for every backend uses the model FLOPs
    counted once on the eager model: the same math, whatever kernels run it."""
    base, model_flops = None, None

    def measure(prep):
        w = workloads.dit_forward_workload(prep, r.config.batch)
        if "flops_per_call" not in w.metrics and model_flops:
            w.metrics["flops_per_call"] = model_flops
        return r.measure(w)

    for backend in tqdm(r.config.backends, desc="dit", leave=False):
        prep = r.attempt(f"dit_forward/{backend}", "dit",
                         lambda: workloads.prepare_dit(r.config.preset, r.device, backend, base=base))
        if prep is None:
            continue
        if backend == "eager":
            base = prep
        entry = r.attempt(f"dit_forward/{backend}", "dit", lambda: measure(prep))
        if backend == "eager" and entry is not None:
            model_flops = entry["metrics"].get("flops_per_call")
        prep = None
        _free(r.device)


def _step_matrix(c: BenchConfig) -> list[tuple[str, int]]:
    """Cheapest first, so that a run cut by its time budget keeps the most rows."""
    return [("turbo", c.turbo_steps)] + [("teacher", n) for n in sorted(c.teacher_steps)]


def _run_matrix(r: Runner, group: str, level: str) -> None:
    """Every (mode, steps) of the matrix for every backend, at `level` ('e2e' or 'loops')."""
    c = r.config
    base = None
    matrix = _step_matrix(c)
    prepare = workloads.prepare_pipeline if level == "e2e" else workloads.prepare_dit
    for backend in r.config.backends:
        prep = r.attempt(f"prepare/{backend}", group, lambda: prepare(c.preset, r.device, backend, base=base))
        if prep is None:
            # the reason is recorded once for the backend; name its rows so the table is complete
            reason = r.run["skipped"].pop()["reason"]
            for mode, steps in matrix:
                r.skip(f"{mode}-{steps}/{backend}", group, reason)
            continue
        if backend == "eager":
            base = prep  # engine rows start from a copy of the same random weights

        def build_and_measure(mode, steps):
            if level == "e2e":
                w = workloads.e2e_workload(prep, mode, steps, c.batch, c.cfg_scale if mode == "teacher" else None,
                                           group=group)
            else:
                w = workloads.loop_workload(prep, mode, steps, c.batch, c.cfg_scale, group=group)
            w.params["level"] = level
            return r.measure(w)

        for mode, steps in tqdm(matrix, desc=f"{group} {backend}", leave=False):
            r.attempt(f"{mode}-{steps}/{backend}", group, lambda: build_and_measure(mode, steps))
        prep = None
        _free(r.device)


def run_loops(r: Runner) -> None:
    _run_matrix(r, "loops", "loops")


def run_e2e(r: Runner) -> None:
    """Turbo and the longest teacher, eager and engine-bf16, end to end; then the
    conditioning and VAE-decode stages alone (sampling alone is the loops suite)."""
    sub = dataclasses.replace(
        r.config, teacher_steps=(max(r.config.teacher_steps),),
        backends=tuple(b for b in r.config.backends if b in ("eager", "engine-bf16")),
    )
    saved, r.config = r.config, sub
    try:
        _run_matrix(r, "e2e", "e2e")
    finally:
        r.config = saved
    base = None
    for backend in sub.backends:
        prep = r.attempt(f"stages/{backend}", "e2e_stages",
                         lambda: workloads.prepare_pipeline(sub.preset, r.device, backend, base=base))
        if prep is None:
            continue
        if backend == "eager":
            base = prep
        r.attempt(f"stages/{backend}", "e2e_stages",
                  lambda: [r.measure(w) for w in workloads.e2e_stage_workloads(prep, sub.batch, group="e2e_stages")])
        prep = None
    base = None
    _free(r.device)


def run_headline(r: Runner) -> None:
    """The Turbo-vs-teacher table: end to end if the pipeline exists, else sampling loops."""
    try:
        workloads.load_pipeline_class()
        level = "e2e"
    except WorkloadUnavailable as exc:
        level = "loops"
        r.run["env"]["config"]["headline_level_reason"] = f"pipeline unavailable, sampling loops only: {exc}"
        log.warning("headline: %s", r.run["env"]["config"]["headline_level_reason"])
    _run_matrix(r, "headline", level)


SUITE_FUNCS = {"kernels": run_kernels, "dit": run_dit, "loops": run_loops, "e2e": run_e2e, "headline": run_headline,
               "cpu": run_cpu}


def run_suite(config: BenchConfig) -> dict:
    """Runs `config.suite` (or all of them) and returns the validated result run."""
    r = Runner(config)
    names = SUITES if config.suite == "all" else (config.suite,)
    for name in names:
        tqdm.write(f"suite {name} on {r.device} (preset {config.preset}{', smoke' if config.smoke else ''})")
        r.attempt(name, name, lambda: SUITE_FUNCS[name](r))
    return r.finish()
