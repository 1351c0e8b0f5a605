"""Channels-last Conv1d, kernel 3, padding 1, as an implicit GEMM with fused epilogues.

``out[b, t, o] = sum_k sum_c x[b, t+k-1, c] * W[o, c, k]`` (zero outside 0..T-1), with
x (B, T, Cin) channels-last. Rows are the B*T (b, t) pairs; the reduction runs over the
three taps and Cin, loading shifted rows of x straight from memory (no unfolded copy),
masked at each sequence's edges so taps never leak across batch entries.

The weight is packed once (``pack_conv_weight``) from PyTorch's (Cout, Cin, 3) into
(3, Cin, Cout): tap-major, Cout contiguous, so each K-step reads a [BLOCK_K, BLOCK_N]
tile with unit stride along N.

Epilogues (``tl.constexpr`` switches over one kernel):
- ``conv1d_k3(x, w, bias)``: plain conv (+ optional bias (Cout,)).
- ``conv1d_k3_swiglu(x, w1, w3)``: ``silu(conv(x, W1)) * conv(x, W3)``; both
  accumulators fed from ONE pass over x.
- ``conv1d_k3_gated_residual(x, w, residual, gate, bias)``:
  ``residual + (conv(x, W) + bias) * gate``; gate (B, T, Cout) or (B, 1, Cout),
  residual (B, T, Cout), both may be strided views with a contiguous last dim.
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
    dot_in_fp32,
    dot_precision,
    expand_broadcast,
    interpret_mode,
    next_pow2,
    use_triton,
)

EPILOGUE_PLAIN = 0
EPILOGUE_SWIGLU = 1
EPILOGUE_GATED_RESIDUAL = 2


@triton.jit
def _conv1d_k3_fwd(
    X, W1, W3, BIAS, RES, GATE, OUT,
    M, T, CIN, COUT,
    stride_x_b, stride_x_t,
    stride_res_b, stride_res_t,
    stride_g_b, stride_g_t,
    EPILOGUE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # pid_m varies fastest: programs running together share a weight column block,
    # which is the large operand (up to 3*4096*1536), so it is read from DRAM ~once.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_m
    pid_n = pid // num_m
    if DOT_FP32:
        dot_ty = tl.float32
    else:
        dot_ty = X.dtype.element_ty

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    b = (rows // T).to(tl.int64)
    t = rows % T
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < COUT
    offs_k = tl.arange(0, BLOCK_K)

    acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if EPILOGUE == 1:
        acc3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    for tap in tl.static_range(3):
        src_t = t + (tap - 1)
        src_ok = row_ok & (src_t >= 0) & (src_t < T)
        x_row = X + b * stride_x_b + src_t * stride_x_t
        w_tap = tap * CIN
        for c0 in range(0, CIN, BLOCK_K):
            cols = c0 + offs_k
            c_ok = cols < CIN
            a = tl.load(x_row[:, None] + cols[None, :],
                        mask=src_ok[:, None] & c_ok[None, :], other=0.0).to(dot_ty)
            w_off = (w_tap + cols[:, None]).to(tl.int64) * COUT + offs_n[None, :]
            w_mask = c_ok[:, None] & n_ok[None, :]
            w1 = tl.load(W1 + w_off, mask=w_mask, other=0.0).to(dot_ty)
            acc1 = tl.dot(a, w1, acc1, input_precision=PRECISION)
            if EPILOGUE == 1:
                w3 = tl.load(W3 + w_off, mask=w_mask, other=0.0).to(dot_ty)
                acc3 = tl.dot(a, w3, acc3, input_precision=PRECISION)

    if HAS_BIAS:
        acc1 += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:
        acc1 = acc1 * tl.sigmoid(acc1) * acc3
    out_mask = row_ok[:, None] & n_ok[None, :]
    if EPILOGUE == 2:
        t64 = t.to(tl.int64)
        gate = tl.load(GATE + (b * stride_g_b + t64 * stride_g_t)[:, None] + offs_n[None, :],
                       mask=out_mask, other=0.0).to(tl.float32)
        res = tl.load(RES + (b * stride_res_b + t64 * stride_res_t)[:, None] + offs_n[None, :],
                      mask=out_mask, other=0.0).to(tl.float32)
        acc1 = res + acc1 * gate
    out_ptrs = OUT + rows.to(tl.int64)[:, None] * COUT + offs_n[None, :]
    tl.store(out_ptrs, acc1.to(OUT.dtype.element_ty), mask=out_mask)


def pack_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3) PyTorch Conv1d weight -> (3, Cin, Cout) contiguous, done once at load."""
    if w.dim() != 3 or w.shape[2] != 3:
        raise ValueError(f"weight must be (Cout, Cin, 3), got {tuple(w.shape)}")
    return w.permute(2, 1, 0).contiguous()


