"""The checks of a generation's arguments, made before any work and without a model.

:meth:`AudioXPipeline.__call__ <audiox.pipeline.AudioXPipeline.__call__>` runs
:func:`check_generation_args` first; the ``audiox`` command runs it against the model's
config before building the model. Every refusal is an :class:`~audiox.errors.ArgumentError`
(a missing file a :class:`~audiox.errors.MediaError`) naming the argument and the values it
takes; no value is silently truncated (``steps=2.7`` and ``generator=1.5`` are refused).
``generator`` is a generator or seed for the batch, or a list of them, one per item.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .config import AudioXConfig
from .errors import ArgumentError, MediaError, as_int, as_real
from .model import conditioner_config_for
from .sampling import TEACHER_CFG_SCALE, TEACHER_STEPS, make_generator

__all__ = ["GenerationArgs", "check_generation_args", "check_device", "MODES", "SEED_RANGE"]

def check_device(device, *, build_only: bool = False) -> torch.device:
    """``device`` as a torch.device this machine has; :class:`ArgumentError` naming what it has otherwise.

    ``build_only``: the device only holds a model being built, so ``meta`` (shapes without
    memory, for inspecting a model or checking it fits) is accepted too.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError(f"device {device!r} is not a device name; use cpu or cuda (cuda:N)") from None
    if dev.type == "cpu" or (build_only and dev.type == "meta"):
        return dev
    backend = getattr(torch, dev.type, None) if dev.type in ("cuda", "mps", "xpu") else None
    if backend is None:
        raise ArgumentError(f"device {device!r}: cannot generate on {dev.type}; use cpu or cuda (cuda:N)")
    available = backend.is_available() if dev.type != "mps" else torch.backends.mps.is_available()
    if not available:
        raise ArgumentError(f"device {device!r}: no {dev.type} device is available here; use cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise ArgumentError(f"device {device!r}: this machine has {count} {dev.type} device(s), "
                            f"{dev.type}:0 to {dev.type}:{count - 1}")
    return dev


MODES = ("turbo", "teacher")
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed takes


