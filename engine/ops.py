"""The Triton kernels as ``torch.library`` custom ops (namespace ``audiox``).

Wrapping each kernel in ``torch.library.custom_op`` with a ``register_fake`` shape rule
lets ``torch.compile`` trace an accelerated block end to end (``fullgraph=True``): the
compiler sees an opaque op with known output shapes instead of a Triton launcher it
cannot trace. The real implementation calls ``kernels.*``, which launches Triton on CUDA
(or under ``TRITON_INTERPRET=1``) and falls back to its plain-PyTorch reference
otherwise. Every op returns fresh contiguous tensors (custom ops must not alias inputs).

No ``from __future__ import annotations`` here: ``custom_op`` reads the real type hints
to infer each op's schema.
"""

from typing import Optional

import torch
from torch import Tensor

from audiox_engine import kernels

__all__ = [
    "adaln_modulate",
    "gated_residual_adaln",
    "dit_attention",
    "conv1d_k3",
    "conv1d_k3_swiglu",
    "conv1d_k3_gated_residual",
    "snake_beta",
]


def _new_like(x: Tensor, shape) -> Tensor:
    return x.new_empty(tuple(shape))


@torch.library.custom_op("audiox::adaln_modulate", mutates_args=())
def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """``LayerNorm_noaffine(x) * (1 + scale) + shift``; x (B, N, D), shift/scale (B, N|1, D)."""
    return kernels.adaln_modulate(x, shift, scale, eps=eps).contiguous()


@adaln_modulate.register_fake
def _(x, shift, scale, eps):
    return _new_like(x, x.shape)


@torch.library.custom_op("audiox::gated_residual_adaln", mutates_args=())
def gated_residual_adaln(x: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor,
                         bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """``x2 = x + y * gate (+ bias)``, ``h = adaLN(x2)``; returns ``(x2, h)``, each (B, N, D)."""
    x2, h = kernels.gated_residual_adaln(x, y, gate, shift, scale, bias=bias, eps=eps)
    return x2.contiguous(), h.contiguous()


@gated_residual_adaln.register_fake
def _(x, y, gate, shift, scale, bias, eps):
    return _new_like(x, x.shape), _new_like(x, x.shape)


@torch.library.custom_op("audiox::dit_attention", mutates_args=())
def dit_attention(qkv: Tensor, num_heads: int, cos: Tensor, sin: Tensor, eps: float) -> Tensor:
    """Interleaved qkv (B, N, 3*H*d) -> RMSNorm/RoPE/softmax attention -> (B, N, H*d)."""
    return kernels.dit_attention(qkv, num_heads, cos, sin, eps=eps).contiguous()


@dit_attention.register_fake
def _(qkv, num_heads, cos, sin, eps):
    b, n, three_d = qkv.shape
    return _new_like(qkv, (b, n, three_d // 3))


@torch.library.custom_op("audiox::conv1d_k3", mutates_args=())
def conv1d_k3(x: Tensor, w_packed: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Channels-last k=3 conv: x (B, T, Cin), w_packed (3, Cout, Cin) -> (B, T, Cout)."""
    return kernels.conv1d_k3(x, w_packed, bias).contiguous()


@conv1d_k3.register_fake
def _(x, w_packed, bias):
    return _new_like(x, (x.shape[0], x.shape[1], w_packed.shape[1]))


@torch.library.custom_op("audiox::conv1d_k3_swiglu", mutates_args=())
def conv1d_k3_swiglu(x: Tensor, w1_packed: Tensor, w3_packed: Tensor) -> Tensor:
    """``silu(conv(x, W1)) * conv(x, W3)``: (B, T, Cin) -> (B, T, Hidden)."""
    return kernels.conv1d_k3_swiglu(x, w1_packed, w3_packed).contiguous()


@conv1d_k3_swiglu.register_fake
def _(x, w1_packed, w3_packed):
    return _new_like(x, (x.shape[0], x.shape[1], w1_packed.shape[1]))


@torch.library.custom_op("audiox::conv1d_k3_gated_residual", mutates_args=())
def conv1d_k3_gated_residual(x: Tensor, w_packed: Tensor, residual: Tensor, gate: Tensor,
                             bias: Optional[Tensor]) -> Tensor:
    """``residual + (conv(x, W) + bias) * gate``: (B, T, Cin) -> (B, T, Cout)."""
    return kernels.conv1d_k3_gated_residual(x, w_packed, residual, gate, bias).contiguous()


@conv1d_k3_gated_residual.register_fake
def _(x, w_packed, residual, gate, bias):
    return _new_like(x, (x.shape[0], x.shape[1], w_packed.shape[1]))


@torch.library.custom_op("audiox::snake_beta", mutates_args=())
def snake_beta(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """SnakeBeta with log-scale alpha, beta (C,) over x (B, C, T)."""
    return kernels.snake_beta(x.contiguous(), alpha, beta).contiguous()


@snake_beta.register_fake
def _(x, alpha, beta):
    return _new_like(x, x.shape)