def unpack_conv_weight(w_packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_conv_weight``: (3, Cin, Cout) -> (Cout, Cin, 3)."""
    return w_packed.permute(2, 1, 0)


def _conv_reference(x: torch.Tensor, w_packed: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 conv of channels-last x with a packed weight, channels-last result."""
    y = F.conv1d(x.float().transpose(1, 2), unpack_conv_weight(w_packed).float(),
                 None if bias is None else bias.float(), padding=1)
    return y.transpose(1, 2)


def conv1d_k3_reference(x, w_packed, bias=None):
    """Plain PyTorch (F.conv1d in fp32) of ``conv1d_k3``."""
    return _conv_reference(x, w_packed, bias).to(x.dtype)


def conv1d_k3_swiglu_reference(x, w1_packed, w3_packed):
    """Plain PyTorch of ``conv1d_k3_swiglu``: ``silu(conv(x, W1)) * conv(x, W3)``."""
    return (F.silu(_conv_reference(x, w1_packed)) * _conv_reference(x, w3_packed)).to(x.dtype)


def conv1d_k3_gated_residual_reference(x, w_packed, residual, gate, bias=None):
    """Plain PyTorch of ``conv1d_k3_gated_residual``: ``residual + (conv + bias) * gate``."""
    y = residual.float() + _conv_reference(x, w_packed, bias) * gate.float()
    return y.to(x.dtype)


def _check_conv_inputs(x: torch.Tensor, weights: dict[str, torch.Tensor],
                       bias: torch.Tensor | None) -> tuple[int, int, int, int]:
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, Cin), got shape {tuple(x.shape)}")
    check_float("x", x)
    check_last_dim_contiguous("x", x)
    B, T, cin = x.shape
    cout = None
    for name, w in weights.items():
        if w.dim() != 3 or w.shape[0] != 3 or w.shape[1] != cin:
            raise ValueError(f"{name} must be a packed (3, Cin={cin}, Cout) weight "
                             f"(see pack_conv_weight), got {tuple(w.shape)}")
        if not w.is_contiguous():
            raise ValueError(f"{name} must be contiguous (see pack_conv_weight)")
        if cout is not None and w.shape[2] != cout:
            raise ValueError(f"weights disagree on Cout: {cout} vs {w.shape[2]}")
        cout = w.shape[2]
    check_same_device_dtype(x, bias=bias, **weights)
    if bias is not None and (tuple(bias.shape) != (cout,) or not bias.is_contiguous()):
        raise ValueError(f"bias must be contiguous (Cout,) = ({cout},), got {tuple(bias.shape)}")
    return B, T, cin, cout


