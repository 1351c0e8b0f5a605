"""Row-wise (per-token) dynamic quantization to FP8 e4m3 or INT8.

``x_q[r, :] = cast(x[r, :] / s[r])`` with ``s[r] = max(absmax(x[r, :]), EPS) / QMAX``:
QMAX is 448 for FP8 e4m3 (``torch.float8_e4m3fn``, the largest finite value) and 127
for INT8 (symmetric, -128 unused so negation is exact). FP8 casts round to nearest
even after clamping to +-448; INT8 rounds half away from zero (the reference does
the same, so kernel and reference agree bit for bit away from fp32 division ties).

This is the activation side of the W8A8 GEMMs (``kernels.quant_gemm``). The target
design fuses it into the producer of the activation (``kernels.adaln.adaln_modulate_quantize``
emits the adaLN-modulated ``h`` already quantized, with its per-token scales, through
``codes_of`` below), so this standalone kernel is the fallback for inputs that no fused
producer writes (attention output, the SwiGLU hidden state, the time token).

Also here: per-output-channel weight quantization (plain PyTorch, done once at load).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiox_engine.kernels._dispatch import check_float, check_last_dim_contiguous, interpret_mode, next_pow2, use_triton

# Format name -> (storage dtype, largest representable magnitude used for the scale).
FORMATS: dict[str, tuple[torch.dtype, float]] = {
    "fp8_e4m3": (torch.float8_e4m3fn, 448.0),
    "int8": (torch.int8, 127.0),
}
# Floor on a row's absmax: an all-zero row gets a tiny scale and quantizes to zeros
# instead of dividing by zero.
EPS = 1e-12


def format_of(dtype: torch.dtype) -> str:
    """The format name (``"fp8_e4m3"`` or ``"int8"``) of a quantized storage dtype."""
    for name, (dt, _) in FORMATS.items():
        if dt == dtype:
            return name
    raise ValueError(f"{dtype} is not a quantized storage dtype; expected one of "
                     f"{[str(d) for d, _ in FORMATS.values()]}")


def format_spec(fmt: str) -> tuple[torch.dtype, float]:
    """(storage dtype, QMAX) of a format name; ValueError naming the known ones otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; expected one of {list(FORMATS)}")
    return FORMATS[fmt]


def _cast(v: torch.Tensor, fmt: str) -> torch.Tensor:
    """fp32 values already divided by their scale -> storage dtype (clamp, then round)."""
    dtype, qmax = format_spec(fmt)
    v = v.clamp(-qmax, qmax)
    if fmt == "int8":
        v = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return v.to(dtype)


def quantize_rows_reference(x: torch.Tensor, fmt: str = "fp8_e4m3") -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch of ``quantize_rows``: (..., K) -> ((..., K) quantized, (...) fp32 scales)."""
    _, qmax = format_spec(fmt)
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp_min(EPS) / qmax
    return _cast(xf / scale[..., None], fmt), scale


def quantize_per_channel(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantization of a weight ``(N, ...)``.

    One fp32 scale per slice ``w[n]`` (absmax over every other dim, so a Conv1d weight
    (Cout, Cin, 3) gets one scale per output channel across all taps). Returns
    ``(w_q, scale)`` with ``w_q`` shaped like ``w`` and ``scale`` (N,).
    """
    if w.dim() < 2:
        raise ValueError(f"weight must have an output-channel dim and more, got shape {tuple(w.shape)}")
    _, qmax = format_spec(fmt)
    wf = w.detach().float()
    scale = wf.abs().flatten(1).amax(dim=1).clamp_min(EPS) / qmax
    view = (-1,) + (1,) * (w.dim() - 1)
    return _cast(wf / scale.view(view), fmt), scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``q * scale`` for a weight (N, ...) quantized by ``quantize_per_channel``."""
    return q.float() * scale.float().view((-1,) + (1,) * (q.dim() - 1))


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``q * scale[..., None]`` for row-quantized (..., K) activations."""
    return q.float() * scale.float()[..., None]


