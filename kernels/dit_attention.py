"""DiT self-attention from a fused qkv projection: per-head RMSNorm + RoPE + softmax attention.

``dit_attention(qkv, num_heads, cos, sin)`` takes qkv (B, N, 3*H*d) straight from the
Linear, laid out interleaved ``(heads d j)``: element ``[b, n, h*d*3 + i*3 + j]`` is q
(j=0), k (j=1) or v (j=2) of head h, dim i. Per head, q and k get a parameter-free
RMSNorm over d (``x * rsqrt(mean(x^2) + eps)``), then RoPE on the pairs (2i, 2i+1) with
caller-provided tables (``rope_tables``); then softmax attention, no mask, scale
1/sqrt(d). Output (B, N, H*d) in ``(h d)`` order.

Flash-attention style: one program per (batch*head, query block), online softmax over
key blocks, nothing but the output written to memory. The head dim is padded to a
power of two (>= 16 per half for ``tl.dot``) inside the kernel with masks: the real
model has 64 heads of dim 24, handled as 32. q and k are kept as their even and odd
halves so RoPE is elementwise and ``q.k = q_even.k_even + q_odd.k_odd`` is two dots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from audiox_engine.kernels._dispatch import (
    check_float,
    check_last_dim_contiguous,
    check_out,
    copy_into,
    dot_in_fp32,
    dot_precision,
    interpret_mode,
    next_pow2,
    use_triton,
)

MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634


@triton.jit
def _load_half(QKV, base, offs_n, N, stride_n, offs_i, d_half,
               J: tl.constexpr, PARITY: tl.constexpr):
    """Dims 2i+PARITY of q (J=0) or k (J=1) for rows offs_n, as fp32 (rows, HALF)."""
    ptrs = QKV + base + offs_n[:, None] * stride_n + (2 * offs_i[None, :] + PARITY) * 3 + J
    mask = (offs_n[:, None] < N) & (offs_i[None, :] < d_half)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_rope(TABLE, offs_n, N, stride_n, offs_i, d_half):
    mask = (offs_n[:, None] < N) & (offs_i[None, :] < d_half)
    return tl.load(TABLE + offs_n[:, None] * stride_n + offs_i[None, :], mask=mask, other=0.0)


@triton.jit
def _rms_norm_rope(even, odd, cos, sin, d, eps):
    """RMSNorm over the whole head (both halves; padding is zero) then rotate pairs."""
    ms = (tl.sum(even * even, axis=1) + tl.sum(odd * odd, axis=1)) / d
    rstd = 1.0 / tl.sqrt(ms + eps)
    even = even * rstd[:, None]
    odd = odd * rstd[:, None]
    return cos * even - sin * odd, sin * even + cos * odd


@triton.jit
def _dit_attention_fwd(
    QKV, COS, SIN, OUT,
    N, H, d, eps, qk_scale,
    stride_qkv_b, stride_qkv_n,
    stride_out_b, stride_out_n,
    stride_cos_n, stride_sin_n,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = b.to(tl.int64) * stride_qkv_b + h * 3 * d
    d_half = d // 2
    if DOT_FP32:
        dot_ty = tl.float32
    else:
        dot_ty = QKV.dtype.element_ty

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = tl.arange(0, HALF)
    offs_dv = tl.arange(0, BLOCK_DV)

    q_even = _load_half(QKV, base, offs_m, N, stride_qkv_n, offs_i, d_half, 0, 0)
    q_odd = _load_half(QKV, base, offs_m, N, stride_qkv_n, offs_i, d_half, 0, 1)
    cos_q = _load_rope(COS, offs_m, N, stride_cos_n, offs_i, d_half)
    sin_q = _load_rope(SIN, offs_m, N, stride_sin_n, offs_i, d_half)
    q_even, q_odd = _rms_norm_rope(q_even, q_odd, cos_q, sin_q, d, eps)
    # Fold softmax scale and log2(e) into q once, so the loop uses exp2 directly.
    q_even = (q_even * qk_scale).to(dot_ty)
    q_odd = (q_odd * qk_scale).to(dot_ty)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        # K is normalised and rotated per query block: at d <= 128 this is a few
        # elementwise ops per loaded element, cheaper than a separate pass to memory.
        k_even = _load_half(QKV, base, offs_n, N, stride_qkv_n, offs_i, d_half, 1, 0)
        k_odd = _load_half(QKV, base, offs_n, N, stride_qkv_n, offs_i, d_half, 1, 1)
        cos_k = _load_rope(COS, offs_n, N, stride_cos_n, offs_i, d_half)
        sin_k = _load_rope(SIN, offs_n, N, stride_sin_n, offs_i, d_half)
        k_even, k_odd = _rms_norm_rope(k_even, k_odd, cos_k, sin_k, d, eps)
        v_ptrs = QKV + base + offs_n[:, None] * stride_qkv_n + offs_dv[None, :] * 3 + 2
        v_mask = (offs_n[:, None] < N) & (offs_dv[None, :] < d)
        v = tl.load(v_ptrs, mask=v_mask, other=0.0).to(dot_ty)

        s = tl.dot(q_even, tl.trans(k_even.to(dot_ty)), input_precision=PRECISION)
        s = tl.dot(q_odd, tl.trans(k_odd.to(dot_ty)), s, input_precision=PRECISION)
        s = tl.where(offs_n[None, :] < N, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(dot_ty), v, acc, input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    out_ptrs = (OUT + b.to(tl.int64) * stride_out_b + offs_m[:, None] * stride_out_n
                + h * d + offs_dv[None, :])
    out_mask = (offs_m[:, None] < N) & (offs_dv[None, :] < d)
    tl.store(out_ptrs, acc.to(OUT.dtype.element_ty), mask=out_mask)


def rope_tables(N: int, d: int, theta: float = 10000.0,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (N, d/2) fp32 for positions 0..N-1, freqs 1/theta^(2i/d)."""
    if d % 2:
        raise ValueError(f"RoPE needs an even head dim, got {d}")
    freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
    angles = torch.arange(N, dtype=torch.float64, device=device)[:, None] * freqs[None, :]
    return angles.cos().float(), angles.sin().float()


