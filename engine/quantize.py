"""FP8 / INT8 weight quantization of the DiT blocks: ``quantize_(model, config, filter_fn)``.

The torchao calling convention, over our own kernels::

    from audiox_engine.engine.quantize import quantize_, Float8WeightAndActivationConfig
    quantize_(dit, Float8WeightAndActivationConfig())       # in place, returns dit
    v = dit(x, t, cond)                                     # same forward, quantized GEMMs

Configs (all symmetric, one fp32 scale per weight output channel):

- ``Float8WeightAndActivationConfig``: W8A8-FP8. FP8 e4m3 weights; activations quantized
  to FP8 e4m3 per token, dynamically, at every call. FP8 x FP8 GEMM, fp32 accumulation.
- ``Int8WeightAndActivationConfig``: W8A8-INT8. INT8 weights and per-token dynamic INT8
  activations; int32 accumulation.
- ``Int8WeightOnlyConfig``: INT8 weights, high-precision activations; the weight is
  upcast in the GEMM's registers (halves weight memory and weight traffic only).

What gets quantized (the default filter, :func:`default_filter`): every ``nn.Linear``
and every kernel-3 ``ChannelLastConv1d`` inside ``transformer.layers.<i>.``, i.e. per
block ``attn.qkv``, ``cross_attn.to_q``, ``cross_attn.to_kv``, ``linear1``, ``ffn.w1/w2/w3``
and ``adaLN_modulation.1`` (about 99% of the DiT's parameters). What stays in high
precision: the parameter-free norms, the time embedding (``timestep_features``,
``to_timestep_embed``), ``to_cond_embed``/``to_global_embed``, ``transformer.project_in``/
``project_out``, ``proj_mm_tokens``/``proj_mm_seq_len``, ``preprocess_conv``/
``postprocess_conv``, and everything outside the DiT (MAF, conditioners, VAE): small
layers whose errors land directly on the input or output of the network. Biases stay
in the model's dtype. ``filter_fn(module, fqn) -> bool`` replaces the default; it is
asked only about ``nn.Linear`` and ``ChannelLastConv1d`` modules (torchao's rule).

Execution: on CUDA (or under ``TRITON_INTERPRET=1``) the quantized layers run the Triton
kernels of ``kernels.quant_gemm`` / ``kernels.quant_rows``; on a plain CPU they run the
dequantize-then-matmul reference (same quantization of weights and activations, fp32
math), so a quantized model works everywhere. ``set_backend(model, "reference")`` forces
the reference.

Hook for fused producers: ``QuantizedLinear.forward_prequantized(x_q, x_scale, ...)`` and
``QuantizedChannelLastConv1d.forward_prequantized`` take activations already quantized
by their producer (``kernels.adaln.adaln_modulate_quantize`` emits the adaLN
output as FP8/INT8 plus per-token scales), skipping the standalone quantize pass; the
same methods take the fused epilogues (``"swiglu"`` with a partner layer,
``"gated_residual"``).

The accelerated engine: ``engine.accelerate`` packs the block convs into buffers, so
quantize an accelerated model with ``engine.quant_fused_block.quantize_accelerated_``
(fused blocks with these layers inside); ``quantize_`` is for the eager model.

Checkpoints and weight memory: :mod:`engine.quant_checkpoint`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from audiox_engine.engine.discover import replace_module
from audiox_engine.kernels._dispatch import use_triton
from audiox_engine.kernels.quant_gemm import (
    pack_quant_conv_weight,
    scaled_conv1d_k3,
    scaled_conv1d_k3_reference,
    scaled_mm,
    scaled_mm_reference,
)
from audiox_engine.kernels.quant_rows import FORMATS, quantize_per_channel, quantize_rows, quantize_rows_reference

__all__ = [
    "QuantConfig",
    "Float8WeightAndActivationConfig",
    "Int8WeightAndActivationConfig",
    "Int8WeightOnlyConfig",
    "config_from_recipe",
    "default_filter",
    "quantize_",
    "QuantizedLinear",
    "QuantizedChannelLastConv1d",
    "quantized_modules",
    "set_backend",
]

BACKENDS = ("auto", "triton", "reference")
_BLOCK_FQN = re.compile(r"(^|\.)transformer\.layers\.\d+\.")


# ---------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantConfig:
    """A quantization recipe. Use one of the three named subclasses."""

    weight_format: str
    activation_format: str | None  # None: weight-only

    def __post_init__(self):
        for name, fmt in (("weight_format", self.weight_format), ("activation_format", self.activation_format)):
            if fmt is not None and fmt not in FORMATS:
                raise ValueError(f"{name} must be one of {list(FORMATS)}, got {fmt!r}")
        if self.activation_format is not None and self.activation_format != self.weight_format:
            raise ValueError("W8A8 needs weights and activations in the same format, got "
                             f"{self.weight_format} and {self.activation_format}")

    @property
    def name(self) -> str:
        return type(self).__name__

    def recipe(self) -> dict:
        """Everything that determines the quantized tensors (stored in checkpoints)."""
        return {
            "config": self.name,
            "weight_format": self.weight_format,
            "weight_granularity": "per_output_channel",
            "weight_scale_dtype": "float32",
            "symmetric": True,
            "activation_format": self.activation_format,
            "activation_granularity": None if self.activation_format is None else "per_token_dynamic",
            "conv_weight_layout": "(3, Cout, Cin)",
        }


@dataclass(frozen=True)
class Float8WeightAndActivationConfig(QuantConfig):
    """W8A8-FP8: e4m3 weights (per output channel), dynamic per-token e4m3 activations."""

    weight_format: str = "fp8_e4m3"
    activation_format: str | None = "fp8_e4m3"


@dataclass(frozen=True)
class Int8WeightAndActivationConfig(QuantConfig):
    """W8A8-INT8: int8 weights (per output channel), dynamic per-token int8 activations."""

    weight_format: str = "int8"
    activation_format: str | None = "int8"


@dataclass(frozen=True)
class Int8WeightOnlyConfig(QuantConfig):
    """INT8 weights (per output channel); activations stay in the model's dtype."""

    weight_format: str = "int8"
    activation_format: str | None = None


