"""Scaled FP8 / INT8 GEMMs with fused epilogues: the quantized DiT's Linear and k=3 conv layers.

- ``scaled_mm(a, a_scale, w_q, w_scale, bias)``: ``y[m, n] = sum_k a[m, k] w[n, k]`` for
  a (..., K) and a weight (N, K), the ``nn.Linear`` layout (also the column-major B
  operand ``torch._scaled_mm`` wants, so both paths share one weight buffer).
- ``scaled_conv1d_k3(a, a_scale, w_packed, w_scale, bias)``: the channels-last Conv1d
  (kernel 3, padding 1) over a (B, T, Cin) with the weight packed (3, Cout, Cin) by
  ``pack_quant_conv_weight``, which is ``pack_conv_weight``: one layout for float and
  quantized weights.

Both run ``kernels.implicit_gemm`` (one tap and three taps). Operands: W8A8, ``a`` FP8
e4m3 or INT8 with per-token fp32 ``a_scale`` (a.shape[:-1]) from
``kernels.quant_rows.quantize_rows`` and a weight in the same format with one fp32 scale
per output channel; or weight-only, ``a`` fp32/fp16/bf16 with ``a_scale=None``.
Epilogues (``kernels.implicit_gemm.EPILOGUES``): ``"none"`` (``y * sa * sw + bias``),
``"swiglu"`` (``silu(a @ W1) * (a @ W3)``, W3 with its own scales, no bias) and
``"gated_residual"`` (``residual + y * gate``, gate (..., N) per token or (B, 1, N) per
sample for a 3-D a).
"""

from __future__ import annotations

import torch

from audiox_engine.kernels.implicit_gemm import (
    implicit_gemm,
    implicit_gemm_reference,
    pack_conv_weight,
    unpack_conv_weight,
)

__all__ = [
    "pack_quant_conv_weight",
    "scaled_conv1d_k3",
    "scaled_conv1d_k3_reference",
    "scaled_mm",
    "scaled_mm_reference",
    "unpack_quant_conv_weight",
]

# One packed layout serves float and quantized conv weights; the names stay for callers.
pack_quant_conv_weight = pack_conv_weight
unpack_quant_conv_weight = unpack_conv_weight


def _as_taps(w: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """A Linear weight (N, K) as the kernel's one-tap (1, N, K) view."""
    if w is not None and w.dim() != 2:
        raise ValueError(f"{name} must be (N, K), got shape {tuple(w.shape)}")
    return None if w is None else w[None]


def scaled_mm_reference(a, a_scale, w_q, w_scale, bias=None, *, epilogue="none", w3_q=None,
                        w3_scale=None, residual=None, gate=None, out_dtype=None):
    """Plain PyTorch of ``scaled_mm``: dequantized operands, fp32 matmul, epilogue."""
    return implicit_gemm_reference(a, a_scale, _as_taps(w_q, "w_q"), w_scale, bias, epilogue=epilogue,
                                   w3=_as_taps(w3_q, "w3_q"), w3_scale=w3_scale, residual=residual,
                                   gate=gate, out_dtype=out_dtype)


def scaled_conv1d_k3_reference(a, a_scale, w_packed, w_scale, bias=None, *, epilogue="none",
                               w3_packed=None, w3_scale=None, residual=None, gate=None,
                               out_dtype=None):
    """Plain PyTorch of ``scaled_conv1d_k3``: dequantize, ``F.conv1d`` in fp32, epilogue."""
    return implicit_gemm_reference(a, a_scale, w_packed, w_scale, bias, epilogue=epilogue,
                                   w3=w3_packed, w3_scale=w3_scale, residual=residual, gate=gate,
                                   out_dtype=out_dtype)


def scaled_mm(a: torch.Tensor, a_scale: torch.Tensor | None, w_q: torch.Tensor,
              w_scale: torch.Tensor, bias: torch.Tensor | None = None, *,
              epilogue: str = "none", w3_q: torch.Tensor | None = None,
              w3_scale: torch.Tensor | None = None, residual: torch.Tensor | None = None,
              gate: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Quantized ``a @ W.T`` with per-channel weight scales and a fused epilogue.

    a: (..., K), FP8/INT8 with ``a_scale`` (...) fp32 per token (W8A8), or a float tensor
    with ``a_scale=None`` (weight-only). w_q: (N, K) FP8/INT8, w_scale: (N,) fp32.
    bias: (N,). ``epilogue`` is ``"none"``, ``"swiglu"`` (needs ``w3_q``/``w3_scale``) or
    ``"gated_residual"`` (needs ``residual`` (..., N) and ``gate`` (..., N) or (B, 1, N)
    for a 3-D a). Returns (..., N) in ``out_dtype`` (default: a's dtype when a is float,
    else residual's, else bfloat16).
    """
    weights = {"w_q": (_as_taps(w_q, "w_q"), w_scale)}
    if epilogue == "swiglu":
        weights["w3_q"] = (_as_taps(w3_q, "w3_q"), w3_scale)
    return implicit_gemm(a, a_scale, weights, bias, taps=1, epilogue=epilogue, residual=residual,
                         gate=gate, out_dtype=out_dtype, out=out)


def scaled_conv1d_k3(a: torch.Tensor, a_scale: torch.Tensor | None, w_packed: torch.Tensor,
                     w_scale: torch.Tensor, bias: torch.Tensor | None = None, *,
                     epilogue: str = "none", w3_packed: torch.Tensor | None = None,
                     w3_scale: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                     gate: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Quantized Conv1d k3 pad 1 over channels-last a (B, T, Cin) -> (B, T, Cout).

    a: FP8/INT8 with ``a_scale`` (B, T) fp32, or float with ``a_scale=None``. w_packed:
    (3, Cout, Cin) from ``pack_quant_conv_weight``; w_scale (Cout,) fp32; bias (Cout,).
    Epilogues as in ``scaled_mm`` (residual (B, T, Cout), gate (B, T, Cout) or (B, 1, Cout)).
    """
    weights = {"w_packed": (w_packed, w_scale)}
    if epilogue == "swiglu":
        weights["w3_packed"] = (w3_packed, w3_scale)
    return implicit_gemm(a, a_scale, weights, bias, taps=3, epilogue=epilogue, residual=residual,
                         gate=gate, out_dtype=out_dtype, out=out)
