"""Model configuration: dataclasses, named presets, and the official model-config JSON.

The official release describes a model with one nested JSON file
(``configs/audiox_turbo_infer_4step.json``). :func:`parse_model_config` reads that
format; :func:`get_preset` returns the named presets:

- ``audiox-turbo``: the full-size release architecture (2.2 B-parameter DiT).
- ``tiny``: the same architecture shrunk to a few MB, for tests and CPU demos.

A note on ``num_heads``: the official config says ``num_heads: 24`` but the code passes
``embed_dim // num_heads`` (= 64) as the head count, so the real attention is 64 heads
of dim 24. :class:`DiTConfig` keeps the config's meaning in ``num_heads`` and exposes
what the code computes as :attr:`DiTConfig.attn_heads` and :attr:`DiTConfig.head_dim`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "check_known_fields",
    "DictConfigMixin",
    "DiTConfig",
    "MAFConfig",
    "AudioXConfig",
    "ConfigError",
    "PRESETS",
    "get_preset",
    "parse_model_config",
    "load_model_config",
]


from .errors import ConfigError

# Integer fields that may be 0 (every other integer field must be >= 1).
_MAY_BE_ZERO = {"global_cond_dim"}
_JSON_TYPES = {"bool": bool, "str": str, "dict": dict}


def _check_values(obj) -> None:
    """The type and range of every field of a config dataclass (a JSON file can put anything anywhere)."""
    where = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.type == "int":
            low = 0 if f.name in _MAY_BE_ZERO else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{where}.{f.name} must be an integer >= {low}, got {value!r}")
        elif f.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{where}.{f.name} must be a positive number, got {value!r}")
        elif f.type in _JSON_TYPES and not isinstance(value, _JSON_TYPES[f.type]):
            raise ConfigError(f"{where}.{f.name} must be a {f.type}, got {value!r}")


def check_known_fields(cls, d: dict, error=ConfigError) -> None:
    """Refuse keys of ``d`` that are not fields of the dataclass ``cls``, naming them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise error(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")


class DictConfigMixin:
    """``from_dict`` / ``to_dict`` for a flat dataclass config stored as JSON: ``from_dict``
    refuses unknown keys (a ``ValueError`` naming them) before construction, so a typo in a
    config file is not silently dropped; ``to_dict`` writes top-level tuples as lists, the
    form they have after a JSON round trip, so a saved config compares equal to a fresh one."""

    @classmethod
    def from_dict(cls, d: dict):
        check_known_fields(cls, d, ValueError)
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class DiTConfig:
    """The MMDiT (``MMDiffusionTransformer``) hyper-parameters, official names."""

    io_channels: int = 64
    embed_dim: int = 1536
    depth: int = 24
    num_heads: int = 24  # official meaning: embed_dim // num_heads is the *head count*
    cond_token_dim: int = 768
    global_cond_dim: int = 768
    project_cond_tokens: bool = False
    mlp_ratio: float = 4.0
    kernel_size: int = 3
    latent_seq_len: int = 237  # latent frames + 1 prepended time token
    num_cond_tokens: int = 384  # 3 modalities x 128 tokens after MAF

    @property
    def attn_heads(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attn_heads

    @property
    def latent_frames(self) -> int:
        return self.latent_seq_len - 1

    @property
    def ffn_hidden(self) -> int:
        # The release's ConvMLP: 2/3 of dim * mlp_ratio, rounded up to a multiple of 256.
        hidden = int(2 * int(self.embed_dim * self.mlp_ratio) / 3)
        return 256 * ((hidden + 255) // 256)

    def validate(self) -> None:
        _check_values(self)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.attn_heads:
            raise ConfigError(
                f"embed_dim {self.embed_dim} is not divisible by the head count {self.attn_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head dim, got {self.head_dim}")
        if self.kernel_size % 2 != 1:
            raise ConfigError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.latent_seq_len < 2:
            raise ConfigError(f"latent_seq_len must be >= 2, got {self.latent_seq_len}")


@dataclass(frozen=True)
class MAFConfig:
    """The Multimodal Adaptive Fusion block (``MAF_Block``)."""

    dim: int = 768
    num_experts_per_modality: int = 64
    num_heads: int = 24
    num_fusion_layers: int = 8
    mlp_ratio: float = 4.0

    def validate(self) -> None:
        _check_values(self)
        if self.dim % self.num_heads:
            raise ConfigError(f"MAF dim {self.dim} is not divisible by num_heads {self.num_heads}")


@dataclass(frozen=True)
class AudioXConfig:
    """Everything needed to build an AudioX model.

    ``vae`` and ``conditioning`` keep the official JSON sub-dicts (the pretransform config
    and the conditioning config), interpreted by :mod:`audiox.vae` and
    :mod:`audiox.conditioners`.
    """

    name: str = "custom"
    dit: DiTConfig = field(default_factory=DiTConfig)
    maf: MAFConfig = field(default_factory=MAFConfig)
    sample_rate: int = 44100
    sample_size: int = 485100
    audio_channels: int = 2
    downsampling_ratio: int = 2048
    tokens_per_modality: int = 128
    video_fps: int = 5
    seconds: float = 10.0
    diffusion_objective: str = "rectified_flow"
    student_steps: int = 4
    vae: dict = field(default_factory=dict)
    conditioning: dict = field(default_factory=dict)

    @property
    def latent_length(self) -> int:
        return self.sample_size // self.downsampling_ratio

    def validate(self) -> "AudioXConfig":
        _check_values(self)
        self.dit.validate()
        self.maf.validate()
        if self.latent_length != self.dit.latent_frames:
            raise ConfigError(
                f"sample_size {self.sample_size} // downsampling_ratio {self.downsampling_ratio} = "
                f"{self.latent_length} latent frames, but the DiT expects {self.dit.latent_frames} "
                f"(latent_seq_len {self.dit.latent_seq_len} includes the time token)"
            )
        if self.dit.num_cond_tokens != 3 * self.tokens_per_modality:
            raise ConfigError(
                f"num_cond_tokens {self.dit.num_cond_tokens} != 3 x tokens_per_modality "
                f"{self.tokens_per_modality}"
            )
        if self.dit.cond_token_dim != self.maf.dim:
            raise ConfigError(f"DiT cond_token_dim {self.dit.cond_token_dim} != MAF dim {self.maf.dim}")
        if self.diffusion_objective != "rectified_flow":
            raise ConfigError(f"only rectified_flow is supported, got {self.diffusion_objective!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AudioXConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"an AudioXConfig is a JSON object, got {type(d).__name__}")
        d = dict(d)
        parts = {}
        for key, part in (("dit", DiTConfig), ("maf", MAFConfig)):
            sub = d.pop(key, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"AudioXConfig.{key} must be a JSON object, got {sub!r}")
            check_known_fields(part, sub)
            parts[key] = part(**sub)
        check_known_fields(cls, d)
        return cls(**parts, **d).validate()


def _full_size() -> AudioXConfig:
    return AudioXConfig(name="audiox-turbo").validate()


def _tiny() -> AudioXConfig:
    # Same structure and quirks as the release, shrunk: 8 heads of dim 16, 3 blocks.
    # Audio length stays 10 s at 44.1 kHz, so the latent is still 236 frames.
    dit = DiTConfig(
        embed_dim=128, depth=3, num_heads=16, cond_token_dim=64, global_cond_dim=64, mlp_ratio=2.0
    )
    maf = MAFConfig(dim=64, num_experts_per_modality=8, num_heads=4, num_fusion_layers=2)
    return AudioXConfig(name="tiny", dit=dit, maf=maf, vae={"preset": "tiny"}, conditioning={"preset": "tiny"}).validate()


PRESETS = {"audiox-turbo": _full_size, "tiny": _tiny}


def get_preset(name: str) -> AudioXConfig:
    """Return a named preset (``audiox-turbo`` or ``tiny``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None


def _section(d: dict, key: str, where: str, default=None) -> dict:
    """``d[key]``, a JSON object (``default`` when absent)."""
    if key not in d and default is not None:
        return default
    if key not in d:
        raise ConfigError(f"model config is missing '{where}{key}'")
    value = d[key]
    if not isinstance(value, dict):
        raise ConfigError(f"model config {where}{key} must be a JSON object, got {value!r}")
    return value


def _number(d: dict, key: str, default, kind=int):
    """``d[key]`` (or ``default``) as ``kind``; a value of another type is named, never coerced."""
    value = d.get(key, default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"model config: {key} must be true or false, got {value!r}")
        return value
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (kind is int and value != int(value))):
        raise ConfigError(f"model config: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def parse_model_config(cfg: dict[str, Any], name: str = "custom") -> AudioXConfig:
    """Build an :class:`AudioXConfig` from the official model-config JSON (a dict)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"a model config is a JSON object, got {type(cfg).__name__}")
    if cfg.get("model_type") != "diffusion_cond":
        raise ConfigError(f"model_type must be 'diffusion_cond', got {cfg.get('model_type')!r}")
    model = _section(cfg, "model", "")
    diffusion = _section(model, "diffusion", "model.")
    dcfg = _section(diffusion, "config", "model.diffusion.")
    if diffusion.get("type") != "mmdit":
        raise ConfigError(f"diffusion.type must be 'mmdit', got {diffusion.get('type')!r}")
    if diffusion.get("gate_type", "MAF") != "MAF" or not diffusion.get("gate", True):
        raise ConfigError("only the MAF-gated MMDiT (gate: true, gate_type: 'MAF') is supported")
    ids = diffusion.get("cross_attention_cond_ids", ["video_prompt", "text_prompt", "audio_prompt"])
    if not isinstance(ids, list) or ids != ["video_prompt", "text_prompt", "audio_prompt"]:
        raise ConfigError(f"cross_attention_cond_ids must be video, text, audio prompts; got {ids}")
    pretransform = _section(model, "pretransform", "model.", default={})
    downsampling = _number(_section(pretransform, "config", "model.pretransform.", default={}), "downsampling_ratio", 2048)
    dit = DiTConfig(
        io_channels=_number(dcfg, "io_channels", 64),
        embed_dim=_number(dcfg, "embed_dim", 1536),
        depth=_number(dcfg, "depth", 24),
        num_heads=_number(dcfg, "num_heads", 24),
        cond_token_dim=_number(dcfg, "cond_token_dim", 768),
        global_cond_dim=_number(dcfg, "global_cond_dim", 0),
        project_cond_tokens=_number(dcfg, "project_cond_tokens", True, bool),
        mlp_ratio=_number(dcfg, "mlp_ratio", 4.0, float),
        kernel_size=_number(dcfg, "kernel_size", 3),
        # The release hard-codes 237 tokens unless the config passes `_latent_seq_len`.
        latent_seq_len=_number(dcfg, "_latent_seq_len", 237),
        num_cond_tokens=3 * 128,
    )
    gcfg = _section(diffusion, "gate_type_config", "model.diffusion.", default={})
    # The release hard-codes the MAF width to 768, whatever the config says.
    maf = MAFConfig(
        dim=768,
        num_experts_per_modality=_number(gcfg, "num_experts_per_modality", 64),
        num_heads=_number(gcfg, "num_heads", 12),
        num_fusion_layers=_number(gcfg, "num_fusion_layers", 4),
    )
    return AudioXConfig(
        name=name,
        dit=dit,
        maf=maf,
        sample_rate=_number(cfg, "sample_rate", 44100),
        sample_size=_number(cfg, "sample_size", 485100),
        audio_channels=_number(cfg, "audio_channels", 2),
        downsampling_ratio=downsampling,
        video_fps=_number(cfg, "video_fps", 5),
        seconds=_number(cfg, "conditioning_seconds", 10, float),
        diffusion_objective=diffusion.get("diffusion_objective", "rectified_flow"),
        student_steps=_number(_section(cfg, "training", "", default={}), "dmd_sample_steps", 4),
        vae=pretransform,
        conditioning=_section(model, "conditioning", "model.", default={}),
    ).validate()


def load_model_config(path: str | os.PathLike) -> AudioXConfig:
    """Read an official model-config JSON file, or one written by :meth:`AudioXConfig.to_dict`."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"model config not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"model config {path} is a folder, not a JSON file") from None
    except OSError as e:
        raise ConfigError(f"cannot read the model config {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"model config {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"model config {path} must hold a JSON object, it holds {json.dumps(raw)[:40]}")
    try:
        if "model_type" in raw:
            return parse_model_config(raw, name=os.path.basename(os.path.dirname(os.path.abspath(path))) or "custom")
        if not {"dit", "maf"} <= set(raw):
            raise ConfigError(
                "it is neither the release's format (\"model_type\": \"diffusion_cond\") nor audiox-engine's "
                f"(\"dit\" and \"maf\" sections; found keys {sorted(raw)}): give the release's config or one "
                "written by save_pretrained"
            )
        return AudioXConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"model config {path}: {e}") from None
