"""The accelerated DiT block with FP8/INT8 GEMMs: ``quantize_accelerated_(acc, config)``.

``engine.accelerate`` replaces each eager block by a ``FusedDiTBlock`` whose k=3 conv
weights live in packed bf16 buffers (not modules), so ``quantize_`` on an accelerated
model only reaches its ``qkv`` Linear. This swaps every ``FusedDiTBlock`` for a
``QuantizedFusedDiTBlock`` that runs the same block with quantized weights and the
quantized kernels' fused epilogues, per step (B, N, D tokens):

    h_q, s = adaln_modulate_quantize(x, shift1, scale1)    LayerNorm + modulation + quantize
    qkv    = scaled_mm(h_q, s, Wqkv) + b                    no high-precision h in memory
    a      = attention(qkv)                                 unchanged (bf16)
    y      = scaled_conv1d_k3(quantize_rows(a), W_linear1) + b
    x, r   = gated_residual_adaln(x, y, gate1, shift2, scale2, bias=time_bias)
    u      = scaled_conv1d_k3(quantize_rows(r), W1 | W3, epilogue=swiglu)
    x      = scaled_conv1d_k3(quantize_rows(u), W2, epilogue=gated_residual(x, gate2))

With ``Int8WeightOnlyConfig`` the activations stay in high precision (no quantize
passes). What stays as it was: the hoisted adaLN modulation GEMM (once per
generation, not per step) and the time-token biases, attention, the norms.
Next fusion step (not done): ``gated_residual_adaln`` emitting quantized ``r``.
"""

from __future__ import annotations

import torch
from torch import nn

from audiox_engine.engine.attention import attend
from audiox_engine.engine.cpu_block import CPUDiTBlock
from audiox_engine.engine.discover import replace_module
from audiox_engine.engine.fused_block import FusedDiTBlock, op_set
from audiox_engine.engine.quantize import (
    QuantConfig,
    QuantizedChannelLastConv1d,
    QuantizedLinear,
    set_backend,
)
from audiox_engine.kernels.conv1d_k3 import unpack_conv_weight
from audiox_engine.kernels.adaln import adaln_modulate_quantize, adaln_modulate_quantize_reference

__all__ = ["QuantizedFusedDiTBlock", "quantize_accelerated_"]


def _conv_from_packed(packed: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv1d:
    """A throw-away Conv1d holding a ``pack_conv_weight`` (3, Cout, Cin) buffer's weight."""
    w = unpack_conv_weight(packed)  # (Cout, Cin, 3)
    conv = nn.Conv1d(w.shape[1], w.shape[0], 3, padding=1, bias=bias is not None,
                     device="meta")
    conv.weight = nn.Parameter(w.detach(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return conv


class QuantizedFusedDiTBlock(nn.Module):
    """A ``FusedDiTBlock`` with quantized qkv, linear1 and FFN weights (same forward)."""

    def __init__(self, fused: FusedDiTBlock, config: QuantConfig):
        super().__init__()
        if not isinstance(fused, FusedDiTBlock):
            raise TypeError(f"expected a FusedDiTBlock (from engine.accelerate), got {type(fused).__name__}")
        self.config = config
        self.backend = fused.backend
        self.attention = fused.attention
        self.num_heads, self.norm1_eps, self.norm2_eps, self.qk_eps = (
            fused.num_heads, fused.norm1_eps, fused.norm2_eps, fused.qk_eps)
        qkv = fused.qkv
        self.qkv = qkv if isinstance(qkv, QuantizedLinear) else QuantizedLinear.from_float(qkv, config)
        with torch.no_grad():
            self.linear1 = QuantizedChannelLastConv1d.from_float(
                _conv_from_packed(fused.linear1_weight, fused.linear1_bias), config)
            self.ffn_w1, self.ffn_w2, self.ffn_w3 = (
                QuantizedChannelLastConv1d.from_float(_conv_from_packed(w, None), config)
                for w in (fused.ffn_w1, fused.ffn_w2, fused.ffn_w3))
        set_backend(self, "reference" if self.backend == "reference" else "triton")
        self._ops = op_set(self.backend)

    def extra_repr(self) -> str:
        return f"{self.config.name}, backend={self.backend}, attention={self.attention}"

    def _quant(self, t: torch.Tensor):
        """Per-token quantization for the W8A8 configs (the layer picks kernel vs reference)."""
        return self.linear1._quantize_input(t)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, time_bias: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """As ``FusedDiTBlock.forward``: x (B, N, D), mod (B, N, 6D), time_bias (B, D)."""
        o = self._ops
        dtype = x.dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        fmt = self.config.activation_format
        if fmt is None:
            qkv = self.qkv(o.adaln_modulate(x, shift1, scale1, self.norm1_eps))
        else:
            fused_adaln = (adaln_modulate_quantize_reference if self.backend == "reference"
                           else adaln_modulate_quantize)
            h_q, h_s = fused_adaln(x, shift1, scale1, fmt, self.norm1_eps)
            qkv = self.qkv.forward_prequantized(h_q, h_s, out_dtype=dtype)
        a = attend(qkv, self.num_heads, cos, sin, self.qk_eps, self.attention)
        y = self.linear1.forward_prequantized(*self._quant(a), out_dtype=dtype)
        x, r = o.gated_residual_adaln(x, y, gate1, shift2, scale2, time_bias, self.norm2_eps)
        u = self.ffn_w1.forward_prequantized(*self._quant(r), out_dtype=dtype, epilogue="swiglu",
                                             partner=self.ffn_w3)
        return self.ffn_w2.forward_prequantized(*self._quant(u), out_dtype=dtype,
                                                epilogue="gated_residual", residual=x, gate=gate2)


def quantize_accelerated_(accelerated: nn.Module, config: QuantConfig) -> nn.Module:
    """Swap every ``FusedDiTBlock`` inside ``accelerated`` (an ``AcceleratedDiT``, or a
    pipeline holding one) for a ``QuantizedFusedDiTBlock``, in place; returns it."""
    found = [(fqn, m) for fqn, m in accelerated.named_modules() if isinstance(m, FusedDiTBlock)]
    if not found and any(isinstance(m, CPUDiTBlock) for m in accelerated.modules()):
        raise ValueError("the CPU backend's blocks (engine.accelerate(..., backend='cpu'), the default on CPU) "
                         "are not quantizable; accelerate with backend='reference' to quantize on CPU")
    if not found:
        raise ValueError(f"{type(accelerated).__name__} has no FusedDiTBlock: call engine.accelerate first "
                         "(or quantize the eager model with engine.quantize.quantize_)")
    for fqn, block in found:
        replace_module(accelerated, fqn, QuantizedFusedDiTBlock(block, config))
    return accelerated
