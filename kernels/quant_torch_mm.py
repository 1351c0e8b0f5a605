"""PyTorch's own scaled GEMMs on the same operands as ``kernels.quant_gemm.scaled_mm``.

Comparison paths for benchmarks and tests (no fused epilogue beyond bias):

- ``torch_scaled_mm_fp8``: ``torch._scaled_mm`` (cuBLASLt FP8 on Hopper) with row-wise
  scales: ``a_scale`` (M, 1) per token, ``w_scale`` (1, N) per output channel. The weight
  (N, K) row-major is passed as ``w_q.t()``, the column-major B operand it requires.
  Runs on CUDA (sm_89+) and, in recent PyTorch builds, on CPU.
- ``torch_int_mm_int8``: ``torch._int_mm`` (int8 x int8 -> int32), then both scales and
  the bias in fp32. On CUDA it needs M > 16 and K, N multiples of 8; CPU takes any shape.
"""

from __future__ import annotations

import torch

__all__ = ["torch_scaled_mm_fp8", "torch_int_mm_int8"]


def _flatten(a: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor):
    if w_q.dim() != 2 or a.shape[-1] != w_q.shape[1]:
        raise ValueError(f"w_q must be (N, K) with K = a.shape[-1] = {a.shape[-1]}, got {tuple(w_q.shape)}")
    if tuple(a_scale.shape) != tuple(a.shape[:-1]):
        raise ValueError(f"a_scale must be a.shape[:-1] = {tuple(a.shape[:-1])}, got {tuple(a_scale.shape)}")
    return a.reshape(-1, a.shape[-1]).contiguous(), a_scale.reshape(-1, 1).float()


def torch_scaled_mm_fp8(a_q: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor,
                        w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                        out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """FP8 ``(a_q * a_scale) @ (w_q * w_scale).T + bias`` via ``torch._scaled_mm``.

    a_q (..., K) and w_q (N, K) are ``torch.float8_e4m3fn``; a_scale (...) and w_scale (N,)
    fp32. Row-wise scaling needs a bfloat16 output on CUDA.
    """
    if a_q.dtype != torch.float8_e4m3fn or w_q.dtype != torch.float8_e4m3fn:
        raise ValueError(f"torch_scaled_mm_fp8 needs float8_e4m3fn operands, got {a_q.dtype} and {w_q.dtype}")
    a2, s2 = _flatten(a_q, a_scale, w_q)
    y = torch._scaled_mm(a2, w_q.t(), scale_a=s2, scale_b=w_scale.reshape(1, -1).float(),
                         bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype)
    return y.reshape(*a_q.shape[:-1], w_q.shape[0])


def torch_int_mm_int8(a_q: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor,
                      w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                      out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """INT8 ``(a_q * a_scale) @ (w_q * w_scale).T + bias`` via ``torch._int_mm``."""
    if a_q.dtype != torch.int8 or w_q.dtype != torch.int8:
        raise ValueError(f"torch_int_mm_int8 needs int8 operands, got {a_q.dtype} and {w_q.dtype}")
    a2, s2 = _flatten(a_q, a_scale, w_q)
    y = torch._int_mm(a2, w_q.t()).float() * s2 * w_scale.reshape(1, -1).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype).reshape(*a_q.shape[:-1], w_q.shape[0])