@triton.jit
def round_to_e4m3_grid(v):
    """Round fp32 ``v`` (already clamped to +-448) to the nearest FP8 e4m3 value, ties to even.

    Only for the interpreter: its fp32 -> fp8 cast drops the carry when rounding up
    crosses a power of two (124.3 -> 64 instead of 128). After this, the cast is exact.
    Normal range: RNE on the fp32 bits down to 3 mantissa bits (the carry propagates
    into the exponent). Below 2^-6 (subnormal e4m3, spacing 2^-9): add and subtract
    1.5 * 2^14, whose fp32 spacing is 2^-9, so fp32 addition does the RNE.
    """
    bits = v.to(tl.int32, bitcast=True)
    lsb = (bits >> 20) & 1
    normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)
    subnormal = (v + 24576.0) - 24576.0
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


@triton.jit
def codes_of(x, scale, QMAX: tl.constexpr, IS_INT8: tl.constexpr, FP8_ROUND_FIX: tl.constexpr):
    """fp32 ``x`` [rows, cols] and its rows' scales [rows] -> fp32 codes ready to cast to
    the storage dtype: ``x / scale`` clamped to +-QMAX, then rounded as ``_cast`` does
    (INT8 half away from zero; FP8 onto the e4m3 grid when the cast itself cannot)."""
    v = tl.minimum(tl.maximum(x / scale[:, None], -QMAX), QMAX)
    if IS_INT8:
        v = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(-v + 0.5))
    elif FP8_ROUND_FIX:
        v = round_to_e4m3_grid(v)
    return v


@triton.jit
def _quantize_rows_fwd(
    X, Q, S,
    M, K, stride_x,
    QMAX: tl.constexpr,
    EPS_: tl.constexpr,
    IS_INT8: tl.constexpr,
    FP8_ROUND_FIX: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # BLOCK_ROWS rows per program; two passes over K (absmax, then cast) so rows longer
    # than one block work; at the DiT's K (<= 4096) the second pass hits L2.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < M
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs
        m = row_ok[:, None] & (cols < K)[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    scale = tl.maximum(amax, EPS_) / QMAX
    tl.store(S + rows, scale, mask=row_ok)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs
        m = row_ok[:, None] & (cols < K)[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        v = codes_of(x, scale, QMAX, IS_INT8, FP8_ROUND_FIX)
        tl.store(Q + rows[:, None] * K + cols[None, :], v.to(Q.dtype.element_ty), mask=m)


def _config(M: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_K, num_warps). A row of 1536-4096 bytes in, half out: memory
    bound, so aim for 16-byte loads and a few rows per program."""
    block_k = min(next_pow2(K), 4096)
    if interpret_mode():
        return min(next_pow2(M), max(1, 65536 // block_k)), block_k, 4
    block_rows = max(1, 2048 // block_k)
    return block_rows, block_k, 4 if block_rows * block_k <= 2048 else 8


def quantize_rows(x: torch.Tensor, fmt: str = "fp8_e4m3") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token dynamic quantization of x (..., K).

    Returns ``(x_q, scale)``: x_q (..., K) contiguous in the format's dtype
    (``torch.float8_e4m3fn`` or ``torch.int8``), scale (...) fp32 with
    ``x ~= x_q * scale[..., None]``.
    """
    dtype, qmax = format_spec(fmt)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must be (..., K) with K > 0, got shape {tuple(x.shape)}")
    check_float("x", x)
    if not use_triton(x):
        return quantize_rows_reference(x, fmt)
    lead, K = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, K)  # a view whenever the rows are evenly strided
    check_last_dim_contiguous("x", x2)
    M = x2.shape[0]
    q = torch.empty((M, K), device=x.device, dtype=dtype)
    s = torch.empty((M,), device=x.device, dtype=torch.float32)
    if M:
        block_rows, block_k, num_warps = _config(M, K)
        _quantize_rows_fwd[(triton.cdiv(M, block_rows),)](
            x2, q, s, M, K, x2.stride(0),
            QMAX=qmax, EPS_=EPS, IS_INT8=fmt == "int8",
            FP8_ROUND_FIX=interpret_mode(),
            BLOCK_ROWS=block_rows, BLOCK_K=block_k, num_warps=num_warps,
        )
    return q.view(*lead, K), s.view(lead)
