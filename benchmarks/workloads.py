"""What is timed: one DiT forward, the sampling loops, and end-to-end generation.

Every workload is built from the public APIs of `audiox` and `engine` only, imported
lazily so that `benchmarks` imports on a machine where the model code is absent or
half-written; a missing piece raises `WorkloadUnavailable` with the reason, and the
suite records the row as skipped instead of failing.

A backend is "eager" (plain PyTorch: bf16 on CUDA, fp32 on CPU) or
"engine-fp32" / "engine-bf16" / "engine-fp8" / "engine-int8" (through `engine.accelerate`).

Weights: parameters that are all zeros after construction (zero-initialised gates and
projections are common in DiTs) are refilled with random values, because zeros can run
measurably faster than real data and would flatter every number.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch

BACKENDS = ("eager", "engine-fp32", "engine-bf16", "engine-fp8", "engine-int8")
# Quantized rows: engine.accelerate (bf16), then the block weights through engine.quantize.
QUANT_CONFIGS = {"engine-fp8": "Float8WeightAndActivationConfig", "engine-int8": "Int8WeightAndActivationConfig"}
TEACHER_CFG_SCALE = 6.0  # release default for the teacher (SPEC: N = 250, cfg 6)
TURBO_STEPS = 4
DEFAULT_PROMPT = "a dog barking in the rain, distant thunder"


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


# ---------------------------------------------------------------- lazy public APIs


def load_model_api() -> SimpleNamespace:
    """The `audiox` names the benchmarks use; WorkloadUnavailable if any is missing."""
    api = {}
    wanted = {
        "get_preset": "audiox_engine.audiox.config",
        "MMDiffusionTransformer": "audiox_engine.audiox.dit",
        "sample_turbo": "audiox_engine.audiox.sampling",
        "sample_teacher": "audiox_engine.audiox.sampling",
    }
    for name, module in wanted.items():
        api[name] = _import_attr(module, name)
    return SimpleNamespace(**api)


def load_pipeline_class():
    return _import_attr("audiox_engine.audiox.pipeline", "AudioXPipeline")


def load_engine():
    """The `engine` module with its `accelerate` entry point."""
    return SimpleNamespace(accelerate=_import_attr("engine", "accelerate"))


def _import_attr(module: str, name: str):
    import importlib

    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or a half-written module failing at import
        raise WorkloadUnavailable(f"cannot import {module} ({type(exc).__name__}: {exc})") from exc
    try:
        return getattr(mod, name)
    except AttributeError:
        raise WorkloadUnavailable(f"{module} has no {name} yet") from None


# ---------------------------------------------------------------- helpers


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
    if backend == "eager":
        return eager_dtype(device)
    if backend == "engine-fp32":  # the engine's hoisted structure without the precision change (CPU rows)
        return torch.float32
    if backend == "engine-bf16":
        return torch.bfloat16
    if backend in QUANT_CONFIGS:  # bf16 activations and high-precision layers, quantized block weights
        return torch.bfloat16
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def _check_backend_possible(backend: str, device: torch.device) -> None:
    if backend == "engine-fp8":
        if device.type != "cuda":
            raise WorkloadUnavailable("FP8 needs a CUDA GPU (sm_89 or newer)")
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise WorkloadUnavailable(f"FP8 needs sm_89 or newer; this GPU is sm_{major}{minor}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_first_call(fn, device: torch.device):
    """(result, seconds) of the first call, which holds any compile/autotune/capture."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


