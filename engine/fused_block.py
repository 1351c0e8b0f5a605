"""One DiT block (`MMDitSingleBlock`) as five fused kernels plus the qkv GEMM.

Per block, per step (B, N, D tokens; ``mod`` (B, N, 6D) precomputed once per
generation; ``time_bias`` (B, D) precomputed once per step):

    h      = adaln_modulate(x, shift1, scale1)                  LayerNorm + modulation
    qkv    = h @ Wqkv^T + b                                      cuBLAS (kept as nn.Linear)
    a      = attention(qkv)                                      RMSNorm + RoPE + softmax
    y      = conv1d_k3(a, W_linear1) + b_linear1
    x, r   = gated_residual_adaln(x, y, gate1, shift2, scale2, bias=time_bias)
    u      = conv1d_k3_swiglu(r, W1, W3)                         silu(w1 r) * w3 r
    x      = conv1d_k3_gated_residual(u, W2, residual=x, gate=gate2)

The time-token "cross-attention" of the release is just ``time_bias`` added inside
``gated_residual_adaln`` (see ``audiox/dit.py``); its dead ``to_q`` is not kept. The
adaLN Linear is not kept either: its weights live stacked in the owning
``AcceleratedDiT``, which computes all blocks' modulations in one GEMM.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from audiox_engine import kernels
from audiox_engine.engine import ops
from audiox_engine.engine.attention import attend
from audiox_engine.engine.discover import block_layout_problem

__all__ = ["FusedDiTBlock", "op_set"]


BLOCK_OPS = ("adaln_modulate", "gated_residual_adaln", "conv1d_k3", "conv1d_k3_swiglu", "conv1d_k3_gated_residual")


def op_set(backend: str) -> SimpleNamespace:
    """The five block ops for ``backend``: ``triton`` (the custom ops in ``engine.ops``) or
    ``reference`` (their eager references in ``kernels``)."""
    if backend == "triton":
        return SimpleNamespace(**{name: getattr(ops, name) for name in BLOCK_OPS})
    if backend == "reference":
        return SimpleNamespace(**{name: getattr(kernels, f"{name}_reference") for name in BLOCK_OPS})
    raise ValueError(f"unknown block backend {backend!r}")


def _packed(conv: nn.Module) -> torch.Tensor:
    return kernels.pack_conv_weight(conv.weight.detach())


class FusedDiTBlock(nn.Module):
    """A fused replacement for one official ``MMDitSingleBlock`` (same function)."""

    def __init__(self, block: nn.Module, backend: str = "triton", attention: str = "triton"):
        super().__init__()
        problem = block_layout_problem(block)
        if problem is not None:
            raise ValueError(f"cannot fuse this DiT block: {problem}")
        self.backend = backend
        self.attention = attention
        self.dim = block.attn.qkv.in_features
        self.num_heads = int(block.attn.nheads)
        self.head_dim = self.dim // self.num_heads
        self.norm1_eps = float(getattr(block.norm1, "eps", 1e-5))
        self.norm2_eps = float(getattr(block.norm2, "eps", 1e-5))
        self.qk_eps = float(getattr(block.attn.q_norm, "eps", 1e-6))
        # Kept as a module (not a packed buffer) so a quantizer can swap the Linear.
        self.qkv = block.attn.qkv
        lin1 = block.linear1
        self.register_buffer("linear1_weight", _packed(lin1))
        self.register_buffer("linear1_bias", None if lin1.bias is None else lin1.bias.detach().clone())
        self.register_buffer("ffn_w1", _packed(block.ffn.w1))
        self.register_buffer("ffn_w2", _packed(block.ffn.w2))
        self.register_buffer("ffn_w3", _packed(block.ffn.w3))
        for name in ("w1", "w2", "w3"):
            if block.ffn.get_submodule(name).bias is not None:
                raise ValueError(f"cannot fuse this DiT block: ffn.{name} has a bias (the release has none)")
        self._ops = op_set(backend)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}x{self.head_dim}, "
                f"backend={self.backend}, attention={self.attention}")

    def forward(self, x: torch.Tensor, mod: torch.Tensor, time_bias: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) tokens; mod (B, N, 6D) this block's adaLN modulation; time_bias (B, D);
        cos, sin (N, d/2) fp32 RoPE tables. Returns the new x (B, N, D)."""
        o = self._ops
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h = o.adaln_modulate(x, shift1, scale1, self.norm1_eps)
        qkv = self.qkv(h)
        a = attend(qkv, self.num_heads, cos, sin, self.qk_eps, self.attention)
        y = o.conv1d_k3(a, self.linear1_weight, self.linear1_bias)
        x, r = o.gated_residual_adaln(x, y, gate1, shift2, scale2, time_bias, self.norm2_eps)
        u = o.conv1d_k3_swiglu(r, self.ffn_w1, self.ffn_w3)
        return o.conv1d_k3_gated_residual(u, self.ffn_w2, x, gate2, None)
