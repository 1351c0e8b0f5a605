"""Fused adaptive LayerNorm: LayerNorm without affine, then per-token modulation.

Three public ops share one kernel (flash-attn Triton LayerNorm style: the residual,
bias and quantized-output paths are ``tl.constexpr`` switches, not near-copies):

- ``adaln_modulate(x, shift, scale)``:
  ``h = LayerNorm_noaffine(x) * (1 + scale) + shift``
- ``gated_residual_adaln(x, y, gate, shift, scale, bias)``:
  ``x2 = x + y * gate (+ bias)``; ``h = LayerNorm_noaffine(x2) * (1 + scale) + shift``;
  returns ``(x2, h)`` from one read of every input.
- ``adaln_modulate_quantize(x, shift, scale, fmt)``: ``h`` as ``adaln_modulate``, written
  already quantized for the next W8A8 GEMM: per token ``s = max(absmax(h), EPS) / QMAX``
  and ``h_q = cast(h / s)`` (as ``kernels.quant_rows.quantize_rows``). The whole row is in
  registers, so the absmax is one more reduction and ``h`` never goes to memory in high
  precision. Returns ``(h_q, s)``.

``x``/``y`` are (B, N, D); ``shift``/``scale``/``gate`` are (B, N, D) per token or
(B, 1, D) per sample, and may be strided views (chunks of one (B, N, 6*D) modulation
tensor) as long as the last dim is contiguous: the launcher passes strides instead of
copying. ``bias`` is (B, D), broadcast over N. All math is fp32; outputs have x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from audiox_engine.kernels._dispatch import (
    check_float,
    check_last_dim_contiguous,
    check_out,
    check_same_device_dtype,
    copy_into,
    expand_broadcast,
    interpret_mode,
    load_rows_f32,
    next_pow2,
    use_triton,
)
from audiox_engine.kernels.quant_rows import EPS, codes_of, format_spec, quantize_rows_reference

# One row must fit in one program's registers.
MAX_D = 16384


@triton.jit
def _adaln_fwd(
    X, Y, GATE, BIAS, SHIFT, SCALE, X2_OUT, H_OUT, H_SCALE,
    M, N, D, eps,
    stride_x_b, stride_x_n,
    stride_y_b, stride_y_n,
    stride_g_b, stride_g_n,
    stride_bias_b,
    stride_sh_b, stride_sh_n,
    stride_sc_b, stride_sc_n,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    QUANTIZE: tl.constexpr,
    QMAX: tl.constexpr,
    QEPS: tl.constexpr,
    IS_INT8: tl.constexpr,
    FP8_ROUND_FIX: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Each program normalises BLOCK_ROWS whole rows (row = (b, n), M = B*N rows).
    # int64 rows: B*N*6D-sized strided views overflow int32 offsets.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < M
    b = rows // N
    n = rows % N
    cols = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (cols < D)[None, :]
    out_offs = rows[:, None] * D + cols[None, :]

    x = load_rows_f32(X, b, n, stride_x_b, stride_x_n, cols, mask)
    if HAS_RESIDUAL:
        y = load_rows_f32(Y, b, n, stride_y_b, stride_y_n, cols, mask)
        gate = load_rows_f32(GATE, b, n, stride_g_b, stride_g_n, cols, mask)
        x = x + y * gate
        if HAS_BIAS:
            x = x + load_rows_f32(BIAS, b, n, stride_bias_b, 0, cols, mask)
        tl.store(X2_OUT + out_offs, x.to(X2_OUT.dtype.element_ty), mask=mask)

    # Statistics from the fp32 x2 (not its rounded store), two-pass for stability;
    # the rows are in registers so the second pass is free.
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)

    shift = load_rows_f32(SHIFT, b, n, stride_sh_b, stride_sh_n, cols, mask)
    scale = load_rows_f32(SCALE, b, n, stride_sc_b, stride_sc_n, cols, mask)
    h = xc * rstd[:, None] * (1.0 + scale) + shift
    if QUANTIZE:
        h = tl.where(mask, h, 0.0)
        s = tl.maximum(tl.max(tl.abs(h), axis=1), QEPS) / QMAX
        tl.store(H_SCALE + rows, s, mask=row_ok)
        h = codes_of(h, s, QMAX, IS_INT8, FP8_ROUND_FIX)
    tl.store(H_OUT + out_offs, h.to(H_OUT.dtype.element_ty), mask=mask)


def _config(M: int, D: int) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_D, num_warps): a fixed table instead of autotuning.

    Aim for ~8-16 elements per thread so each thread issues 16-byte vector loads, and
    pack several short rows per program. To tune on H100: 4 vs 8 warps at D=1536
    (BLOCK_D=2048), and BLOCK_ROWS for D <= 512.
    """
    block_d = next_pow2(D)
    if interpret_mode():
        # The interpreter pays per program: few programs with ~64k elements each.
        return min(next_pow2(M), max(1, 65536 // block_d)), block_d, 4
    block_rows = max(1, 2048 // block_d)
    tile = block_rows * block_d
    num_warps = 4 if tile <= 2048 else (8 if tile <= 4096 else 16)
    return block_rows, block_d, num_warps


def _check_modulation(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
    """Validate x and its shift/scale; returns B, N, D and shift, scale expanded to (B, N, D)."""
    B, N, D = _check_x(x)
    check_same_device_dtype(x, shift=shift, scale=scale)
    return B, N, D, expand_broadcast("shift", shift, B, N, D), expand_broadcast("scale", scale, B, N, D)


def _check_x(x: torch.Tensor) -> tuple[int, int, int]:
    if x.dim() != 3:
        raise ValueError(f"x must be (B, N, D), got shape {tuple(x.shape)}")
    check_float("x", x)
    check_last_dim_contiguous("x", x)
    B, N, D = x.shape
    if D > MAX_D:
        raise ValueError(f"D={D} exceeds the kernel's limit of {MAX_D}")
    return B, N, D


def _launch(x, y, gate, bias, shift, scale, x2_out, h_out, eps, h_scale=None, fmt=None):
    B, N, D = x.shape
    if B * N == 0:
        return
    block_rows, block_d, num_warps = _config(B * N, D)
    has_res = y is not None
    # Unused pointer args get x as a harmless placeholder (never dereferenced).
    y_ = y if has_res else x
    g_ = gate if has_res else x
    bias_ = bias if bias is not None else x
    x2_ = x2_out if has_res else h_out
    qmax = format_spec(fmt)[1] if fmt is not None else 1.0
    _adaln_fwd[(triton.cdiv(B * N, block_rows),)](
        x, y_, g_, bias_, shift, scale, x2_, h_out, h_scale if fmt is not None else x,
        B * N, N, D, eps,
        x.stride(0), x.stride(1),
        y_.stride(0), y_.stride(1),
        g_.stride(0), g_.stride(1),
        bias_.stride(0),
        shift.stride(0), shift.stride(1),
        scale.stride(0), scale.stride(1),
        HAS_RESIDUAL=has_res,
        HAS_BIAS=bias is not None,
        QUANTIZE=fmt is not None,
        QMAX=qmax,
        QEPS=EPS,
        IS_INT8=fmt == "int8",
        FP8_ROUND_FIX=interpret_mode(),
        BLOCK_ROWS=block_rows,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )


def _modulated_f32(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps) * (1.0 + scale.float()) + shift.float()


def adaln_modulate_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                             eps: float = 1e-5) -> torch.Tensor:
    """Plain PyTorch: ``LayerNorm_noaffine(x) * (1 + scale) + shift`` in fp32."""
    return _modulated_f32(x, shift, scale, eps).to(x.dtype)


def adaln_modulate_quantize_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                                      fmt: str, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch: fp32 adaLN, then ``quantize_rows_reference``."""
    return quantize_rows_reference(_modulated_f32(x, shift, scale, eps), fmt)


def gated_residual_adaln_reference(x, y, gate, shift, scale, bias=None, eps: float = 1e-5):
    """Plain PyTorch: ``x2 = x + y * gate (+ bias[:, None])``, then adaLN of x2, in fp32."""
    x2 = x.float() + y.float() * gate.float()
    if bias is not None:
        x2 = x2 + bias.float()[:, None, :]
    return x2.to(x.dtype), _modulated_f32(x2, shift, scale, eps).to(x.dtype)


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                   eps: float = 1e-5, out: torch.Tensor | None = None) -> torch.Tensor:
    """``LayerNorm_noaffine(x) * (1 + scale) + shift``.

    x: (B, N, D); shift, scale: (B, N, D) or (B, 1, D), last dim contiguous.
    Returns (B, N, D) in x's dtype (written into ``out`` when given).
    """
    B, N, D, shift, scale = _check_modulation(x, shift, scale)
    h_out = check_out(out, (B, N, D), x)
    if not use_triton(x):
        return copy_into(out, adaln_modulate_reference(x, shift, scale, eps))
    _launch(x, None, None, None, shift, scale, None, h_out, eps)
    return h_out


def gated_residual_adaln(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                         shift: torch.Tensor, scale: torch.Tensor,
                         bias: torch.Tensor | None = None, eps: float = 1e-5,
                         out: tuple[torch.Tensor, torch.Tensor] | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x2 = x + y * gate (+ bias)``; ``h = LayerNorm_noaffine(x2) * (1 + scale) + shift``.

    x, y: (B, N, D); gate, shift, scale: (B, N, D) or (B, 1, D); bias: (B, D) or None.
    Returns ``(x2, h)``, both (B, N, D) in x's dtype; ``out`` is an optional
    ``(x2_out, h_out)`` pair of buffers.
    """
    B, N, D = _check_x(x)
    check_same_device_dtype(x, y=y, gate=gate, shift=shift, scale=scale, bias=bias)
    if tuple(y.shape) != (B, N, D):
        raise ValueError(f"y must have x's shape {(B, N, D)}, got {tuple(y.shape)}")
    check_last_dim_contiguous("y", y)
    gate = expand_broadcast("gate", gate, B, N, D)
    shift = expand_broadcast("shift", shift, B, N, D)
    scale = expand_broadcast("scale", scale, B, N, D)
    if bias is not None:
        if tuple(bias.shape) != (B, D):
            raise ValueError(f"bias must be (B, D) = {(B, D)}, got {tuple(bias.shape)}")
        check_last_dim_contiguous("bias", bias)
    if out is not None and (not isinstance(out, (tuple, list)) or len(out) != 2):
        raise ValueError("out must be a (x2_out, h_out) pair")
    x2_out = check_out(out[0] if out is not None else None, (B, N, D), x, "out[0]")
    h_out = check_out(out[1] if out is not None else None, (B, N, D), x, "out[1]")
    if not use_triton(x):
        x2, h = gated_residual_adaln_reference(x, y, gate, shift, scale, bias, eps)
        if out is None:
            return x2, h
        return copy_into(x2_out, x2), copy_into(h_out, h)
    _launch(x, y, gate, bias, shift, scale, x2_out, h_out, eps)
    return x2_out, h_out


def adaln_modulate_quantize(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, fmt: str,
                            eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rows(LayerNorm_noaffine(x) * (1 + scale) + shift, fmt)`` in one kernel.

    x: (B, N, D); shift, scale: (B, N, D) or (B, 1, D), last dim contiguous (chunks of one
    (B, N, 6D) modulation tensor work). ``fmt``: ``"fp8_e4m3"`` or ``"int8"``. Returns
    ``(h_q, s)``: h_q (B, N, D) in the format's dtype, s (B, N) fp32 per-token scales.
    """
    q_dtype, _ = format_spec(fmt)
    B, N, D, shift, scale = _check_modulation(x, shift, scale)
    if not use_triton(x):
        return adaln_modulate_quantize_reference(x, shift, scale, fmt, eps)
    h_q = torch.empty((B, N, D), device=x.device, dtype=q_dtype)
    s = torch.empty((B, N), device=x.device, dtype=torch.float32)
    _launch(x, None, None, None, shift, scale, None, h_q, eps, h_scale=s, fmt=fmt)
    return h_q, s