_CONFIG_CLASSES = {c.__name__: c for c in (
    Float8WeightAndActivationConfig, Int8WeightAndActivationConfig, Int8WeightOnlyConfig)}


def config_from_recipe(recipe: dict) -> QuantConfig:
    """Rebuild the config that wrote ``recipe`` (from a checkpoint's metadata)."""
    cls = _CONFIG_CLASSES.get(recipe.get("config"))
    if cls is None:
        raise ValueError(f"unknown quantization config {recipe.get('config')!r}; "
                         f"known: {sorted(_CONFIG_CLASSES)}")
    return cls(weight_format=recipe["weight_format"], activation_format=recipe["activation_format"])


# ---------------------------------------------------------------------------------------
# Which modules
# ---------------------------------------------------------------------------------------

def _is_channel_last_conv(module: nn.Module) -> bool:
    # By class name, so the official release's class of the same name qualifies too.
    return isinstance(module, nn.Conv1d) and type(module).__name__ == "ChannelLastConv1d"


def _conv_problem(conv: nn.Conv1d) -> str | None:
    if tuple(conv.kernel_size) != (3,):
        return f"kernel_size {conv.kernel_size[0]} (only 3 is supported)"
    if isinstance(conv.padding, str) or tuple(conv.padding) != (1,):
        return f"padding {conv.padding} (only 1 is supported)"
    if tuple(conv.stride) != (1,) or tuple(conv.dilation) != (1,):
        return f"stride {conv.stride} / dilation {conv.dilation} (only 1 is supported)"
    if conv.groups != 1:
        return f"groups {conv.groups} (only 1 is supported)"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (only 'zeros' is supported)"
    return None


def default_filter(module: nn.Module, fqn: str) -> bool:
    """The DiT blocks' Linear layers and kernel-3 ChannelLastConv1d layers, nothing else.

    Matches ``transformer.layers.<i>.`` anywhere in the name, so a DiT wrapped as
    ``model.model.transformer...`` (the release's checkpoint layout) works unchanged.
    """
    if not _BLOCK_FQN.search(fqn):
        return False
    if isinstance(module, nn.Linear):
        return True
    return _is_channel_last_conv(module) and _conv_problem(module) is None


# ---------------------------------------------------------------------------------------
# Quantized modules
# ---------------------------------------------------------------------------------------