@torch.no_grad()
def fill_zero_params_(module: torch.nn.Module, seed: int = 0) -> int:
    """Refill every all-zero floating parameter with random values; returns how many.

    Matrices get N(0, 1/fan_in) so activations stay O(1) over many steps; vectors
    (biases, gates) get N(0, 0.02). Non-zero parameters are left as they are.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    count = 0
    for p in module.parameters():
        if not p.is_floating_point() or p.numel() == 0 or bool(p.count_nonzero() != 0):
            continue
        std = 1.0 / math.sqrt(max(1, p[0].numel())) if p.dim() >= 2 else 0.02
        p.copy_((torch.randn(p.shape, generator=gen) * std).to(p.dtype))
        count += 1
    return count


def _modules_of(obj) -> list[torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        return [obj]
    return [v for v in vars(obj).values() if isinstance(v, torch.nn.Module)] if hasattr(obj, "__dict__") else []


def _accelerate(obj, backend: str, device: torch.device):
    """Runs engine.accelerate for `backend`; returns (accelerated object, seconds)."""
    _check_backend_possible(backend, device)
    eng = load_engine()
    dtype = backend_dtype(backend, device)
    t0 = time.perf_counter()
    try:
        out = eng.accelerate(obj, backend="auto", dtype=dtype, cuda_graphs=device.type == "cuda")
    except (NotImplementedError, ValueError, TypeError, RuntimeError) as exc:
        raise WorkloadUnavailable(f"engine.accelerate(dtype={dtype}) refused: {type(exc).__name__}: {exc}") from exc
    out = obj if out is None else out
    if backend in QUANT_CONFIGS:
        config = _import_attr("audiox_engine.engine.quantize", QUANT_CONFIGS[backend])()
        quantize = _import_attr("audiox_engine.engine.quant_fused_block", "quantize_accelerated_")
        try:
            for module in _modules_of(out):
                quantize(module, config)
        except (NotImplementedError, ValueError, TypeError, RuntimeError) as exc:
            raise WorkloadUnavailable(f"quantization to {backend} refused: {type(exc).__name__}: {exc}") from exc
    _sync(device)
    return out, time.perf_counter() - t0


def _cfg_attr(objs, names, default=None):
    for obj in objs:
        for n in names:
            v = getattr(obj, n, None)
            if v is not None:
                return v
    return default


def dit_input_shapes(cfg, model) -> dict:
    """Latent channels, latent length, conditioning tokens and width for the DiT.

    Read from the config where it names them, else from the model's own layers (the
    official names `preprocess_conv`, `transformer.proj_mm_seq_len`, `transformer.proj_mm_tokens`).
    """
    dit = getattr(cfg, "dit", cfg)
    channels = _cfg_attr([dit], ("io_channels", "latent_channels", "in_channels"))
    if channels is None:
        conv = getattr(model, "preprocess_conv", None)
        channels = getattr(conv, "in_channels", 64)
    length = _cfg_attr([cfg, dit], ("latent_length",))
    if length is None:
        raise WorkloadUnavailable("config has no latent_length")
    n_tokens = _cfg_attr([dit], ("num_cond_tokens", "cond_seq_len", "mm_seq_len"))
    if n_tokens is None:
        seq = getattr(getattr(model, "transformer", None), "proj_mm_seq_len", None)
        n_tokens = getattr(seq, "in_features", 3 * 128)
    width = _cfg_attr([dit], ("cond_token_dim", "cond_dim", "mm_dim"))
    if width is None:
        proj = getattr(getattr(model, "transformer", None), "proj_mm_tokens", None)
        width = getattr(proj, "in_features", None)
    if width is None:
        raise WorkloadUnavailable("cannot tell the conditioning token width from config or model")
    return {"channels": int(channels), "length": int(length), "cond_tokens": int(n_tokens), "cond_dim": int(width)}


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


# ---------------------------------------------------------------- preparation


def prepare_dit(preset: str, device, backend: str = "eager", seed: int = 0, base: Prepared | None = None) -> Prepared:
    """An MMDiffusionTransformer of `preset` with random weights on `device`.

    base: an eager Prepared to copy the weights from (saves re-initialising 2.2 B
    parameters per backend; the copy matters because the engine may swap modules).
    """
    api = load_model_api()
    device = resolve_device(device)
    cfg = api.get_preset(preset)
    _check_backend_possible(backend, device)
    t0 = time.perf_counter()
    if base is not None:
        model = copy.deepcopy(base.obj)
    else:
        torch.manual_seed(seed)
        with device:  # initialise on the device: a 2.2 B-parameter init on the CPU takes minutes
            model = api.MMDiffusionTransformer(cfg.dit)
        fill_zero_params_(model, seed)
        model = model.to(device=device, dtype=eager_dtype(device)).eval()
    return _finish_prepare(model, backend, device, cfg, preset, t0)


def prepare_pipeline(preset: str, device, backend: str = "eager", seed: int = 0, base: Prepared | None = None) -> Prepared:
    """AudioXPipeline.from_preset(preset) on `device`, through `backend`.

    base: an eager Prepared pipeline to deep-copy instead of building a new one.
    """
    cls = load_pipeline_class()
    api = load_model_api()
    device = resolve_device(device)
    cfg = api.get_preset(preset)
    _check_backend_possible(backend, device)
    t0 = time.perf_counter()
    if base is not None:
        pipe = copy.deepcopy(base.obj)
    else:
        pipe = _build_pipeline(cls, preset, device, seed)
    return _finish_prepare(pipe, backend, device, cfg, preset, t0)


def _finish_prepare(obj, backend: str, device: torch.device, cfg, preset: str, t0: float) -> Prepared:
    """Time the build started at ``t0``, then accelerate ``obj`` for a non-eager ``backend``."""
    _sync(device)
    setup_s = time.perf_counter() - t0
    notes = []
    if backend != "eager":
        obj, accel_s = _accelerate(obj, backend, device)
        setup_s += accel_s
        notes.append(f"engine.accelerate took {accel_s:.2f} s")
    return Prepared(obj, backend, backend_dtype(backend, device), device, cfg, preset, setup_s, notes)


def _build_pipeline(cls, preset: str, device: torch.device, seed: int):
    try:
        pipe = cls.from_preset(preset, device=device, dtype=eager_dtype(device))
    except TypeError:  # a from_preset without device/dtype: move it afterwards
        pipe = cls.from_preset(preset)
        if hasattr(pipe, "to"):
            moved = pipe.to(device)
            pipe = pipe if moved is None else moved
    for m in _modules_of(pipe):
        fill_zero_params_(m, seed)
    return pipe


def _model_dtype(model, fallback: torch.dtype) -> torch.dtype:
    """The dtype activations should have: the first floating parameter's (engine may quantize)."""
    for p in getattr(model, "parameters", lambda: [])():
        if p.is_floating_point() and p.dtype.itemsize >= 2:
            return p.dtype
    return fallback


