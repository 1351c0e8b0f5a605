"""The benchmark suites (the `group` of their entries in parentheses).

- kernels: measured memory-copy and bf16-matmul ceilings of this card (ceilings), then
  every module in benchmarks/kernels/ that has `run(device, quick)` (kernels), each row
  saved as soon as it is measured.
- dit: one DiT forward per backend (dit).
- loops: the sampling loops over the DiT alone, teacher with CFG and Turbo (loops).
- e2e: text -> waveform through AudioXPipeline, Turbo and the longest teacher (e2e),
  then the conditioning and VAE-decode stages alone (e2e_stages).
- headline: teacher with CFG at N = 250, 100, 50, 25 and Turbo at 4 steps, end to end,
  for every backend asked for (headline).
- throughput: clips per second against batch size, end to end with one generator per item,
  as `audiox generate --prompts` makes them (throughput; `benchmarks/throughput.py`); run
  by name only (`all` leaves it out).
- cpu: eager fp32, torch.compile of it, engine fp32 and engine bf16 on the CPU, rows
  interleaved: DiT forward, Turbo loop, VAE decode (cpu; `benchmarks/cpu_suite.py`); run by
  name only.

Every suite that times the model runs the engine's backends beside their peers
(`workloads.PEERS`), measured in the same run, so the report can put the engine against
each: `eager` (the eager reference in bf16 on a GPU, the engine's working precision),
`compile` and `compile-max-autotune` (torch.compile of that reference, same dtype), and
`eager-fp32`, the release's own precision. The release runs the DiT in the dtype of its
checkpoint and the VAE decoder in fp32 (SPEC.md, Sampling). SPEC.md gives no dtype for the
checkpoint; the release builds its modules in fp32 (reference/synchformer_keys.tsv records
the modules' dtype: float32) and loads the checkpoint into them, so the DiT computes in
fp32 unless the user casts it: fp32 DiT, fp32 VAE is the choice here. Were the checkpoint
run in bf16, the `eager` row would be that precision. On CPU `eager` is already fp32.

A suite is a function of the `Runner` registered in `SUITES`; it composes the measuring
steps below, each of which takes its backends (and steps) explicitly. A new suite is one
small function, e.g. DiT forward, Turbo loop and VAE decode for some backends:

    def run_mine(r):
        backends = ("eager", "engine-bf16", "compile")
        measure_dit_forwards(r, backends, group="mine")
        measure_matrix(r, "mine", "loops", backends, [("turbo", r.config.turbo_steps)])
        measure_stages(r, backends, "mine", stages=("vae_decode",))

The cpu suite has its own measuring loop, which interleaves its rows.

Smoke mode (`BenchConfig.smoke_defaults`): tiny preset, teacher N divided by 25, two
repetitions, kernel modules in their quick mode; it checks the harness on 2 CPU cores.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import torch
from tqdm import tqdm

from audiox_engine.benchmarks import results, workloads
from audiox_engine.benchmarks.cpu_suite import run_cpu
from audiox_engine.benchmarks.runner import HEADLINE_TEACHER_STEPS, SMOKE_STEP_DIVISOR, BenchConfig, Runner, free_memory
from audiox_engine.benchmarks.throughput import THROUGHPUT_BACKENDS, measure_throughput

log = logging.getLogger(__name__)

__all__ = ["SUITES", "HEADLINE_TEACHER_STEPS", "SMOKE_STEP_DIVISOR", "BenchConfig", "run_suite",
           "prepare_backend", "measure_dit_forwards", "measure_matrix", "measure_stages", "for_each_pipeline"]

KERNEL_ROW_KEYS = ("kernel", "impl", "shape", "dtype")


# ---------------------------------------------------------------- kernels


def run_kernels(r: Runner) -> None:
    """Card ceilings, then every benchmarks/kernels module's rows."""
    if r.device.type == "cuda":
        r.attempt("ceilings", "ceilings", lambda: _measure_ceilings(r))
    else:
        r.skip("ceilings", "ceilings", "device is cpu; ceilings are measured on a GPU only")
    pkg = importlib.import_module("audiox_engine.benchmarks.kernels")
    mods = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    for i, name in enumerate(tqdm(mods, desc="kernels", leave=False)):
        with r.share(len(mods) - i):
            _run_kernel_module(r, name)