class _QuantizedLayer(nn.Module):
    """Shared state: ``weight_q``, ``weight_scale`` (fp32, per output channel), ``bias``."""

    def __init__(self, config: QuantConfig, weight_shape: tuple[int, ...], out_features: int,
                 bias_dtype: torch.dtype | None, device=None):
        super().__init__()
        self.config = config
        self.backend = "auto"
        wdtype = FORMATS[config.weight_format][0]
        self.register_buffer("weight_q", torch.empty(weight_shape, dtype=wdtype, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        bias = None if bias_dtype is None else torch.empty(out_features, dtype=bias_dtype, device=device)
        self.register_buffer("bias", bias)

    def _apply(self, fn, recurse=True):
        # ``model.to(torch.bfloat16)`` / ``.half()`` must move the quantized weight and its
        # fp32 scales but never recast them (fp8 counts as floating point to PyTorch).
        kept = {n: self._buffers[n] for n in ("weight_q", "weight_scale")}
        for n in kept:
            self._buffers[n] = None
        try:
            super()._apply(fn, recurse)
        finally:
            for n, t in kept.items():
                moved = fn(t)
                self._buffers[n] = moved if moved.dtype == t.dtype else t.to(moved.device)
        return self

    def _triton(self, x: torch.Tensor) -> bool:
        if self.backend == "reference":
            return False
        if self.backend == "triton":
            return True
        return use_triton(x, self.weight_q)

    def _quantize_input(self, x: torch.Tensor):
        if x.shape[-1] > 1 and x.stride(-1) != 1:
            x = x.contiguous()  # the kernels read rows with unit stride
        fmt = self.config.activation_format
        if fmt is None:
            return x, None
        quant = quantize_rows if self._triton(x) else quantize_rows_reference
        return quant(x, fmt)

    # Set by each subclass: (the Triton GEMM, its PyTorch reference) and the name the GEMM
    # gives the swiglu partner's weight.
    _gemms: tuple = ()
    _w3_arg = ""

    def _input_problem(self, x: torch.Tensor) -> str | None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) float -> (..., N) in x's dtype (a conv: (B, T, Cin) -> (B, T, Cout))."""
        problem = self._input_problem(x)
        if problem:
            raise ValueError(problem)
        x_q, x_scale = self._quantize_input(x)
        return self.forward_prequantized(x_q, x_scale, out_dtype=x.dtype, _triton=self._triton(x))

    def forward_prequantized(self, x_q: torch.Tensor, x_scale: torch.Tensor | None, *,
                             out_dtype: torch.dtype | None = None, epilogue: str = "none",
                             partner: "_QuantizedLayer | None" = None,
                             residual: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                             _triton: bool | None = None) -> torch.Tensor:
        """The GEMM on activations quantized by their producer (``x_scale`` fp32 per token,
        shaped as ``x_q`` without its last dimension; None for weight-only with a float
        ``x_q``), with an optional fused epilogue: ``"swiglu"`` (``partner`` is the W3 layer,
        quantized the same way) or ``"gated_residual"``."""
        args = {"epilogue": epilogue, "residual": residual, "gate": gate}
        if epilogue == "swiglu":
            if not isinstance(partner, type(self)) or partner.config != self.config:
                raise ValueError("the swiglu epilogue needs partner= the W3 layer, quantized the same way")
            args.update({self._w3_arg: partner.weight_q, "w3_scale": partner.weight_scale})
        triton_ = self._triton(x_q) if _triton is None else _triton
        fn = self._gemms[0] if triton_ else self._gemms[1]
        return fn(x_q, x_scale, self.weight_q, self.weight_scale,
                  None if epilogue == "swiglu" else self.bias, out_dtype=out_dtype, **args)

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight_q.shape)} {self.config.weight_format}, "
                f"activations={self.config.activation_format or 'unquantized'}, "
                f"bias={self.bias is not None}, backend={self.backend}")


class QuantizedLinear(_QuantizedLayer):
    """An ``nn.Linear`` with an FP8/INT8 (N, K) weight and per-channel scales."""

    _gemms = (scaled_mm, scaled_mm_reference)
    _w3_arg = "w3_q"

    def __init__(self, in_features: int, out_features: int, config: QuantConfig,
                 bias_dtype: torch.dtype | None = None, device=None):
        super().__init__(config, (out_features, in_features), out_features, bias_dtype, device)
        self.in_features = in_features
        self.out_features = out_features

    @classmethod
    def from_float(cls, linear: nn.Linear, config: QuantConfig) -> "QuantizedLinear":
        w = linear.weight.detach()
        bias = linear.bias
        q = cls(linear.in_features, linear.out_features, config,
                None if bias is None else bias.dtype, device=w.device)
        w_q, scale = quantize_per_channel(w, config.weight_format)
        q.weight_q.copy_(w_q)
        q.weight_scale.copy_(scale)
        if bias is not None:
            q.bias.copy_(bias.detach())
        return q

    def _input_problem(self, x: torch.Tensor) -> str | None:
        if x.shape[-1] != self.in_features:
            return f"expected (..., {self.in_features}) input, got {tuple(x.shape)}"
        return None


