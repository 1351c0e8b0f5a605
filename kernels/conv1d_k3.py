"""Channels-last Conv1d, kernel 3, padding 1, on float operands, with fused epilogues.

``out[b, t, o] = sum_k sum_c x[b, t+k-1, c] * W[o, c, k]`` (zero outside 0..T-1), with
x (B, T, Cin) channels-last and the weight packed once by ``pack_conv_weight`` from
PyTorch's (Cout, Cin, 3) into (3, Cout, Cin). x, the weights, and the bias are one float
dtype (fp32, fp16 or bf16); the result has it too. The kernel is
``kernels.implicit_gemm`` with three taps and float operands (the same kernel and weight
layout serve the FP8/INT8 ops of ``kernels.quant_gemm``).

- ``conv1d_k3(x, w, bias)``: plain conv (+ optional bias (Cout,)).
- ``conv1d_k3_swiglu(x, w1, w3)``: ``silu(conv(x, W1)) * conv(x, W3)``; both
  accumulators fed from ONE pass over x.
- ``conv1d_k3_gated_residual(x, w, residual, gate, bias)``:
  ``residual + (conv(x, W) + bias) * gate``; gate (B, T, Cout) or (B, 1, Cout),
  residual (B, T, Cout), both may be strided views with a contiguous last dim.
"""

from __future__ import annotations

import torch

from audiox_engine.kernels._dispatch import check_same_device_dtype
# The packing is the GEMM kernel's; it is re-exported here beside the ops that take it.
from audiox_engine.kernels.implicit_gemm import (  # noqa: F401
    implicit_gemm,
    implicit_gemm_reference,
    pack_conv_weight,
    unpack_conv_weight,
)


def conv1d_k3_reference(x, w_packed, bias=None):
    """Plain PyTorch (F.conv1d in fp32) of ``conv1d_k3``; returns x's dtype."""
    return implicit_gemm_reference(x, None, w_packed, None, bias)


def conv1d_k3_swiglu_reference(x, w1_packed, w3_packed):
    """Plain PyTorch of ``conv1d_k3_swiglu``: ``silu(conv(x, W1)) * conv(x, W3)``."""
    return implicit_gemm_reference(x, None, w1_packed, None, epilogue="swiglu", w3=w3_packed)


def conv1d_k3_gated_residual_reference(x, w_packed, residual, gate, bias=None):
    """Plain PyTorch of ``conv1d_k3_gated_residual``: ``residual + (conv + bias) * gate``."""
    return implicit_gemm_reference(x, None, w_packed, None, bias, epilogue="gated_residual",
                                   residual=residual, gate=gate)


def conv1d_k3(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Conv1d k3 pad 1 on channels-last x (B, T, Cin) -> (B, T, Cout).

    w_packed: (3, Cout, Cin) from ``pack_conv_weight``; bias: (Cout,) or None.
    """
    check_same_device_dtype(x, bias=bias)
    return implicit_gemm(x, None, {"w_packed": (w_packed, None)}, bias, taps=3, out=out, a_name="x")


def conv1d_k3_swiglu(x: torch.Tensor, w1_packed: torch.Tensor, w3_packed: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(conv(x, W1)) * conv(x, W3)`` for channels-last x (B, T, Cin) -> (B, T, Cout)."""
    return implicit_gemm(x, None, {"w1_packed": (w1_packed, None), "w3_packed": (w3_packed, None)},
                         taps=3, epilogue="swiglu", out=out, a_name="x")


def conv1d_k3_gated_residual(x: torch.Tensor, w_packed: torch.Tensor, residual: torch.Tensor,
                             gate: torch.Tensor, bias: torch.Tensor | None = None,
                             out: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + (conv(x, W) + bias) * gate``, all (B, T, Cout) channels-last.

    gate: (B, T, Cout) or (B, 1, Cout); residual: (B, T, Cout); both may be strided
    views with a contiguous last dim.
    """
    check_same_device_dtype(x, bias=bias, residual=residual, gate=gate)
    return implicit_gemm(x, None, {"w_packed": (w_packed, None)}, bias, taps=3,
                         epilogue="gated_residual", residual=residual, gate=gate, out=out, a_name="x")
