"""What is timed: one DiT forward, the sampling loops, and end-to-end generation.

Every workload is built from the public APIs of `audiox` and `engine`. A configuration
that cannot run here (FP8 on a card without it, a dtype the engine refuses) raises
`WorkloadUnavailable` with the reason, and the suite records the row as skipped.

Backends: the engine (`engine-fp32`, `engine-bf16`, `engine-fp8`, `engine-int8`, through
`engine.accelerate`) and the peers it is compared with in the same run (`PEERS`):
- `eager`: the eager reference in the engine's working precision, bf16 on CUDA (fp32 on
  CPU, where bf16 is not a target);
- `eager-fp32`: the eager reference in the release's own precision: the DiT in fp32, the
  VAE decoder in fp32 (this repo's pipeline keeps the VAE in fp32 whatever the DiT's
  dtype). On CPU it is the `eager` row itself, so it is skipped there. Why fp32 (see the
  suites' docstring);
- `compile`, `compile-max-autotune`: `torch.compile` of the eager reference in the same
  dtype as `eager`, mode "default" and "max-autotune", applied to what `engine.accelerate`
  changes (every DiT's forward, and the decode of a VAE with SnakeBetas). max-autotune tunes GPU kernels and
  is skipped on CPU. The compilation happens on the first call of each row (and again
  when the batch changes: Turbo runs at B, the teacher at 2B), so it is reported as that
  row's first-call overhead, apart from the steady-state timing.

Models are built directly on the benchmark device (`with device:`): a 2.2 B-parameter
initialisation on the CPU takes minutes. Parameters that are all zeros after
construction (zero-initialised gates and projections) are refilled with random values,
because zeros can run measurably faster than real data and would flatter every number.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from audiox_engine import engine
from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.audiox.pipeline import AudioXPipeline
from audiox_engine.audiox.pretransform import AutoencoderPretransform
from audiox_engine.audiox.sampling import TEACHER_CFG_SCALE, TURBO_STEPS, sample_teacher, sample_turbo
from audiox_engine.audiox.vae import SnakeBeta
from audiox_engine.benchmarks.timing import sync, timed_first_call

# Run order when every backend is asked for: the reference and the engine first.
BACKENDS = ("eager", "engine-bf16", "compile", "engine-fp8", "engine-int8", "engine-fp32", "eager-fp32",
            "compile-max-autotune")
PEERS = ("eager", "eager-fp32", "compile", "compile-max-autotune")
COMPILE_MODES = {"compile": "default", "compile-max-autotune": "max-autotune"}
# Quantized rows: engine.accelerate (bf16), then the block weights through engine.quantize.
QUANT_CONFIGS = {"engine-fp8": engine.Float8WeightAndActivationConfig,
                 "engine-int8": engine.Int8WeightAndActivationConfig}
DEFAULT_PROMPT = "a dog barking in the rain, distant thunder"
__all__ = ["BACKENDS", "PEERS", "TEACHER_CFG_SCALE", "TURBO_STEPS", "WorkloadUnavailable", "Workload", "Prepared",
           "prepare_dit", "prepare_pipeline", "compile_peer_", "dit_forward_workload", "loop_workload",
           "e2e_workload", "e2e_stage_workloads"]


class WorkloadUnavailable(RuntimeError):
    """A workload that cannot run here; the message is the reason shown in tables."""


@dataclass
class Workload:
    """A prepared callable and what the report needs to know about it.

    nfe: DiT forward calls per call of `fn` (teacher with CFG: N calls at batch 2B).
    audio_seconds: seconds of audio one batch element of `fn` represents (for RTF).
    """

    name: str
    group: str
    params: dict
    fn: Callable[[], object]
    device: torch.device
    nfe: int | None = None
    batch: int = 1
    audio_seconds: float | None = None
    setup_s: float | None = None
    metrics: dict = field(default_factory=dict)
    first_call_s: float | None = None  # measured by the builder when it had to call fn once


@dataclass
class Prepared:
    """A model or pipeline on its device, through one backend, ready to be called."""

    obj: object
    backend: str
    dtype: torch.dtype
    device: torch.device
    cfg: object
    preset: str
    setup_s: float
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------- backends and devices


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorkloadUnavailable("device cuda requested but torch.cuda.is_available() is False")
    return dev


def eager_dtype(device: torch.device) -> torch.dtype:
    """bf16 is the production dtype on GPU; on CPU fp32, since CPU bf16 is not a target."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def backend_dtype(backend: str, device: torch.device) -> torch.dtype:
    if backend == "eager" or backend in COMPILE_MODES:
        return eager_dtype(device)
    if backend in ("eager-fp32", "engine-fp32"):  # engine-fp32: the hoisted structure without the precision change
        return torch.float32
    if backend == "engine-bf16" or backend in QUANT_CONFIGS:  # quantized: bf16 activations and other layers
        return torch.bfloat16
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def _check_backend_possible(backend: str, device: torch.device) -> None:
    backend_dtype(backend, device)  # unknown backend: ValueError
    if backend == "eager-fp32" and device.type != "cuda":
        raise WorkloadUnavailable("on cpu the `eager` row already runs in fp32, the release's precision")
    if backend == "compile-max-autotune" and device.type != "cuda":
        raise WorkloadUnavailable("max-autotune tunes GPU kernels; on cpu torch.compile runs in its default mode only")
    if backend == "engine-fp8":
        if device.type != "cuda":
            raise WorkloadUnavailable("FP8 needs a CUDA GPU (sm_89 or newer)")
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise WorkloadUnavailable(f"FP8 needs sm_89 or newer; this GPU is sm_{major}{minor}")