def _head_dim(qkv: torch.Tensor, num_heads: int) -> int:
    if qkv.dim() != 3:
        raise ValueError(f"qkv must be (B, N, 3*H*d), got shape {tuple(qkv.shape)}")
    if num_heads <= 0 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv last dim {qkv.shape[-1]} is not divisible by 3*num_heads "
                         f"= {3 * num_heads}")
    d = qkv.shape[-1] // (3 * num_heads)
    if d % 2:
        raise ValueError(f"head dim {d} must be even for RoPE pairs")
    return d


def _rms_norm_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             eps: float) -> torch.Tensor:
    """x (B, N, H, d) fp32 -> RMSNorm over d, then RoPE on pairs (2i, 2i+1)."""
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((c * even - s * odd, s * even + c * odd), dim=-1).flatten(-2)


def dit_attention_reference(qkv: torch.Tensor, num_heads: int, cos: torch.Tensor,
                            sin: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Explicit PyTorch: split, RMSNorm, RoPE (in fp32), then SDPA in qkv's dtype."""
    B, N, _ = qkv.shape
    d = _head_dim(qkv, num_heads)
    q, k, v = qkv.view(B, N, num_heads, d, 3).unbind(-1)
    q = _rms_norm_rope_reference(q.float(), cos.float(), sin.float(), eps).to(qkv.dtype)
    k = _rms_norm_rope_reference(k.float(), cos.float(), sin.float(), eps).to(qkv.dtype)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                       v.transpose(1, 2).contiguous())
    return o.transpose(1, 2).reshape(B, N, num_heads * d)


def _head_blocks(d: int) -> tuple[int, int]:
    """(HALF, BLOCK_DV): padded widths of a q/k half and of v; ``tl.dot`` needs >= 16."""
    return max(16, next_pow2(d // 2)), max(16, next_pow2(d))


def _config(N: int, d: int, B: int, H: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps), a fixed table instead of autotuning.

    BLOCK_M=64 with 4 warps is the smallest query block that Hopper serves with wgmma
    (32 rows fall back to mma.sync). At B=1 the real model (64 heads of 24, N=237) then
    launches 64 * cdiv(237, 64) = 256 programs, about two per SM of an H100.

    To measure on an H100 (nothing here is timed): BLOCK_M 64 (wgmma, 256 programs)
    against 32 (mma.sync, 512 programs) at B=1, BLOCK_N 32/64, num_stages 2/3 for long N.
    """
    if interpret_mode():
        # The interpreter pays per program and per loop step: few, large blocks.
        blk = min(128, max(16, next_pow2(N)))
        return blk, blk, 4
    if d <= 64:
        return 64, 64, 4
    return 128, 64, 8


def dit_attention(qkv: torch.Tensor, num_heads: int, cos: torch.Tensor, sin: torch.Tensor,
                  eps: float = 1e-6, out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm(q), RMSNorm(k), RoPE, softmax(q k^T / sqrt(d)) v, from interleaved qkv.

    qkv: (B, N, 3*H*d), layout ``(heads d j)``; cos, sin: (N, d/2) fp32 from
    ``rope_tables``. Returns (B, N, H*d) in qkv's dtype.
    """
    d = _head_dim(qkv, num_heads)
    check_float("qkv", qkv)
    check_last_dim_contiguous("qkv", qkv)
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim {d} exceeds the kernel's limit of {MAX_HEAD_DIM}")
    B, N, _ = qkv.shape
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (N, d // 2):
            raise ValueError(f"{name} must be (N, d/2) = {(N, d // 2)}, got {tuple(t.shape)}")
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
        if t.device != qkv.device:
            raise ValueError(f"{name} is on {t.device} but qkv is on {qkv.device}")
        check_last_dim_contiguous(name, t)
    o = check_out(out, (B, N, num_heads * d), qkv)
    if not use_triton(qkv):
        return copy_into(out, dit_attention_reference(qkv, num_heads, cos, sin, eps))
    if B * N == 0:
        return o
    block_m, block_n, num_warps = _config(N, d, B, num_heads)
    half, block_dv = _head_blocks(d)
    grid = (B * num_heads, triton.cdiv(N, block_m))
    _dit_attention_fwd[grid](
        qkv, cos, sin, o,
        N, num_heads, d, eps, LOG2E / math.sqrt(d),
        qkv.stride(0), qkv.stride(1),
        o.stride(0), o.stride(1),
        cos.stride(0), sin.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HALF=half,
        BLOCK_DV=block_dv,
        DOT_FP32=dot_in_fp32(),
        PRECISION=dot_precision(qkv.dtype),
        num_warps=num_warps,
        num_stages=2,
    )
    return o