class QuantizedChannelLastConv1d(_QuantizedLayer):
    """A kernel-3, padding-1 ``ChannelLastConv1d`` over (B, T, Cin) with an FP8/INT8
    weight packed as (3, Cout, Cin) (see ``kernels.quant_gemm.pack_quant_conv_weight``)."""

    _gemms = (scaled_conv1d_k3, scaled_conv1d_k3_reference)
    _w3_arg = "w3_packed"

    def __init__(self, in_channels: int, out_channels: int, config: QuantConfig,
                 bias_dtype: torch.dtype | None = None, device=None):
        super().__init__(config, (3, out_channels, in_channels), out_channels, bias_dtype, device)
        self.in_channels = in_channels
        self.out_channels = out_channels

    @classmethod
    def from_float(cls, conv: nn.Conv1d, config: QuantConfig) -> "QuantizedChannelLastConv1d":
        problem = _conv_problem(conv)
        if problem is not None:
            raise ValueError(f"cannot quantize this Conv1d: {problem}")
        w = conv.weight.detach()
        bias = conv.bias
        q = cls(conv.in_channels, conv.out_channels, config,
                None if bias is None else bias.dtype, device=w.device)
        w_q, scale = quantize_per_channel(w, config.weight_format)  # one scale across taps
        q.weight_q.copy_(pack_quant_conv_weight(w_q))
        q.weight_scale.copy_(scale)
        if bias is not None:
            q.bias.copy_(bias.detach())
        return q

    def _input_problem(self, x: torch.Tensor) -> str | None:
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            return f"expected (B, T, {self.in_channels}) input, got {tuple(x.shape)}"
        return None


QUANTIZED_TYPES = (QuantizedLinear, QuantizedChannelLastConv1d)


# ---------------------------------------------------------------------------------------
# The verb
# ---------------------------------------------------------------------------------------

def _candidates(model: nn.Module):
    for fqn, m in model.named_modules():
        if isinstance(m, nn.Linear) or _is_channel_last_conv(m):
            yield fqn, m


def _selected(model: nn.Module, filter_fn) -> list[tuple[str, nn.Module]]:
    chosen = [(fqn, m) for fqn, m in _candidates(model) if filter_fn(m, fqn)]
    for fqn, m in chosen:
        if _is_channel_last_conv(m) and _conv_problem(m) is not None:
            raise ValueError(f"filter_fn selected {fqn}, which cannot be quantized: {_conv_problem(m)}")
    return chosen


def quantize_(model: nn.Module, config: QuantConfig,
              filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Swap the selected layers of ``model`` for quantized ones, in place; returns ``model``.

    ``filter_fn(module, fqn)`` is asked about every ``nn.Linear`` and ``ChannelLastConv1d``
    (default: :func:`default_filter`, the DiT blocks' layers). Layers already quantized
    are left alone. Raises ValueError if nothing is selected (almost always a wrong
    filter or the wrong model) or a selected conv is not kernel 3 / padding 1.
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig (e.g. Float8WeightAndActivationConfig()), "
                        f"got {type(config).__name__}")
    chosen = _selected(model, filter_fn or default_filter)
    if not chosen:
        raise ValueError(f"quantize_: the filter selected no Linear/ChannelLastConv1d layer in "
                         f"{type(model).__name__}")
    with torch.no_grad():
        for fqn, m in chosen:
            new = (QuantizedLinear if isinstance(m, nn.Linear) else QuantizedChannelLastConv1d
                   ).from_float(m, config)
            new.train(m.training)
            replace_module(model, fqn, new)
    return model


def quantized_modules(model: nn.Module) -> dict[str, _QuantizedLayer]:
    """fqn -> quantized layer, in module order."""
    return {fqn: m for fqn, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES)}


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """``"auto"`` (Triton on CUDA / interpreter, reference on CPU), ``"triton"`` or
    ``"reference"`` (dequantize-then-matmul) for every quantized layer of ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for m in quantized_modules(model).values():
        m.backend = backend
    return model
