"""The `cpu` suite: the eager reference against `engine.accelerate` on the CPU, rows interleaved.

    python -m audiox_engine.benchmarks bench --suite cpu --device cpu --depth 12 --reps 5 --out cpu.json

Full width (the preset's DiT with `--depth` blocks, default the preset's), batch `--batch`.
Three workloads: one DiT forward, the Turbo 4-step loop, and the VAE decode of the
preset's latent length (236 frames: 10 s of audio). Each has four rows:

- `eager`: the `audiox` reference in fp32 (the Turbo loop through `audiox.sampling`);
- `compiled`: `torch.compile` of the same eager modules (inductor, default mode); the
  compile is the row's first call, recorded as `compile_s` apart from the median;
- `engine-fp32`, `engine-bf16`: `engine.accelerate(..., backend="cpu")` with that dtype
  (the VAE: `vae_dtype` None, i.e. the release's fp32, and bf16); `--backends` picks
  which of the two run (both by default; at depth 24 the three fp32 copies of the DiT
  do not fit in 24 GB beside the bf16 one).

Rows run interleaved (round r times every row once, after a first call and `--warmup`
calls each), so that load drifting on a shared machine hits all rows alike; each sample
also records the process's CPU time, whose ratios hold even when other jobs take a core. Every row
records its speed-up over `eager` and over `compiled` from the same run, and its accuracy
against the eager output (relative error and cosine; SNR for audio). The load average
before and after each workload and the CPU's ISA (`engine.cpu_features`) go into the
result's `env`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from audiox_engine import engine
from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.audiox.sampling import sample_turbo
from audiox_engine.audiox.vae import OobleckDecoder, VAEConfig
from audiox_engine.benchmarks import results, timing, workloads
from audiox_engine.benchmarks.runner import free_memory
from audiox_engine.benchmarks.workloads import WorkloadUnavailable
from audiox_engine.engine.cpu_features import bf16_matmul_is_fast, cpu_features

log = logging.getLogger(__name__)

GROUP = "cpu"
VARIANTS = ("eager", "compiled", "engine-fp32", "engine-bf16")
DEFAULT_REPS = 5
SMOKE_REPS = 2


@dataclass
class _Row:
    """One variant of one workload: its callable, first call and interleaved samples."""

    variant: str
    fn: Callable[[], torch.Tensor]
    setup_s: float
    first_call_s: float = 0.0
    output: torch.Tensor | None = None
    samples_ms: list = field(default_factory=list)
    cpu_samples_ms: list = field(default_factory=list)  # process CPU time, all threads
    notes: list = field(default_factory=list)


def _first_call(row: _Row) -> None:
    out, row.first_call_s = timing.timed_first_call(row.fn, "cpu")
    row.output = out.detach().float().clone()


def _interleave(rows: list[_Row], warmup: int, reps: int) -> None:
    """Every row once per round, `reps` rounds, after `warmup` untimed rounds."""
    for _ in range(warmup):
        for row in rows:
            row.fn()
    for _ in range(reps):
        for row in rows:
            c0, t0 = time.process_time(), time.perf_counter()
            row.fn()
            row.samples_ms.append((time.perf_counter() - t0) * 1e3)
            row.cpu_samples_ms.append((time.process_time() - c0) * 1e3)


def _accuracy(got: torch.Tensor, want: torch.Tensor, audio: bool) -> dict:
    g, w = got.double().flatten(), want.double().flatten()
    err = (g - w).norm() / w.norm().clamp_min(1e-30)
    out = {"rel_err_vs_eager": err.item(),
           "cosine_vs_eager": torch.nn.functional.cosine_similarity(g, w, dim=0).item()}
    if audio:
        out["snr_db_vs_eager"] = (-20 * math.log10(max(err.item(), 1e-30)))
    return out


def _record(r, workload: str, rows: list[_Row], params: dict, nfe: int | None, audio_seconds: float | None,
            load_before: tuple, audio: bool) -> None:
    medians = {row.variant: timing.summarize(row.samples_ms)["median_ms"] for row in rows if row.samples_ms}
    cpu_medians = {row.variant: timing.summarize(row.cpu_samples_ms)["median_ms"] for row in rows if row.samples_ms}
    eager = next((row for row in rows if row.variant == "eager"), None)
    for row in rows:
        if not row.samples_ms:
            continue
        stats = timing.summarize(row.samples_ms)
        timing_dict = dict(stats, samples_ms=row.samples_ms, wall_samples_ms=row.samples_ms,
                           first_call_s=row.first_call_s,
                           compile_s=max(0.0, row.first_call_s - stats["median_ms"] / 1e3),
                           reps=len(row.samples_ms), device="cpu", method="perf_counter, rows interleaved",
                           l2_flushed=False, notes=list(row.notes))
        metrics = {f"speedup_vs_{base}": medians[base] / stats["median_ms"]
                   for base in ("eager", "compiled") if base in medians}
        # CPU time is what the row costs whatever else runs on the machine: a check on the wall ratios.
        metrics["cpu_time_median_ms"] = cpu_medians[row.variant]
        metrics["cpu_time_samples_ms"] = list(row.cpu_samples_ms)
        if "eager" in cpu_medians:
            metrics["cpu_time_speedup_vs_eager"] = cpu_medians["eager"] / cpu_medians[row.variant]
        if eager is not None and row is not eager:
            metrics.update(_accuracy(row.output, eager.output, audio))
        metrics["loadavg_before"] = list(load_before)
        metrics["loadavg_after"] = list(os.getloadavg())
        entry = results.make_entry(
            name=f"{workload}/{row.variant}", group=GROUP, params=dict(params, variant=row.variant), timing=timing_dict,
            nfe=nfe, batch=params["batch"], audio_seconds=audio_seconds, setup_s=row.setup_s, metrics=metrics,
            telemetry=None, telemetry_reason=r._telemetry_reason or "cpu suite: no GPU telemetry")
        r.run["entries"].append(entry)
        ratio = "  ".join(f"{k[11:]} {v:.2f}x" for k, v in metrics.items() if k.startswith("speedup_vs_"))
        print(f"  {GROUP} {entry['name']:28s} median {stats['median_ms']:10.1f} ms  first call "
              f"{row.first_call_s:7.1f} s  {ratio}", flush=True)
    r._save()


def _measure(r, workload: str, builders: dict, params: dict, nfe: int | None, audio_seconds: float | None,
             audio: bool = False) -> None:
    """Build every variant (a failure skips that row, with the reason), then time them interleaved."""
    c = r.config
    load_before = os.getloadavg()
    rows: list[_Row] = []
    for variant, build in builders.items():
        if variant.startswith("engine-") and variant not in c.backends:
            continue
        why = r.out_of_time(share=False)
        if why is not None:  # --time-budget-s: rows not started by then are recorded as skipped
            r.skip(f"{workload}/{variant}", GROUP, why)
            continue
        t0 = time.perf_counter()
        try:
            fn, notes = build()
            row = _Row(variant, fn, setup_s=0.0, notes=notes)
            row.setup_s = time.perf_counter() - t0
            _first_call(row)
        except WorkloadUnavailable as exc:
            r.skip(f"{workload}/{variant}", GROUP, str(exc))
            continue
        except Exception as exc:  # a broken variant must not cost the others
            log.exception("%s/%s failed", workload, variant)
            r.failures += 1
            r.skip(f"{workload}/{variant}", GROUP, f"FAILED: {type(exc).__name__}: {exc}")
            continue
        rows.append(row)
    reps = c.reps or (SMOKE_REPS if c.smoke else DEFAULT_REPS)
    _interleave(rows, c.warmup, reps)
    _record(r, workload, rows, params, nfe, audio_seconds, load_before, audio)


# ---------------------------------------------------------------- the models


def _dit_config(r):
    cfg = get_preset(r.config.preset)
    depth = r.config.depth or cfg.dit.depth
    return cfg, dataclasses.replace(cfg.dit, depth=depth)


def _eager_dit(dit_cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = MMDiffusionTransformer(dit_cfg).eval()
    workloads.fill_zero_params_(model, seed)
    return model.float()


def _accelerate(obj, dtype: torch.dtype, **kwargs):
    return engine.accelerate(obj, backend="cpu", dtype=dtype, **kwargs)


def _cast_copy(module, dtype: torch.dtype):
    """A deep copy whose floating tensors are cast while copying: the peak is the copy in
    ``dtype``, not a second fp32 model (a depth-24 bf16 engine fits beside the eager one)."""
    memo = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            cast = t.detach().to(dtype, copy=True)
            memo[id(t)] = torch.nn.Parameter(cast, requires_grad=False) if isinstance(t, torch.nn.Parameter) else cast
    return copy.deepcopy(module, memo)


def _compiled(module):
    return torch.compile(module)


def run_cpu(r) -> None:
    """The cpu suite (see the module docstring); `r` is the harness's Runner."""
    if r.device.type != "cpu":
        r.skip("cpu", GROUP, f"the cpu suite measures the CPU path; run it with --device cpu (device is {r.device})")
        return
    r.run["env"]["cpu_isa"] = dict(cpu_features())
    r.run["env"]["loadavg_at_start"] = list(os.getloadavg())
    # Warm inductor caches make a compile row's first call seconds instead of a cold compile.
    r.run["env"]["inductor_caches"] = os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "0") != "1"
    cfg, dit_cfg = _dit_config(r)
    batch = r.config.batch
    params = {"preset": r.config.preset, "width": dit_cfg.embed_dim, "depth": dit_cfg.depth, "batch": batch,
              "latent": [batch, dit_cfg.io_channels, dit_cfg.latent_frames], "device": "cpu",
              "threads": torch.get_num_threads()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dit_cfg.io_channels, dit_cfg.latent_frames, generator=g)
    t = torch.rand(batch, generator=g).clamp_(0.05, 0.95)
    cond = torch.randn(batch, dit_cfg.num_cond_tokens, dit_cfg.cond_token_dim, generator=g)
    eager = _eager_dit(dit_cfg)
    engines = {}  # built on first use, so that a row left out by --backends costs no memory

    def engine_dit(dtype):
        if dtype not in engines:
            engines[dtype] = _accelerate(_cast_copy(eager, dtype), dtype, inplace=True)
        return engines[dtype]

    compiled_dit = _compiled(eager)
    with torch.no_grad():
        forward = {
            "eager": lambda: (lambda: eager(x, t, cond), []),
            "compiled": lambda: (lambda: compiled_dit(x, t, cond), []),
            "engine-fp32": lambda: (_bound_forward(engine_dit(torch.float32), x, t, cond), []),
            "engine-bf16": lambda: (_bound_forward(engine_dit(torch.bfloat16), x, t, cond), _bf16_note()),
        }
        _measure(r, "dit_forward", forward, params | {"workload": "dit_forward"}, nfe=1, audio_seconds=None)
        steps = r.config.turbo_steps
        turbo = {
            "eager": lambda: (_eager_turbo(eager, x, cond, steps), []),
            "compiled": lambda: (_eager_turbo(compiled_dit, x, cond, steps), []),
            "engine-fp32": lambda: (_engine_turbo(engine_dit(torch.float32), x, cond, steps), []),
            "engine-bf16": lambda: (_engine_turbo(engine_dit(torch.bfloat16), x, cond, steps), _bf16_note()),
        }
        _measure(r, f"turbo-{steps}", turbo, params | {"workload": "turbo", "steps": steps}, nfe=steps,
                 audio_seconds=float(cfg.seconds))
    del eager, compiled_dit, engines, forward, turbo
    free_memory(torch.device("cpu"))
    _run_vae(r, cfg, dit_cfg, params)