def make_dit_inputs(prep: Prepared, batch: int, seed: int = 0) -> dict:
    """Fresh random x (B, C, T), t (B,) in (0, 1), cross_attn_cond (B, N, D); never zeros."""
    shapes = dit_input_shapes(prep.cfg, prep.obj)
    dtype = _model_dtype(prep.obj, eager_dtype(prep.device))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, shapes["channels"], shapes["length"], generator=gen)
    t = torch.rand(batch, generator=gen).clamp_(0.05, 0.95)
    cond = torch.randn(batch, shapes["cond_tokens"], shapes["cond_dim"], generator=gen)
    to = dict(device=prep.device, dtype=dtype)
    return {"x": x.to(**to), "t": t.to(**to), "cross_attn_cond": cond.to(**to), "shapes": shapes}


def _audio_seconds(cfg) -> float | None:
    s = getattr(cfg, "seconds", None)
    return float(s) if s is not None else None


def _common_params(prep: Prepared, batch: int) -> dict:
    return {"preset": prep.preset, "backend": prep.backend, "dtype": str(prep.dtype).replace("torch.", ""),
            "batch": batch, "device": prep.device.type}


# ---------------------------------------------------------------- workloads


@torch.no_grad()
def dit_forward_workload(prep: Prepared, batch: int = 1, count_flops: bool = True) -> Workload:
    """One DiT forward (B, 64, T) -> (B, 64, T) velocity."""
    inp = make_dit_inputs(prep, batch)
    model, x, t, cond = prep.obj, inp["x"], inp["t"], inp["cross_attn_cond"]

    def fn():
        with torch.no_grad():
            return model(x, t, cross_attn_cond=cond)

    _, first_call_s = _timed_first_call(fn, prep.device)
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


def _engine_samplers():
    """engine.sample_turbo / sample_teacher (prepare once, CUDA graphs), or None if absent."""
    try:
        return _import_attr("engine", "sample_turbo"), _import_attr("engine", "sample_teacher")
    except WorkloadUnavailable:
        return None


def loop_workload(prep: Prepared, mode: str, steps: int, batch: int = 1, cfg_scale: float = TEACHER_CFG_SCALE,
                  group: str = "loops") -> Workload:
    """A whole sampling loop over the DiT: Turbo (`steps` forwards at B) or teacher with
    CFG (`steps` forwards at 2B).

    Eager rows use audiox.sampling with a call counter around the model, so the NFE and
    forward batch in the result are what the sampler really did. Engine rows use the
    engine's own samplers (conditioning prepared once, CUDA graphs) when it has them.
    """
    if mode not in ("turbo", "teacher"):
        raise ValueError(f"mode must be 'turbo' or 'teacher', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    api = load_model_api()
    inp = make_dit_inputs(prep, batch)
    noise = torch.randn(inp["x"].shape, generator=torch.Generator(device="cpu").manual_seed(1))
    noise = noise.to(device=inp["x"].device, dtype=inp["x"].dtype)
    gen = torch.Generator(device=prep.device).manual_seed(2)
    cond = inp["cross_attn_cond"]
    engine_samplers = _engine_samplers() if prep.backend != "eager" else None
    counter = None

    if engine_samplers is not None:
        eng_turbo, eng_teacher = engine_samplers
        sampler = f"engine.sample_{mode}"
        if mode == "turbo":
            def fn():
                return eng_turbo(prep.obj, noise, cond, steps=steps, generator=gen)
        else:
            def fn():
                return eng_teacher(prep.obj, noise, cond, steps=steps, cfg_scale=cfg_scale)
    else:
        counter = _CountingModelFn(prep.obj)
        sampler = f"audiox.sampling.sample_{mode}"
        if mode == "turbo":
            def fn():
                with torch.no_grad():
                    return api.sample_turbo(counter, noise, steps=steps, generator=gen, cross_attn_cond=cond)
        else:
            def fn():
                with torch.no_grad():
                    return api.sample_teacher(counter, noise, steps=steps, cfg_scale=cfg_scale,
                                              cross_attn_cond=cond, generator=gen)

    _, first_call_s = _timed_first_call(fn, prep.device)
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
        nfe=steps, batch=batch, audio_seconds=_audio_seconds(prep.cfg), setup_s=prep.setup_s, metrics=metrics,
        first_call_s=first_call_s,
    )


