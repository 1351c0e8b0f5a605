"""SnakeBeta activation with log-scale parameters, one read and one write per element.

``y = x + 1/(exp(beta) + 1e-9) * sin(exp(alpha) * x)^2`` for x (B, C, T) and per-channel
alpha, beta (C,). Each program handles one BLOCK of one (b, c) row, so the two
per-channel exponentials are computed once per program, not per element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiox_engine.kernels._dispatch import (
    check_float,
    check_last_dim_contiguous,
    check_out,
    check_same_device_dtype,
    copy_into,
    interpret_mode,
    next_pow2,
    use_triton,
)


@triton.jit
def _snake_beta_fwd(
    X, ALPHA, BETA, OUT,
    C, T,
    stride_x_b, stride_x_c,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * C + c
    b = row // C
    c = row % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < T
    freq = tl.exp(tl.load(ALPHA + c).to(tl.float32))
    inv_mag = 1.0 / (tl.exp(tl.load(BETA + c).to(tl.float32)) + 1e-9)
    x = tl.load(X + b * stride_x_b + c * stride_x_c + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sin(freq * x)
    y = x + inv_mag * s * s
    tl.store(OUT + row * T + offs, y.to(OUT.dtype.element_ty), mask=mask)


def snake_beta_reference(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch, fp32 math: ``x + 1/(exp(beta)+1e-9) * sin(exp(alpha) x)^2``."""
    xf = x.float()
    a = alpha.float().exp()[None, :, None]
    inv = 1.0 / (beta.float().exp()[None, :, None] + 1e-9)
    return (xf + inv * torch.sin(a * xf).pow(2)).to(x.dtype)


def _config(T: int) -> tuple[int, int]:
    """(BLOCK, num_warps), 8-16 elements per thread.

    Loads are 16-byte vectors only when T % 16 == 0 (row starts aligned, mask uniform);
    the VAE's odd lengths (474, 242550) get coalesced 4-byte fp32 accesses instead. A
    flat layout would vectorise but needs a per-element div/mod for the channel, which
    costs more than it saves at ~30 flops per element. To tune on H100: BLOCK 2048 vs
    4096 for the long rows, 4 vs 8 warps, and padding T to 16 in the decoder's buffers.
    """
    if interpret_mode():
        return min(8192, next_pow2(T)), 4
    block = min(4096, max(128, next_pow2(T)))
    return block, max(1, min(8, block // 512))


def snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """SnakeBeta over x (B, C, T) with log-scale alpha, beta (C,). Returns (B, C, T)."""
    if x.dim() != 3:
        raise ValueError(f"x must be (B, C, T), got shape {tuple(x.shape)}")
    check_float("x", x)
    check_last_dim_contiguous("x", x)
    B, C, T = x.shape
    for name, p in (("alpha", alpha), ("beta", beta)):
        if tuple(p.shape) != (C,):
            raise ValueError(f"{name} must be (C,) = ({C},), got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
        check_float(name, p)
    check_same_device_dtype(alpha, beta=beta)
    o = check_out(out, (B, C, T), x)
    if not use_triton(x):
        return copy_into(out, snake_beta_reference(x, alpha, beta))
    if B * C * T == 0:
        return o
    block, num_warps = _config(T)
    grid = (B * C, triton.cdiv(T, block))
    if grid[1] > 65535:
        raise ValueError(f"T={T} too long for one launch (at most {65535 * block})")
    _snake_beta_fwd[grid](
        x, alpha.contiguous(), beta.contiguous(), o,
        C, T, x.stride(0), x.stride(1),
        BLOCK=block, num_warps=num_warps,
    )
    return o