def _config(M: int, cout: int, cin: int, swiglu: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): fixed table, no autotune.

    To tune on H100 at the real shapes (M = B*237, Cin/Cout 1536/4096): BLOCK_N 64 vs
    128 for SwiGLU (two fp32 accumulators: 2*128*128 floats is 128 registers/thread at
    8 warps), num_stages 3/4, and split-K or BLOCK_M=64 when B=1 leaves the grid
    under one wave (cdiv(237,128) * 4096/128 = 64 programs for 132 SMs).
    """
    if interpret_mode():
        # Whole problem in one or few programs: the interpreter pays per step.
        return (min(64, max(16, next_pow2(M))), min(64, max(16, next_pow2(cout))),
                min(64, max(16, next_pow2(cin))), 4, 1)
    if swiglu:
        return 128, 64, 64, 8, 3
    block_m = 128 if M >= 1024 else 64
    return block_m, 128, 64, 8, 3


def _launch(x, w1, w3, bias, residual, gate, out, epilogue):
    B, T, cin = x.shape
    cout = w1.shape[2]
    M = B * T
    if M == 0 or cout == 0:
        return out
    block_m, block_n, block_k, num_warps, num_stages = _config(
        M, cout, cin, epilogue == EPILOGUE_SWIGLU)
    res = residual if residual is not None else out
    g = gate if gate is not None else out
    grid = (triton.cdiv(M, block_m) * triton.cdiv(cout, block_n),)
    _conv1d_k3_fwd[grid](
        x, w1, w3 if w3 is not None else w1, bias if bias is not None else w1, res, g, out,
        M, T, cin, cout,
        x.stride(0), x.stride(1),
        res.stride(0), res.stride(1),
        g.stride(0), g.stride(1),
        EPILOGUE=epilogue,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        DOT_FP32=dot_in_fp32(),
        PRECISION=dot_precision(x.dtype),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def conv1d_k3(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Conv1d k3 pad 1 on channels-last x (B, T, Cin) -> (B, T, Cout).

    w_packed: (3, Cin, Cout) from ``pack_conv_weight``; bias: (Cout,) or None.
    """
    B, T, _, cout = _check_conv_inputs(x, {"w_packed": w_packed}, bias)
    o = check_out(out, (B, T, cout), x)
    if not use_triton(x):
        return copy_into(out, conv1d_k3_reference(x, w_packed, bias))
    return _launch(x, w_packed, None, bias, None, None, o, EPILOGUE_PLAIN)


def conv1d_k3_swiglu(x: torch.Tensor, w1_packed: torch.Tensor, w3_packed: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(conv(x, W1)) * conv(x, W3)`` for channels-last x (B, T, Cin) -> (B, T, Cout)."""
    B, T, _, cout = _check_conv_inputs(x, {"w1_packed": w1_packed, "w3_packed": w3_packed},
                                       None)
    o = check_out(out, (B, T, cout), x)
    if not use_triton(x):
        return copy_into(out, conv1d_k3_swiglu_reference(x, w1_packed, w3_packed))
    return _launch(x, w1_packed, w3_packed, None, None, None, o, EPILOGUE_SWIGLU)


def conv1d_k3_gated_residual(x: torch.Tensor, w_packed: torch.Tensor, residual: torch.Tensor,
                             gate: torch.Tensor, bias: torch.Tensor | None = None,
                             out: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + (conv(x, W) + bias) * gate``, all (B, T, Cout) channels-last.

    gate: (B, T, Cout) or (B, 1, Cout); residual: (B, T, Cout); both may be strided
    views with a contiguous last dim.
    """
    B, T, _, cout = _check_conv_inputs(x, {"w_packed": w_packed}, bias)
    check_same_device_dtype(x, residual=residual, gate=gate)
    if tuple(residual.shape) != (B, T, cout):
        raise ValueError(f"residual must be (B, T, Cout) = {(B, T, cout)}, "
                         f"got {tuple(residual.shape)}")
    check_last_dim_contiguous("residual", residual)
    gate = expand_broadcast("gate", gate, B, T, cout)
    o = check_out(out, (B, T, cout), x)
    if not use_triton(x):
        return copy_into(out, conv1d_k3_gated_residual_reference(x, w_packed, residual, gate, bias))
    return _launch(x, w_packed, None, bias, residual, gate, o, EPILOGUE_GATED_RESIDUAL)