@torch.no_grad()
def fill_zero_params_(module: torch.nn.Module, seed: int = 0) -> int:
    """Refill every all-zero floating parameter with random values; returns how many.

    Matrices get N(0, 1/fan_in) so activations stay O(1) over many steps; vectors
    (biases, gates) get N(0, 0.02). Non-zero parameters are left as they are. The values
    are drawn on the parameters' device.
    """
    gens: dict[torch.device, torch.Generator] = {}
    count = 0
    for p in module.parameters():
        if not p.is_floating_point() or p.numel() == 0 or bool(p.count_nonzero() != 0):
            continue
        gen = gens.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
        std = 1.0 / math.sqrt(max(1, p[0].numel())) if p.dim() >= 2 else 0.02
        p.copy_(torch.randn(p.shape, generator=gen, device=p.device) * std)
        count += 1
    return count


def _modules_of(obj) -> list[torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        return [obj]
    return [v for v in vars(obj).values() if isinstance(v, torch.nn.Module)] if hasattr(obj, "__dict__") else []


# ---------------------------------------------------------------- building and preparing


def build_dit(preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> MMDiffusionTransformer:
    """An MMDiffusionTransformer of `preset`, constructed on `device`, random weights."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        model = MMDiffusionTransformer(get_preset(preset).dit)
    fill_zero_params_(model, seed)
    return model.to(dtype).eval()


def build_pipeline(preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> AudioXPipeline:
    """AudioXPipeline.from_preset(preset), constructed on `device` (DiT and MAF in `dtype`)."""
    with device:
        pipe = AudioXPipeline.from_preset(preset, device=device, dtype=dtype, seed=seed)
    for m in _modules_of(pipe):
        fill_zero_params_(m, seed)
    return pipe


def prepare_dit(preset: str, device, backend: str = "eager", seed: int = 0, base: Prepared | None = None) -> Prepared:
    """The DiT of `preset` on `device` through `backend`.

    base: an eager Prepared to deep-copy instead of building anew (saves re-initialising
    2.2 B parameters per backend; the copy matters because the engine may swap modules).
    """
    return _prepare(build_dit, preset, device, backend, seed, base)


def prepare_pipeline(preset: str, device, backend: str = "eager", seed: int = 0,
                     base: Prepared | None = None) -> Prepared:
    """AudioXPipeline of `preset` on `device` through `backend`; `base` as in prepare_dit."""
    return _prepare(build_pipeline, preset, device, backend, seed, base)


def _prepare(build, preset: str, device, backend: str, seed: int, base: Prepared | None) -> Prepared:
    device = resolve_device(device)
    cfg = get_preset(preset)
    _check_backend_possible(backend, device)
    start_dtype = torch.float32 if backend == "eager-fp32" else eager_dtype(device)
    t0 = time.perf_counter()
    if base is not None and base.backend == "eager" and base.dtype == start_dtype:
        obj = copy.deepcopy(base.obj)
    else:
        obj = build(preset, device, start_dtype, seed)
    sync(device)
    setup_s = time.perf_counter() - t0
    notes = []
    if backend.startswith("engine-"):
        obj, accel_s = _accelerate(obj, backend, device)
        setup_s += accel_s
        notes.append(f"engine.accelerate took {accel_s:.2f} s")
    elif backend in COMPILE_MODES:
        compile_peer_(obj, COMPILE_MODES[backend])
    return Prepared(obj, backend, backend_dtype(backend, device), device, cfg, preset, setup_s, notes)


def compile_peer_(obj, mode: str = "default"):
    """`torch.compile` in place of what `engine.accelerate` changes in `obj` (a DiT or a
    pipeline): every MMDiffusionTransformer's forward, and the decode of every VAE
    pretransform with SnakeBeta activations (the Oobleck VAE, whose SnakeBetas the engine
    fuses; the tiny preset's DDSP codec has none and stays eager, as in the engine).
    The compilation itself happens on the first call. Returns `obj`."""
    found = 0
    for root in _modules_of(obj):
        for m in root.modules():
            if isinstance(m, MMDiffusionTransformer):
                m.compile(mode=mode)
                found += 1
            elif isinstance(m, AutoencoderPretransform) and any(isinstance(v, SnakeBeta) for v in m.modules()):
                m.decode = torch.compile(m.decode, mode=mode)
    if not found:
        raise WorkloadUnavailable(f"no MMDiffusionTransformer in {type(obj).__name__} to compile")
    return obj


def _accelerate(obj, backend: str, device: torch.device):
    """Runs engine.accelerate for `backend`; returns (accelerated object, seconds)."""
    dtype = backend_dtype(backend, device)
    t0 = time.perf_counter()
    try:
        out = engine.accelerate(obj, backend="auto", dtype=dtype, cuda_graphs=device.type == "cuda")
    except (NotImplementedError, ValueError, TypeError, RuntimeError) as exc:
        raise WorkloadUnavailable(f"engine.accelerate(dtype={dtype}) refused: {type(exc).__name__}: {exc}") from exc
    if backend in QUANT_CONFIGS:
        try:
            for module in _modules_of(out):
                engine.quantize_accelerated_(module, QUANT_CONFIGS[backend]())
        except (NotImplementedError, ValueError, TypeError, RuntimeError) as exc:
            raise WorkloadUnavailable(f"quantization to {backend} refused: {type(exc).__name__}: {exc}") from exc
    sync(device)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------- inputs


def dit_input_shapes(cfg) -> dict:
    """Latent channels and length, conditioning tokens and width of the preset's DiT."""
    d = cfg.dit
    return {"channels": d.io_channels, "length": d.latent_frames, "cond_tokens": d.num_cond_tokens,
            "cond_dim": d.cond_token_dim}


def _model_dtype(model, fallback: torch.dtype) -> torch.dtype:
    """The dtype activations should have: the first floating parameter's (engine may quantize)."""
    for p in getattr(model, "parameters", lambda: [])():
        if p.is_floating_point() and p.dtype.itemsize >= 2:
            return p.dtype
    return fallback


def make_dit_inputs(prep: Prepared, batch: int, seed: int = 0) -> dict:
    """Fresh random x (B, C, T), t (B,) in (0, 1), cross_attn_cond (B, N, D); never zeros."""
    shapes = dit_input_shapes(prep.cfg)
    dtype = _model_dtype(prep.obj, eager_dtype(prep.device))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, shapes["channels"], shapes["length"], generator=gen)
    t = torch.rand(batch, generator=gen).clamp_(0.05, 0.95)
    cond = torch.randn(batch, shapes["cond_tokens"], shapes["cond_dim"], generator=gen)
    to = dict(device=prep.device, dtype=dtype)
    return {"x": x.to(**to), "t": t.to(**to), "cross_attn_cond": cond.to(**to), "shapes": shapes}


def _common_params(prep: Prepared, batch: int) -> dict:
    params = {"preset": prep.preset, "backend": prep.backend, "dtype": str(prep.dtype).replace("torch.", ""),
              "batch": batch, "device": prep.device.type}
    if prep.backend in COMPILE_MODES:
        params["compile_mode"] = COMPILE_MODES[prep.backend]
    return params


class _CountingModelFn:
    """Wraps a model so the benchmark can check the NFE and batch a sampler really used.

    The forward batch is 2x the input batch when the sampler hands `cfg_scale != 1` to
    the model, which then runs conditional and null branches side by side (as
    MMDiffusionTransformer does); otherwise it is the input batch.
    """

    def __init__(self, model):
        self.model = model
        self.calls = 0
        self.batches: set[int] = set()

    def __call__(self, x, t, **kwargs):
        self.calls += 1
        cfg = kwargs.get("cfg_scale")
        self.batches.add(int(x.shape[0]) * (2 if cfg is not None and cfg != 1 else 1))
        return self.model(x, t, **kwargs)


# ---------------------------------------------------------------- workloads


@torch.no_grad()
def dit_forward_workload(prep: Prepared, batch: int = 1, count_flops: bool = True) -> Workload:
    """One DiT forward (B, 64, T) -> (B, 64, T) velocity."""
    inp = make_dit_inputs(prep, batch)
    model, x, t, cond = prep.obj, inp["x"], inp["t"], inp["cross_attn_cond"]

    def fn():
        with torch.no_grad():
            return model(x, t, cross_attn_cond=cond)

    _, first_call_s = timed_first_call(fn, prep.device)
    metrics = {}
    if count_flops and prep.backend == "eager":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fn()
        metrics["flops_per_call"] = int(counter.get_total_flops())
    params = _common_params(prep, batch) | {"latent": [batch, inp["shapes"]["channels"], inp["shapes"]["length"]]}
    return Workload(
        name=f"dit_forward/{prep.backend}", group="dit", params=params, fn=fn, device=prep.device,
        nfe=1, batch=batch, audio_seconds=None, setup_s=prep.setup_s, metrics=metrics, first_call_s=first_call_s,
    )


def _check_mode(mode: str, steps: int) -> None:
    if mode not in ("turbo", "teacher"):
        raise ValueError(f"mode must be 'turbo' or 'teacher', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def loop_workload(prep: Prepared, mode: str, steps: int, batch: int = 1, cfg_scale: float = TEACHER_CFG_SCALE,
                  group: str = "loops") -> Workload:
    """A whole sampling loop over the DiT: Turbo (`steps` forwards at B) or teacher with
    CFG (`steps` forwards at 2B).

    Engine rows use the engine's own samplers (conditioning prepared once, CUDA graphs);
    the others audiox.sampling with a call counter around the model, so the NFE and
    forward batch in the result are what the sampler really did.
    """
    _check_mode(mode, steps)
    inp = make_dit_inputs(prep, batch)
    noise = torch.randn(inp["x"].shape, generator=torch.Generator(device="cpu").manual_seed(1))
    noise = noise.to(device=inp["x"].device, dtype=inp["x"].dtype)
    gen = torch.Generator(device=prep.device).manual_seed(2)
    cond = inp["cross_attn_cond"]
    counter = None
    if prep.backend.startswith("engine-"):
        sampler = f"engine.sample_{mode}"
        if mode == "turbo":
            def fn():
                return engine.sample_turbo(prep.obj, noise, cond, steps=steps, generator=gen)
        else:
            def fn():
                return engine.sample_teacher(prep.obj, noise, cond, steps=steps, cfg_scale=cfg_scale)
    else:
        counter = _CountingModelFn(prep.obj)
        sampler = f"audiox.sampling.sample_{mode}"
        if mode == "turbo":
            def fn():
                with torch.no_grad():
                    return sample_turbo(counter, noise, steps=steps, generator=gen, cross_attn_cond=cond)
        else:
            def fn():
                with torch.no_grad():
                    return sample_teacher(counter, noise, steps=steps, cfg_scale=cfg_scale, cross_attn_cond=cond)

    _, first_call_s = timed_first_call(fn, prep.device)
    expected_batch = 2 * batch if mode == "teacher" else batch
    notes = list(prep.notes)
    metrics = {}
    if counter is not None:
        metrics = {"forward_calls_observed": counter.calls, "forward_batches_observed": sorted(counter.batches)}
        if counter.calls != steps or counter.batches != {expected_batch}:
            notes.append(f"expected {steps} forwards at batch {expected_batch}, saw {counter.calls} at "
                         f"{sorted(counter.batches)}")
    params = _common_params(prep, batch) | {"mode": mode, "steps": steps, "forward_batch": expected_batch,
                                            "sampler": sampler}
    if mode == "teacher":
        params["cfg_scale"] = cfg_scale
    metrics["notes"] = notes
    return Workload(
        name=f"{mode}-{steps}/{prep.backend}", group=group, params=params, fn=fn, device=prep.device,
        nfe=steps, batch=batch, audio_seconds=float(prep.cfg.seconds), setup_s=prep.setup_s, metrics=metrics,
        first_call_s=first_call_s,
    )


def e2e_workload(prep: Prepared, mode: str, steps: int, batch: int = 1, cfg_scale: float | None = None,
                 prompt: str = DEFAULT_PROMPT, group: str = "e2e") -> Workload:
    """Text -> waveform through AudioXPipeline: conditioning, sampling, VAE decode."""
    _check_mode(mode, steps)
    if cfg_scale is None:
        cfg_scale = TEACHER_CFG_SCALE if mode == "teacher" else 1.0
    pipe = prep.obj
    seconds = float(prep.cfg.seconds)
    gen = torch.Generator(device=prep.device).manual_seed(3)
    texts = [prompt] * batch

    def fn():
        with torch.no_grad():
            return pipe(text=texts, seconds=seconds, steps=steps, cfg_scale=cfg_scale, mode=mode, generator=gen)

    (wave, sr), first_call_s = timed_first_call(fn, prep.device)
    if not (isinstance(wave, torch.Tensor) and wave.dim() == 3 and wave.shape[0] == batch):
        raise WorkloadUnavailable(f"pipeline returned {type(wave).__name__} "
                                  f"{tuple(getattr(wave, 'shape', ()))}, expected (B={batch}, 2, S)")
    params = _common_params(prep, batch) | {"mode": mode, "steps": steps, "cfg_scale": cfg_scale,
                                            "forward_batch": 2 * batch if mode == "teacher" else batch}
    return Workload(
        name=f"{mode}-{steps}/{prep.backend}", group=group, params=params, fn=fn, device=prep.device,
        nfe=steps, batch=batch, audio_seconds=wave.shape[-1] / float(sr), setup_s=prep.setup_s,
        metrics={"sample_rate": int(sr), "notes": list(prep.notes)}, first_call_s=first_call_s,
    )


def e2e_stage_workloads(prep: Prepared, batch: int = 1, prompt: str = DEFAULT_PROMPT, group: str = "e2e",
                        stages: tuple[str, ...] = ("conditioning", "vae_decode")) -> list[Workload]:
    """The stages around sampling, timed alone through the pipeline's public methods:
    `encode_conditioning(text)` (conditioners + MAF) and `decode(latents)` (VAE, crop,
    normalise). Sampling alone is the loops suite."""
    pipe = prep.obj
    texts = [prompt] * batch
    shapes = dit_input_shapes(prep.cfg)
    gen = torch.Generator(device="cpu").manual_seed(4)
    latents = torch.randn(batch, shapes["channels"], shapes["length"], generator=gen).to(prep.device)
    seconds = float(prep.cfg.seconds)

    def conditioning():
        with torch.no_grad():
            return pipe.encode_conditioning(texts)

    def vae_decode():
        with torch.no_grad():
            return pipe.decode(latents, seconds)

    out = []
    for stage, fn in (("conditioning", conditioning), ("vae_decode", vae_decode)):
        if stage not in stages:
            continue
        _, first_call_s = timed_first_call(fn, prep.device)
        out.append(Workload(
            name=f"{stage}/{prep.backend}", group=group, params=_common_params(prep, batch) | {"stage": stage},
            fn=fn, device=prep.device, nfe=None, batch=batch, audio_seconds=None, setup_s=prep.setup_s,
            metrics={"notes": list(prep.notes)}, first_call_s=first_call_s,  # no RTF: a stage makes no audio alone
        ))
    return out