def _run_kernel_module(r: Runner, short: str) -> None:
    modname = f"audiox_engine.benchmarks.kernels.{short}"
    r.progress("kernels", f"running benchmarks/kernels/{short}.py")
    try:
        rows = iter(importlib.import_module(modname).run(device=str(r.device), quick=r.config.smoke))
    except Exception as exc:
        r.skip(short, "kernels", f"FAILED: {type(exc).__name__}: {exc}")
        r.failures += 1
        return
    i = 0
    while True:
        why = r.out_of_time()
        if why is not None:
            rows.close()
            r.skip(f"{short}[{i}:]", "kernels", f"remaining rows of {short} {why}")
            return
        try:
            row, tel, reason = r.sampled(lambda: next(rows, None))
        except Exception as exc:  # the module itself broke: its later rows are lost, the suite goes on
            r.failures += 1
            r.skip(f"{short}[{i}:]", "kernels", f"FAILED: {type(exc).__name__}: {exc}")
            return
        if row is None:
            return
        _record_kernel_row(r, short, i, row, tel, reason)
        i += 1


def _record_kernel_row(r: Runner, short: str, i: int, row: dict, tel, reason) -> None:
    missing = [k for k in KERNEL_ROW_KEYS if k not in row]
    measured = "timing" in row and ("gbps" in row or "tflops" in row)
    if missing or not (measured or "error" in row or "skipped" in row):
        r.skip(f"{short}[{i}]", "kernels", f"{short}.run() row lacks {missing or ['timing and gbps or tflops']}")
        return
    name = f"{row['kernel']}/{row['impl']}"
    if not measured:
        r.skip(name, "kernels", row.get("skipped") or f"failed here: {row['error']}")
        return
    timing_dict = dict(row["timing"], method=f"{row['timing']['method']} via {short}.run")
    if row.get("compile_s") is not None:
        timing_dict["compile_s"] = row["compile_s"]
    metrics = {k: row[k] for k in ("gbps", "tflops") if row.get(k) is not None}
    params = {"kernel": row["kernel"], "impl": row["impl"], "shape": list(row["shape"]),
              "dtype": str(row["dtype"]).replace("torch.", ""), "module": short}
    e = r.add(results.make_entry(name=name, group="kernels", params=params, timing=timing_dict, metrics=metrics,
                                 telemetry=tel, telemetry_reason=reason))
    rate = f"{metrics['tflops']:.3g} TFLOP/s" if "tflops" in metrics else f"{metrics['gbps']:.3g} GB/s"
    tqdm.write(f"  kernels   {name:40s} {str(row['shape']):22s} median {e['median_ms']:10.4f} ms  {rate}")


def _measure_ceilings(r: Runner) -> None:
    """Device-to-device copy bandwidth and a large bf16 matmul: the roofline's two ceilings."""
    dev = r.device
    n_bytes = (256 if r.config.smoke else 1024) * 2**20
    src = torch.randn(n_bytes // 2, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    w = workloads.Workload(name="copy", group="ceilings", params={"bytes": n_bytes, "device": dev.type},
                           fn=lambda: dst.copy_(src), device=dev, nfe=None)
    w.metrics["bytes_per_call"] = 2 * n_bytes  # read + write
    r.measure(w)
    del src, dst
    n = 4096 if r.config.smoke else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    w = workloads.Workload(name="matmul_bf16", group="ceilings", params={"m": n, "n": n, "k": n, "dtype": "bfloat16"},
                           fn=lambda: a @ b, device=dev, nfe=None, metrics={"flops_per_call": 2 * n**3})
    r.measure(w)
    del a, b
    free_memory(dev)


# ---------------------------------------------------------------- model suites