@dataclass
class GenerationArgs:
    """One call's arguments, checked: ``text`` a list, ``video_sync`` (B, L, D) or ``"zeros"``,
    the rest resolved."""

    text: list[str] | None
    video_sync: torch.Tensor | str | None
    seconds: float
    steps: int
    cfg_scale: float
    mode: str
    generator: torch.Generator | list[torch.Generator] | None  # a list: one per item
    batch_size: int


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def _batch_of(name: str, value, dims: int, shape: str) -> int | None:
    """How many items a video / audio argument holds (None: a file, one item); checks its type."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            what = "path is not a file" if os.path.exists(path) else "file not found"
            raise MediaError(f"{name} {what}: {path}")
        return None
    if isinstance(value, torch.Tensor) and value.dim() == dims:
        return value.shape[0]
    if name == "audio" and isinstance(value, (list, tuple)) and value and all(
            isinstance(a, torch.Tensor) and a.dim() in (2, 3) for a in value):
        return len(value)
    raise ArgumentError(f"{name} must be a file path or a tensor {shape}, got {_describe(value)}")


def check_generation_args(cfg: AudioXConfig, *, text=None, video=None, video_sync=None, audio=None, seconds=None,
                          steps=None, cfg_scale=None, mode="turbo", generator=None, batch_size=None,
                          device="cpu") -> GenerationArgs:
    """Check a generation's arguments against the model config ``cfg`` (no model needed), as
    :meth:`AudioXPipeline.__call__` does first. Raises :class:`ArgumentError` (or
    :class:`MediaError` for a missing file) naming the argument; never truncates a value."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ArgumentError(f"mode must be 'turbo' or 'teacher', got {_describe(mode)}")
    sizes = {}
    if text is not None:
        text = [text] if isinstance(text, str) else text
        if not isinstance(text, (list, tuple)) or not text or not all(isinstance(t, str) for t in text):
            raise ArgumentError(f"text must be a str or a non-empty list of str, got {_describe(text)}")
        text = list(text)
        for t in text:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise ArgumentError(f"text {t[:20]!r} holds characters that are not valid Unicode") from None
        sizes["text"] = len(text)
    cc = conditioner_config_for(cfg)
    for name, value, dims, shape in (
            ("video", video, 5, f"(B, {cc.video_frames}, 3, {cc.clip_image_size}, {cc.clip_image_size})"),
            ("audio", audio, 3, "(B, C, L)")):
        n = None if value is None else _batch_of(name, value, dims, shape)
        if n is not None:
            sizes[name] = n
    if isinstance(video_sync, str) and video_sync != "zeros":
        raise ArgumentError(f"video_sync must be Synchformer features, 'zeros' or None, got {video_sync!r}")
    if video_sync is not None and not isinstance(video_sync, str):
        want = (cc.sync_len, cc.cond_dim)
        if (not isinstance(video_sync, torch.Tensor) or video_sync.dim() not in (2, 3)
                or tuple(video_sync.shape[-2:]) != want or not video_sync.is_floating_point()):
            raise ArgumentError(f"video_sync must be float Synchformer features of shape (B, {want[0]}, {want[1]}) or "
                                f"({want[0]}, {want[1]}) for this model, got {_describe(video_sync)}")
        video_sync = video_sync[None] if video_sync.dim() == 2 else video_sync
        sizes["video_sync"] = video_sync.shape[0]
    if batch_size is not None:
        batch_size = as_int("batch_size", batch_size, minimum=1)
    per_item = isinstance(generator, (list, tuple))
    if per_item and not generator:
        raise ArgumentError("generator: an empty list; give one torch.Generator (or seed) per item")
    if per_item:
        sizes["generator"] = len(generator)
    b = batch_size or max(sizes.values(), default=1)
    if any(n not in (1, b) for n in sizes.values()):
        given = ", ".join(f"{k} {n}" for k, n in sizes.items()) + (f", batch_size {batch_size}" if batch_size else "")
        raise ArgumentError(f"batch sizes differ ({given}): give each input 1 item or {b}")
    if per_item and len(generator) != b:
        raise ArgumentError(f"generator: a list holds one generator (or seed) per item; got {len(generator)} "
                            f"for a batch of {b}")

    sr = cfg.sample_rate
    seconds = cfg.seconds if seconds is None else as_real("seconds", seconds)
    if not 0 < seconds <= cfg.seconds or round(seconds * sr) < 1:
        raise ArgumentError(f"seconds must be in (0, {cfg.seconds:g}] and hold a sample (>= 1/{sr}), got {seconds:g}")
    default_steps = cfg.student_steps if mode == "turbo" else TEACHER_STEPS
    steps = default_steps if steps is None else as_int("steps", steps, minimum=1)
    if mode == "turbo":
        if cfg_scale is not None and as_real("cfg_scale", cfg_scale) != 1.0:
            raise ArgumentError("the Turbo student runs without CFG: leave cfg_scale unset (or 1) in turbo mode")
        cfg_scale = 1.0
    else:
        cfg_scale = TEACHER_CFG_SCALE if cfg_scale is None else as_real("cfg_scale", cfg_scale)
    if per_item:
        generators = [_generator(g, device) for g in generator]
        if None in generators or len({id(g) for g in generators}) != len(generators):
            raise ArgumentError("generator: each item of the list needs its own torch.Generator or seed (no None, "
                                "no generator given twice)")
    else:
        generators = _generator(generator, device)
    return GenerationArgs(text, video_sync, seconds, steps, cfg_scale, mode, generators, b)


def _generator(generator, device) -> torch.Generator | None:
    device = torch.device(device)
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        if generator.device.type != device.type:
            raise ArgumentError(f"generator is on {generator.device.type}, the pipeline on {device.type}: "
                                f"make it with torch.Generator(device={device.type!r})")
        return generator
    if isinstance(generator, bool) or not hasattr(generator, "__index__"):
        raise ArgumentError(f"generator must be a torch.Generator or an integer seed, got {_describe(generator)}")
    seed = as_int("seed", generator, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
    return make_generator(seed, device)
