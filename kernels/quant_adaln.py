"""adaLN modulation that writes its output already quantized for the next W8A8 GEMM.

``h = LayerNorm_noaffine(x) * (1 + scale) + shift`` (as ``kernels.adaln.adaln_modulate``),
then per token ``s = max(absmax(h), EPS) / QMAX`` and ``h_q = cast(h / s)`` (as
``kernels.quant_rows.quantize_rows``), in one pass: the whole row is in registers, so
the absmax costs a reduction, and ``h`` never goes to memory in high precision. This is
the producer-fused activation quantization of the quantized DiT block: the output
feeds ``QuantizedLinear.forward_prequantized`` (qkv) directly.

x (B, N, D); shift, scale (B, N, D) or (B, 1, D), possibly strided chunks of one
(B, N, 6D) modulation tensor (last dim contiguous). Returns h_q (B, N, D) in the
format's dtype and the scales (B, N) fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from audiox_engine.kernels._dispatch import (
    check_float,
    check_last_dim_contiguous,
    check_same_device_dtype,
    interpret_mode,
    next_pow2,
    use_triton,
)
from audiox_engine.kernels.quant_rows import EPS, FORMATS, quantize_rows_reference, round_to_e4m3_grid

MAX_D = 16384


@triton.jit
def _adaln_quantize_fwd(
    X, SHIFT, SCALE, Q, S,
    M, N, D, eps,
    stride_x_b, stride_x_n,
    stride_sh_b, stride_sh_n,
    stride_sc_b, stride_sc_n,
    QMAX: tl.constexpr,
    EPS_: tl.constexpr,
    IS_INT8: tl.constexpr,
    FP8_ROUND_FIX: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < M
    b = rows // N
    n = rows % N
    cols = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (cols < D)[None, :]
    x = tl.load(X + (b * stride_x_b + n * stride_x_n)[:, None] + cols[None, :],
                mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    shift = tl.load(SHIFT + (b * stride_sh_b + n * stride_sh_n)[:, None] + cols[None, :],
                    mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + (b * stride_sc_b + n * stride_sc_n)[:, None] + cols[None, :],
                    mask=mask, other=0.0).to(tl.float32)
    h = tl.where(mask, xc * rstd[:, None] * (1.0 + scale) + shift, 0.0)
    s = tl.maximum(tl.max(tl.abs(h), axis=1), EPS_) / QMAX
    tl.store(S + rows, s, mask=row_ok)
    v = tl.minimum(tl.maximum(h / s[:, None], -QMAX), QMAX)
    if IS_INT8:
        v = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(-v + 0.5))
    elif FP8_ROUND_FIX:
        v = round_to_e4m3_grid(v)
    tl.store(Q + rows[:, None] * D + cols[None, :], v.to(Q.dtype.element_ty), mask=mask)


def adaln_modulate_quantize_reference(x, shift, scale, fmt: str, eps: float = 1e-5):
    """Plain PyTorch: fp32 adaLN, then ``quantize_rows_reference``."""
    h = F.layer_norm(x.float(), (x.shape[-1],), eps=eps) * (1.0 + scale.float()) + shift.float()
    return quantize_rows_reference(h, fmt)


def _broadcast(name, t, B, N, D):
    if t.dim() != 3 or t.shape[0] != B or t.shape[2] != D or t.shape[1] not in (1, N):
        raise ValueError(f"{name} must be (B, N, D) or (B, 1, D) = ({B}, {N} or 1, {D}), got {tuple(t.shape)}")
    check_last_dim_contiguous(name, t)
    return t.expand(B, N, D)


def adaln_modulate_quantize(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, fmt: str,
                            eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rows(LayerNorm_noaffine(x) * (1 + scale) + shift, fmt)`` in one kernel.

    x: (B, N, D); shift, scale: (B, N, D) or (B, 1, D). Returns (h_q (B, N, D), s (B, N)).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; expected one of {list(FORMATS)}")
    if x.dim() != 3:
        raise ValueError(f"x must be (B, N, D), got shape {tuple(x.shape)}")
    check_float("x", x)
    check_last_dim_contiguous("x", x)
    check_same_device_dtype(x, shift=shift, scale=scale)
    B, N, D = x.shape
    if D > MAX_D:
        raise ValueError(f"D={D} exceeds the kernel's limit of {MAX_D}")
    shift = _broadcast("shift", shift, B, N, D)
    scale = _broadcast("scale", scale, B, N, D)
    if not use_triton(x):
        return adaln_modulate_quantize_reference(x, shift, scale, fmt, eps)
    dtype, qmax = FORMATS[fmt]
    q = torch.empty((B, N, D), device=x.device, dtype=dtype)
    s = torch.empty((B, N), device=x.device, dtype=torch.float32)
    M = B * N
    if M:
        block_d = next_pow2(D)
        if interpret_mode():
            block_rows, num_warps = min(next_pow2(M), max(1, 65536 // block_d)), 4
        else:
            block_rows = max(1, 2048 // block_d)
            num_warps = 4 if block_rows * block_d <= 2048 else 8
        _adaln_quantize_fwd[(triton.cdiv(M, block_rows),)](
            x, shift, scale, q, s, M, N, D, eps,
            x.stride(0), x.stride(1), shift.stride(0), shift.stride(1),
            scale.stride(0), scale.stride(1),
            QMAX=qmax, EPS_=EPS, IS_INT8=fmt == "int8", FP8_ROUND_FIX=interpret_mode(),
            BLOCK_ROWS=block_rows, BLOCK_D=block_d, num_warps=num_warps,
        )
    return q, s