def prepare_backend(r: Runner, group: str, level: str, backend: str, base=None) -> workloads.Prepared:
    """The pipeline (`level` 'e2e') or the DiT of the run's preset through `backend`, said on
    stderr as it starts (a full-size model takes a while to build); `base` as in
    workloads.prepare_dit."""
    what = "pipeline" if level == "e2e" else "DiT"
    r.progress(group, f"preparing {backend}: the {r.config.preset} {what}" + (", from eager's weights" if base else ""))
    prepare = workloads.prepare_pipeline if level == "e2e" else workloads.prepare_dit
    return prepare(r.config.preset, r.device, backend, base=base)


def measure_dit_forwards(r: Runner, backends, group: str = "dit") -> None:
    """One forward per backend. Achieved TFLOP/s for every backend uses the model FLOPs
    counted once on the eager model: the same math, whatever kernels run it."""
    base, model_flops = None, None
    for i, backend in enumerate(tqdm(backends, desc=group, leave=False)):
        name = f"dit_forward/{backend}"
        with r.share(len(backends) - i):
            prep = r.attempt(name, group, lambda: prepare_backend(r, group, "dit", backend, base))
            if prep is None:
                continue
            if backend == "eager":
                base = prep

            def measure():
                w = workloads.dit_forward_workload(prep, r.config.batch)
                w.group = group
                if "flops_per_call" not in w.metrics and model_flops:
                    w.metrics["flops_per_call"] = model_flops
                return r.measure(w)

            entry = r.attempt(name, group, measure, share=False)  # built by now: measure it while the budget lasts
            if backend == "eager" and entry is not None:
                model_flops = entry["metrics"].get("flops_per_call")
            prep = None
            free_memory(r.device)


def step_matrix(c: BenchConfig, teacher_steps=None) -> list[tuple[str, int]]:
    """Turbo, then the teacher at each N, cheapest first: a run cut by its time budget
    keeps the most rows, and each row's cost can be estimated from the one before."""
    return [("turbo", c.turbo_steps)] + [("teacher", n) for n in sorted(teacher_steps or c.teacher_steps)]


def measure_matrix(r: Runner, group: str, level: str, backends, matrix: list[tuple[str, int]]) -> None:
    """Every (mode, steps) of `matrix` for every backend, at `level` ('e2e' or 'loops')."""
    base = None
    for i, backend in enumerate(backends):
        with r.share(len(backends) - i):
            prep = r.attempt(f"prepare/{backend}", group, lambda: prepare_backend(r, group, level, backend, base))
            if prep is None:
                # the reason is recorded once for the backend; name its rows so the table is complete
                reason = r.run["skipped"].pop()["reason"]
                for mode, steps in matrix:
                    r.skip(f"{mode}-{steps}/{backend}", group, reason, quiet=True)  # logged once, just now
                continue
            if backend == "eager":
                base = prep  # the other backends start from a copy of the same random weights
            _measure_rows(r, group, level, prep, matrix)
            prep = None
            free_memory(r.device)


def _measure_rows(r: Runner, group: str, level: str, prep, matrix) -> None:
    c = r.config
    per_forward_s = None  # the last row's steady-state seconds per DiT forward: the next row's estimate

    def build_and_measure(mode, steps):
        if level == "e2e":
            cfg = c.cfg_scale if mode == "teacher" else None
            w = workloads.e2e_workload(prep, mode, steps, c.batch, cfg, group=group)
        else:
            w = workloads.loop_workload(prep, mode, steps, c.batch, c.cfg_scale, group=group)
        w.params["level"] = level
        return r.measure(w)

    for i, (mode, steps) in enumerate(tqdm(matrix, desc=f"{group} {prep.backend}", leave=False)):
        name = f"{mode}-{steps}/{prep.backend}"
        forward_batch = 2 if mode == "teacher" else 1
        why = None if per_forward_s is None else r.too_long(per_forward_s * forward_batch * steps * c.calls_per_row())
        if why is not None:
            r.skip(name, group, why)
            continue
        # the first row runs on what is left of the whole budget: the model is built by now
        entry = r.attempt(name, group, lambda: build_and_measure(mode, steps), share=i > 0)
        if entry is not None:
            per_forward_s = entry["median_ms"] / 1e3 / (steps * forward_batch)