def _bound_forward(model, x, t, cond):
    return lambda: model(x, t, cond)


def _eager_turbo(model, x, cond, steps):
    return lambda: sample_turbo(model, x, steps=steps, generator=torch.Generator().manual_seed(1),
                                    cross_attn_cond=cond)


def _engine_turbo(model, x, cond, steps):
    return lambda: engine.sample_turbo(model, x, cond, steps=steps, generator=torch.Generator().manual_seed(1))


def _bf16_note() -> list:
    return [] if bf16_matmul_is_fast() else ["this CPU has neither AMX nor AVX-512 BF16: bf16 GEMMs are emulated"]


def _vae_decoder(cfg, seed: int = 0):
    preset = (cfg.vae or {}).get("preset", "full")
    vae_cfg = VAEConfig.tiny() if preset == "tiny" else VAEConfig.full()
    torch.manual_seed(seed)
    dec = OobleckDecoder(vae_cfg).eval()
    workloads.fill_zero_params_(dec, seed)
    return dec, vae_cfg


def _bound_decode(vae, z):
    return lambda: vae(z)


def _run_vae(r, cfg, dit_cfg, params) -> None:
    dec, vae_cfg = _vae_decoder(cfg)
    batch = r.config.batch
    z = torch.randn(batch, vae_cfg.latent_dim, dit_cfg.latent_frames, generator=torch.Generator().manual_seed(2))
    compiled = _compiled(dec)
    vae_params = params | {"workload": "vae_decode", "latent_frames": dit_cfg.latent_frames,
                           "vae_channels": vae_cfg.channels}
    with torch.no_grad():
        builders = {
            "eager": lambda: (lambda: dec(z), []),
            "compiled": lambda: (lambda: compiled(z), []),
            "engine-fp32": lambda: (_bound_decode(_accelerate(dec, torch.float32), z), []),
            "engine-bf16": lambda: (_bound_decode(_accelerate(dec, torch.float32, vae_dtype=torch.bfloat16), z),
                                    _bf16_note()),
        }
        _measure(r, "vae_decode", builders, vae_params, nfe=None,
                 audio_seconds=dit_cfg.latent_frames * vae_cfg.downsampling_ratio / vae_cfg.sample_rate, audio=True)
    free_memory(torch.device("cpu"))

