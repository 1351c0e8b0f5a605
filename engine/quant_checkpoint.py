"""Quantized checkpoints and weight memory for models quantized by :mod:`engine.quantize`.

:func:`save_quantized` / :func:`load_quantized`: safetensors with the quantized weights,
their scales and the high-precision rest, plus the recipe, the quantized layer list and the
model config in the metadata; a file quantized for another config or model is refused with
what differs. :func:`weight_memory_report`: weight bytes before and after quantization.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from audiox_engine.audiox.checkpoint import CheckpointError, load_into, read_state_dict, save_safetensors
from audiox_engine.engine.discover import replace_module
from audiox_engine.engine.quantize import (
    QuantConfig,
    QuantizedChannelLastConv1d,
    QuantizedLinear,
    _conv_problem,
    _is_channel_last_conv,
    _QuantizedLayer,
    _selected,
    config_from_recipe,
    quantized_modules,
)

__all__ = [
    "WeightMemoryReport",
    "weight_memory_report",
    "QuantCheckpointError",
    "save_quantized",
    "load_quantized",
    "QUANT_FORMAT_VERSION",
]

QUANT_FORMAT_VERSION = "1"


@dataclass
class WeightMemoryReport:
    """Bytes of weights, now vs the same model entirely in ``baseline_dtype``.

    High-precision tensors (biases included) are counted at ``baseline_dtype``'s size, as
    they would be deployed; quantized weights and their fp32 scales at their real size.
    """

    baseline_dtype: str
    quantized_layers: int
    quantized_bytes: int
    quantized_baseline_bytes: int
    total_bytes: int
    total_baseline_bytes: int

    @property
    def quantized_ratio(self) -> float:
        return self.quantized_bytes / max(1, self.quantized_baseline_bytes)

    @property
    def total_ratio(self) -> float:
        return self.total_bytes / max(1, self.total_baseline_bytes)

    def describe(self) -> str:
        mib = 1 / 2**20
        return (f"{self.quantized_layers} quantized layers: {self.quantized_bytes * mib:.1f} MiB vs "
                f"{self.quantized_baseline_bytes * mib:.1f} MiB in {self.baseline_dtype} "
                f"(x{self.quantized_ratio:.4f}); whole model: {self.total_bytes * mib:.1f} MiB vs "
                f"{self.total_baseline_bytes * mib:.1f} MiB (x{self.total_ratio:.4f})")


def weight_memory_report(model: nn.Module, baseline_dtype: torch.dtype = torch.bfloat16) -> WeightMemoryReport:
    """Weight bytes of ``model`` (its state dict) before/after quantization; see the class."""
    item = torch.empty((), dtype=baseline_dtype).element_size()
    qmods = quantized_modules(model)
    q_now = q_base = total_now = total_base = 0

    def hp_bytes(t: torch.Tensor) -> int:
        return t.numel() * item if t.is_floating_point() else t.numel() * t.element_size()

    for fqn, m in qmods.items():
        now = m.weight_q.numel() * m.weight_q.element_size() + m.weight_scale.numel() * 4
        base = m.weight_q.numel() * item
        if m.bias is not None:
            now += m.bias.numel() * item
            base += m.bias.numel() * item
        q_now += now
        q_base += base
    prefixes = tuple(f"{fqn}." for fqn in qmods)
    for key, t in model.state_dict().items():
        if key.startswith(prefixes):
            continue
        total_now += hp_bytes(t)
        total_base += hp_bytes(t)
    return WeightMemoryReport(str(baseline_dtype).removeprefix("torch."), len(qmods), q_now, q_base,
                              total_now + q_now, total_base + q_base)


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------

class QuantCheckpointError(ValueError):
    """A quantized checkpoint that does not fit the model or the requested config."""


def _model_config(model: nn.Module) -> dict | None:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as stored
    return None


def _diff(file: dict, want: dict) -> list[str]:
    keys = sorted(set(file) | set(want))
    return [f"{k}: file has {file.get(k)!r}, expected {want.get(k)!r}"
            for k in keys if file.get(k) != want.get(k)]


def _recipe_of(model: nn.Module) -> dict:
    recipes = {json.dumps(m.config.recipe(), sort_keys=True) for m in quantized_modules(model).values()}
    if not recipes:
        raise QuantCheckpointError(f"{type(model).__name__} has no quantized layer: call quantize_ first")
    if len(recipes) > 1:
        raise QuantCheckpointError(f"the model mixes {len(recipes)} quantization recipes; "
                                   "save_quantized stores one")
    return json.loads(recipes.pop())


def save_quantized(model: nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """Write ``model``'s state dict (quantized weights, scales, high-precision rest) as
    safetensors, atomically, with the recipe, the quantized layers and the model config."""
    meta = {
        "quant_format_version": QUANT_FORMAT_VERSION,
        "quant_recipe": json.dumps(_recipe_of(model), sort_keys=True),
        "quantized_modules": json.dumps(list(quantized_modules(model))),
    }
    cfg = _model_config(model)
    if cfg is not None:
        meta["model_config"] = json.dumps(cfg, sort_keys=True)
    meta.update(metadata or {})
    save_safetensors(model.state_dict(), path, metadata=meta)


def _read_quant_metadata(path: str) -> dict:
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise QuantCheckpointError(f"quantized checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as e:
        raise QuantCheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    if "quant_format_version" not in meta:
        raise QuantCheckpointError(
            f"{path}: not a quantized checkpoint (no quant_format_version in its metadata); load a "
            "high-precision checkpoint with audiox.checkpoint.load_into, then call quantize_")
    if meta["quant_format_version"] != QUANT_FORMAT_VERSION:
        raise QuantCheckpointError(f"{path}: quantized-checkpoint format version "
                                   f"{meta['quant_format_version']!r}, this code reads "
                                   f"{QUANT_FORMAT_VERSION!r}")
    return meta


def load_quantized(model: nn.Module, path: str | Path, config: QuantConfig | None = None,
                   filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Load a checkpoint written by :func:`save_quantized` into ``model``, in place.

    ``model`` may be unquantized (its selected layers are swapped for empty quantized
    ones, no throw-away quantization) or already quantized the same way. Raises
    :class:`QuantCheckpointError`, naming what differs, when the file's recipe is not
    ``config``'s, its model config is not ``model.cfg``, its quantized layers are not
    those ``filter_fn`` selects (when given) or present in the model, or any tensor's
    name or shape does not match. Nothing is copied unless everything matches.
    """
    path = str(path)
    meta = _read_quant_metadata(path)
    file_recipe = json.loads(meta["quant_recipe"])
    if config is not None and file_recipe != config.recipe():
        raise QuantCheckpointError(f"{path} was quantized with another recipe:\n  "
                                   + "\n  ".join(_diff(file_recipe, config.recipe())))
    config = config or config_from_recipe(file_recipe)
    want_cfg = _model_config(model)
    if want_cfg is not None and "model_config" in meta:
        file_cfg = json.loads(meta["model_config"])
        if file_cfg != want_cfg:
            raise QuantCheckpointError(f"{path} was quantized for another model config:\n  "
                                       + "\n  ".join(_diff(file_cfg, want_cfg)))
    file_fqns = json.loads(meta["quantized_modules"])
    present = quantized_modules(model)
    if present:
        expected = list(present)
        what = "the model's quantized layers"
    else:
        expected = [fqn for fqn, _ in _selected(model, filter_fn)] if filter_fn else list(file_fqns)
        what = "the layers filter_fn selects"
    if set(expected) != set(file_fqns):
        only_file = sorted(set(file_fqns) - set(expected))
        only_model = sorted(set(expected) - set(file_fqns))
        raise QuantCheckpointError(
            f"{path} quantizes other layers than {what}: only in the file {only_file[:10]}"
            f"{' ...' if len(only_file) > 10 else ''}; only in the model {only_model[:10]}"
            f"{' ...' if len(only_model) > 10 else ''}")
    for fqn, m in present.items():
        if m.config.recipe() != file_recipe:
            raise QuantCheckpointError(f"{fqn} is quantized with another recipe:\n  "
                                       + "\n  ".join(_diff(file_recipe, m.config.recipe())))
    sd = read_state_dict(path)
    if not present:
        # Check before swapping, so a failed load leaves the model untouched.
        modules = dict(model.named_modules())
        for fqn in file_fqns:
            m = modules.get(fqn)
            if m is None or not (isinstance(m, nn.Linear) or _is_channel_last_conv(m)):
                raise QuantCheckpointError(f"{path} quantizes {fqn}, which the model has no "
                                           f"Linear/ChannelLastConv1d at (found {type(m).__name__})")
            key = f"{fqn}.weight_q"
            want = _empty_quantized(m, config, "meta").weight_q.shape
            if key not in sd or tuple(sd[key].shape) != tuple(want):
                got = tuple(sd[key].shape) if key in sd else "missing"
                raise QuantCheckpointError(f"{path}: {key} is {got}, the model needs {tuple(want)}")
        for fqn in file_fqns:
            m = modules[fqn]
            replace_module(model, fqn, _empty_quantized(m, config, m.weight.device))
    try:
        load_into(model, sd, strict=True, prefix="")
    except CheckpointError as e:
        raise QuantCheckpointError(f"{path} does not fit the model: {e}") from None
    return model


def _empty_quantized(m: nn.Module, config: QuantConfig, device) -> _QuantizedLayer:
    bias_dtype = None if m.bias is None else m.bias.dtype
    if isinstance(m, nn.Linear):
        return QuantizedLinear(m.in_features, m.out_features, config, bias_dtype, device=device)
    problem = _conv_problem(m)
    if problem is not None:
        raise QuantCheckpointError(f"cannot hold a quantized conv here: {problem}")
    return QuantizedChannelLastConv1d(m.in_channels, m.out_channels, config, bias_dtype, device=device)