def for_each_pipeline(r: Runner, backends, group: str, measure, label: str = "prepare") -> None:
    """``measure(prep)`` for the pipeline of each backend, each in its share of the time budget
    (the engine rows built from a copy of the eager row's weights)."""
    base = None
    for i, backend in enumerate(backends):
        with r.share(len(backends) - i):
            prep = r.attempt(f"{label}/{backend}", group, lambda: prepare_backend(r, group, "e2e", backend, base))
            if prep is None:
                continue
            if backend == "eager":
                base = prep
            measure(prep)
            prep = None
            free_memory(r.device)


def measure_stages(r: Runner, backends, group: str = "e2e_stages",
                   stages: tuple[str, ...] = ("conditioning", "vae_decode")) -> None:
    """The pipeline's stages around sampling, alone, for every backend."""
    def measure(prep):
        r.attempt(f"stages/{prep.backend}", group, lambda: [
            r.measure(w) for w in workloads.e2e_stage_workloads(prep, r.config.batch, group=group, stages=stages)],
            share=False)

    for_each_pipeline(r, backends, group, measure, label="stages")


def run_dit(r: Runner) -> None:
    measure_dit_forwards(r, r.config.backends)


def run_loops(r: Runner) -> None:
    measure_matrix(r, "loops", "loops", r.config.backends, step_matrix(r.config))


def run_e2e(r: Runner) -> None:
    """Turbo and the longest teacher, eager and engine-bf16, end to end; then the
    conditioning and VAE-decode stages alone (sampling alone is the loops suite)."""
    backends = tuple(b for b in r.config.backends if b in ("eager", "engine-bf16"))
    measure_matrix(r, "e2e", "e2e", backends, step_matrix(r.config, (max(r.config.teacher_steps),)))
    measure_stages(r, backends)


def run_headline(r: Runner) -> None:
    """The Turbo-vs-teacher table, end to end, every backend asked for."""
    measure_matrix(r, "headline", "e2e", r.config.backends, step_matrix(r.config))


def run_throughput(r: Runner) -> None:
    """Clips per second against batch size, for each backend asked for of THROUGHPUT_BACKENDS."""
    backends = [b for b in r.config.backends if b in THROUGHPUT_BACKENDS]
    for_each_pipeline(r, backends, "throughput", lambda prep: measure_throughput(r, prep))


SUITES = {"kernels": run_kernels, "dit": run_dit, "loops": run_loops, "e2e": run_e2e, "headline": run_headline}
SUITES["throughput"] = run_throughput
SUITES["cpu"] = run_cpu
# Suites that `all` leaves out: studies of their own, run by name.
BY_NAME_ONLY = ("throughput", "cpu")


def run_suite(config: BenchConfig) -> dict:
    """Runs `config.suite` (or all of them) and returns the validated result run.

    Interrupted (SIGINT, as `timeout --signal=INT` sends), it records why, leaves the file
    with "complete": false and raises KeyboardInterrupt again.
    """
    if config.suite not in (*SUITES, "all"):
        raise ValueError(f"unknown suite {config.suite!r}; expected one of {(*SUITES, 'all')}")
    r = Runner(config)
    names = tuple(n for n in SUITES if n not in BY_NAME_ONLY) if config.suite == "all" else (config.suite,)
    try:
        for i, name in enumerate(names):
            tqdm.write(f"suite {name} on {r.device} (preset {config.preset}{', smoke' if config.smoke else ''})")
            with r.share(len(names) - i):
                r.attempt(name, name, lambda: SUITES[name](r))
    except KeyboardInterrupt:
        # quiet: the command says it was interrupted, in one line
        r.skip("rest of the run", config.suite, "interrupted (SIGINT: Ctrl-C, or a time limit's timeout "
                                                "--signal=INT); rows after the last entry were not measured", quiet=True)
        raise
    return r.finish()