def e2e_workload(prep: Prepared, mode: str, steps: int, batch: int = 1, cfg_scale: float | None = None,
                 prompt: str = DEFAULT_PROMPT, group: str = "e2e") -> Workload:
    """Text -> waveform through AudioXPipeline: conditioning, sampling, VAE decode."""
    if mode not in ("turbo", "teacher"):
        raise ValueError(f"mode must be 'turbo' or 'teacher', got {mode!r}")
    if cfg_scale is None:
        cfg_scale = TEACHER_CFG_SCALE if mode == "teacher" else 1.0
    pipe = prep.obj
    seconds = _audio_seconds(prep.cfg)
    if seconds is None:
        raise WorkloadUnavailable("preset config has no `seconds`")
    gen = torch.Generator(device=prep.device).manual_seed(3)
    texts = [prompt] * batch

    def fn():
        with torch.no_grad():
            return pipe(text=texts, seconds=seconds, steps=steps, cfg_scale=cfg_scale, mode=mode, generator=gen)

    (wave, sr), first_call_s = _timed_first_call(fn, prep.device)
    if not (isinstance(wave, torch.Tensor) and wave.dim() == 3 and wave.shape[0] == batch):
        raise WorkloadUnavailable(f"pipeline returned {type(wave).__name__} "
                                  f"{tuple(getattr(wave, 'shape', ()))}, expected (B={batch}, 2, S)")
    produced_s = wave.shape[-1] / float(sr)
    params = _common_params(prep, batch) | {"mode": mode, "steps": steps, "cfg_scale": cfg_scale,
                                            "forward_batch": 2 * batch if mode == "teacher" else batch}
    return Workload(
        name=f"{mode}-{steps}/{prep.backend}", group=group, params=params, fn=fn, device=prep.device,
        nfe=steps, batch=batch, audio_seconds=produced_s, setup_s=prep.setup_s,
        metrics={"sample_rate": int(sr), "notes": list(prep.notes)}, first_call_s=first_call_s,
    )


def e2e_stage_workloads(prep: Prepared, batch: int = 1, prompt: str = DEFAULT_PROMPT,
                        group: str = "e2e") -> list[Workload]:
    """The two stages around sampling, timed alone through the pipeline's public methods:
    `encode_conditioning(text)` (conditioners + MAF) and `decode(latents)` (VAE, crop,
    normalise). Sampling alone is the loops suite. Missing methods raise WorkloadUnavailable.
    """
    pipe = prep.obj
    encode, decode = getattr(pipe, "encode_conditioning", None), getattr(pipe, "decode", None)
    if not callable(encode) or not callable(decode):
        raise WorkloadUnavailable("pipeline has no encode_conditioning/decode methods to time stages with")
    texts = [prompt] * batch
    shapes = dit_input_shapes(prep.cfg, getattr(pipe, "model", pipe))
    gen = torch.Generator(device="cpu").manual_seed(4)
    latents = torch.randn(batch, shapes["channels"], shapes["length"], generator=gen).to(prep.device)
    seconds = _audio_seconds(prep.cfg)

    def conditioning():
        with torch.no_grad():
            return encode(texts)

    def vae_decode():
        with torch.no_grad():
            return decode(latents, seconds)

    out = []
    for stage, fn in (("conditioning", conditioning), ("vae_decode", vae_decode)):
        _, first_call_s = _timed_first_call(fn, prep.device)
        out.append(Workload(
            name=f"{stage}/{prep.backend}", group=group, params=_common_params(prep, batch) | {"stage": stage},
            fn=fn, device=prep.device, nfe=None, batch=batch, audio_seconds=None, setup_s=prep.setup_s,
            metrics={"notes": list(prep.notes)}, first_call_s=first_call_s,  # no RTF: a stage makes no audio alone
        ))
    return out
