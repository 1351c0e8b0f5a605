"""Scaled FP8 / INT8 GEMMs with fused epilogues: the quantized DiT's linear and k=3 conv layers.

Two ops share one kernel:

- ``scaled_mm(a, a_scale, w_q, w_scale, bias)``: ``y[m, n] = sum_k a[m, k] w[n, k]`` for
  a (..., K) and a weight (N, K) stored K-contiguous (the ``nn.Linear`` layout, which is
  also the column-major B operand ``torch._scaled_mm`` wants, so both paths share one
  weight buffer).
- ``scaled_conv1d_k3(a, a_scale, w_q, w_scale, bias)``: the implicit-GEMM channels-last
  Conv1d (kernel 3, padding 1) over a (B, T, Cin); the weight is packed
  (``pack_quant_conv_weight``) tap-major as (3, Cout, Cin), i.e. three K-contiguous
  (Cout, Cin) matrices. Each output row reads rows t-1, t, t+1 of its own sequence
  straight from memory (zero outside 0..T-1, never across batch entries).

Operands and scales:
- W8A8: ``a`` is FP8 e4m3 or INT8 with per-token fp32 scales ``a_scale`` (a.shape[:-1])
  from ``kernels.quant_rows.quantize_rows``; the weight has the same format and one
  fp32 scale per output channel. INT8 x INT8 accumulates in int32, FP8 x FP8 in fp32.
  In the conv, the three taps read three different tokens with three different
  scales, so each tap's partial sum is rescaled by its own token scales before it is
  added (one extra [BLOCK_M, BLOCK_N] FMA per tap, not per K-step).
- Weight-only: ``a`` is fp32/fp16/bf16 and ``a_scale`` is None; the int8 (or fp8) weight
  tile is upcast to ``a``'s dtype in registers, and the per-channel scale is applied once
  in the epilogue (it factors out of the K sum).

Epilogues (``tl.constexpr`` switches, the same set as ``kernels.conv1d_k3``), after the
scales and bias:
- ``"none"``: ``y = acc * sa * sw + bias``
- ``"swiglu"``: ``silu(a @ W1) * (a @ W3)``, both accumulators fed from ONE pass over a;
  W1 and W3 each have their own per-channel scales; no bias (the DiT's FFN has none).
- ``"gated_residual"``: ``residual + y * gate``, gate (..., N) per token or (B, 1, N)
  per sample; residual and gate may be strided views with a contiguous last dim.

Under ``TRITON_INTERPRET=1`` (CPU tests) operand tiles are upcast to fp32 before
``tl.dot`` (a constexpr flag); on a GPU the dot runs on the FP8/INT8 tensor cores.
Plain pointer arithmetic only (no ``tl.make_block_ptr``), so Triton 3.6-3.9 all work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from audiox_engine.kernels._dispatch import check_last_dim_contiguous, dot_in_fp32, interpret_mode, next_pow2, use_triton
from audiox_engine.kernels.quant_rows import dequantize_per_channel, dequantize_rows, format_of

EPILOGUES = {"none": 0, "swiglu": 1, "gated_residual": 2}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _load_weight(ptrs, mask, IS_FP8: tl.constexpr):
    # FP8 tensors travel as int8 views and are bitcast here: a masked load's zero fill
    # then needs no fp8 constant (which the interpreter cannot build); 0x00 is +0.0.
    w = tl.load(ptrs, mask=mask, other=0)
    if IS_FP8:
        w = w.to(tl.float8e4nv, bitcast=True)
    return w


@triton.jit
def _scaled_gemm_fwd(
    A, A_SCALE, W, W_SCALE, W3, W3_SCALE, BIAS, RES, GATE, OUT,
    M, T, K, N,
    stride_a_b, stride_a_t,
    stride_s_b, stride_s_t,
    stride_res_b, stride_res_t,
    stride_g_b, stride_g_t,
    TAPS: tl.constexpr,
    A_QUANT: tl.constexpr,
    A_FP8: tl.constexpr,
    W_FP8: tl.constexpr,
    ACC_INT: tl.constexpr,
    EPILOGUE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # pid_m varies fastest: programs running together share a weight column block,
    # the large operand, so it is read from DRAM about once.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_m
    pid_n = pid // num_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    b = (rows // T).to(tl.int64)
    t = rows % T
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_cols = offs_n.to(tl.int64)[None, :] * K
    offs_k = tl.arange(0, BLOCK_K)

    acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if EPILOGUE == 1:
        acc3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    for tap in tl.static_range(TAPS):
        src_t = t + (tap - TAPS // 2)
        src_ok = row_ok & (src_t >= 0) & (src_t < T)
        a_row = A + b * stride_a_b + src_t.to(tl.int64) * stride_a_t
        w_tap = tap * N * K
        if ACC_INT:
            part1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
            if EPILOGUE == 1:
                part3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        else:
            part1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            if EPILOGUE == 1:
                part3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + offs_k
            c_ok = cols < K
            a = tl.load(a_row[:, None] + cols[None, :], mask=src_ok[:, None] & c_ok[None, :], other=0)
            if A_FP8:
                a = a.to(tl.float8e4nv, bitcast=True)
            if DOT_FP32:
                a = a.to(tl.float32)
            w_off = w_tap + w_cols + cols[:, None]  # [BLOCK_K, BLOCK_N] tile of a (N, K) matrix
            w_mask = c_ok[:, None] & n_ok[None, :]
            # W8A8: same dtype as a, a no-op; weight-only: int8 -> a's float dtype.
            w1 = _load_weight(W + w_off, w_mask, W_FP8).to(a.dtype)
            part1 = tl.dot(a, w1, part1, input_precision=PRECISION)
            if EPILOGUE == 1:
                w3 = _load_weight(W3 + w_off, w_mask, W_FP8).to(a.dtype)
                part3 = tl.dot(a, w3, part3, input_precision=PRECISION)
        if A_QUANT:
            # Rows outside the sequence load scale 0, on top of their zero operands.
            sa = tl.load(A_SCALE + b * stride_s_b + src_t.to(tl.int64) * stride_s_t,
                         mask=src_ok, other=0.0)
            acc1 += part1.to(tl.float32) * sa[:, None]
            if EPILOGUE == 1:
                acc3 += part3.to(tl.float32) * sa[:, None]
        else:
            acc1 += part1.to(tl.float32)
            if EPILOGUE == 1:
                acc3 += part3.to(tl.float32)

    acc1 = acc1 * tl.load(W_SCALE + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc1 += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:
        acc3 = acc3 * tl.load(W3_SCALE + offs_n, mask=n_ok, other=0.0)[None, :]
        acc1 = acc1 * tl.sigmoid(acc1) * acc3
    out_mask = row_ok[:, None] & n_ok[None, :]
    if EPILOGUE == 2:
        t64 = t.to(tl.int64)
        gate = tl.load(GATE + (b * stride_g_b + t64 * stride_g_t)[:, None] + offs_n[None, :],
                       mask=out_mask, other=0.0).to(tl.float32)
        res = tl.load(RES + (b * stride_res_b + t64 * stride_res_t)[:, None] + offs_n[None, :],
                      mask=out_mask, other=0.0).to(tl.float32)
        acc1 = res + acc1 * gate
    out_ptrs = OUT + rows.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc1.to(OUT.dtype.element_ty), mask=out_mask)


def pack_quant_conv_weight(w_q: torch.Tensor) -> torch.Tensor:
    """Quantized (Cout, Cin, 3) Conv1d weight -> (3, Cout, Cin) contiguous (tap-major,
    Cin contiguous: three K-major GEMM B operands). Done once at quantization time."""
    if w_q.dim() != 3 or w_q.shape[2] != 3:
        raise ValueError(f"weight must be (Cout, Cin, 3), got {tuple(w_q.shape)}")
    return w_q.permute(2, 0, 1).contiguous()


def unpack_quant_conv_weight(w_packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_quant_conv_weight``: (3, Cout, Cin) -> (Cout, Cin, 3) view."""
    return w_packed.permute(1, 2, 0)


# ---------------------------------------------------------------------------------------
# References: dequantize to fp32, then the plain-PyTorch op.
# ---------------------------------------------------------------------------------------

def _dequant_a(a: torch.Tensor, a_scale: torch.Tensor | None) -> torch.Tensor:
    return a.float() if a_scale is None else dequantize_rows(a, a_scale)


def _epilogue_reference(y1, y3, bias, residual, gate, epilogue, out_dtype):
    if bias is not None:
        y1 = y1 + bias.float()
    if epilogue == "swiglu":
        y1 = F.silu(y1) * y3
    elif epilogue == "gated_residual":
        y1 = residual.float() + y1 * gate.float()
    return y1.to(out_dtype)


def scaled_mm_reference(a, a_scale, w_q, w_scale, bias=None, *, epilogue="none", w3_q=None,
                        w3_scale=None, residual=None, gate=None, out_dtype=None):
    """Plain PyTorch of ``scaled_mm``: dequantized operands, fp32 matmul, epilogue."""
    out_dtype = _out_dtype(a, residual, out_dtype)
    af = _dequant_a(a, a_scale)
    y1 = af @ dequantize_per_channel(w_q, w_scale).T
    y3 = af @ dequantize_per_channel(w3_q, w3_scale).T if epilogue == "swiglu" else None
    return _epilogue_reference(y1, y3, bias, residual, gate, epilogue, out_dtype)


def scaled_conv1d_k3_reference(a, a_scale, w_packed, w_scale, bias=None, *, epilogue="none",
                               w3_packed=None, w3_scale=None, residual=None, gate=None,
                               out_dtype=None):
    """Plain PyTorch of ``scaled_conv1d_k3``: dequantize, ``F.conv1d`` in fp32, epilogue."""
    out_dtype = _out_dtype(a, residual, out_dtype)
    af = _dequant_a(a, a_scale).transpose(1, 2)

    def conv(wp, ws):
        w = dequantize_per_channel(unpack_quant_conv_weight(wp), ws)
        return F.conv1d(af, w, padding=1).transpose(1, 2)

    y3 = conv(w3_packed, w3_scale) if epilogue == "swiglu" else None
    return _epilogue_reference(conv(w_packed, w_scale), y3, bias, residual, gate, epilogue, out_dtype)


# ---------------------------------------------------------------------------------------
# Checks and launcher.
# ---------------------------------------------------------------------------------------

def _out_dtype(a, residual, out_dtype):
    if out_dtype is not None:
        return out_dtype
    if a.dtype in FLOAT_DTYPES:
        return a.dtype
    if residual is not None:
        return residual.dtype
    return torch.bfloat16


def _check_operands(a, a_scale, weights: dict, n_dim: int, k_dim: int, k_expected: int,
                    bias, epilogue) -> int:
    """Validate a, its scale and the weights; return N."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}; expected one of {list(EPILOGUES)}")
    check_last_dim_contiguous("a", a)
    if a_scale is None:
        if a.dtype not in FLOAT_DTYPES:
            raise ValueError(f"a is {a.dtype}: a quantized activation needs its per-token a_scale "
                             "(weight-only mode takes a float32/float16/bfloat16 a)")
    else:
        format_of(a.dtype)  # raises naming the dtype
        if tuple(a_scale.shape) != tuple(a.shape[:-1]):
            raise ValueError(f"a_scale must be a.shape[:-1] = {tuple(a.shape[:-1])} "
                             f"(one scale per token), got {tuple(a_scale.shape)}")
        if a_scale.dtype != torch.float32:
            raise ValueError(f"a_scale must be float32, got {a_scale.dtype}")
    n = None
    for name, (w, s) in weights.items():
        if w is None or s is None:
            raise ValueError(f"epilogue {epilogue!r} needs {name} and its scale")
        wfmt = format_of(w.dtype)
        if a_scale is not None and w.dtype != a.dtype:
            raise ValueError(f"{name} is {w.dtype} ({wfmt}) but a is {a.dtype}: W8A8 needs "
                             "both operands in the same format")
        if w.shape[k_dim] != k_expected:
            raise ValueError(f"{name} has shape {tuple(w.shape)}; its K dim ({k_dim}) must be "
                             f"{k_expected} to match a {tuple(a.shape)}")
        if not w.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if n is not None and w.shape[n_dim] != n:
            raise ValueError(f"weights disagree on N: {n} vs {w.shape[n_dim]}")
        n = w.shape[n_dim]
        if tuple(s.shape) != (n,) or s.dtype != torch.float32:
            raise ValueError(f"{name}'s scale must be float32 ({n},), got {s.dtype} {tuple(s.shape)}")
        for t_name, t in (("a", a), ("a_scale", a_scale), ("scale", s)):
            if t is not None and t.device != w.device:
                raise ValueError(f"{name} is on {w.device} but {t_name} is on {t.device}")
    if bias is not None:
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must be ({n},), got {tuple(bias.shape)}")
        if epilogue == "swiglu":
            raise ValueError("the swiglu epilogue takes no bias (the DiT's FFN has none)")
    return n


def _rows_3d(name: str, t: torch.Tensor | None, B: int, T: int, N: int, allow_per_sample: bool):
    """View ``t`` (shaped like the output, or (B, 1, N) when allowed) as (B, T, N) strided."""
    if t is None:
        raise ValueError(f"the gated_residual epilogue needs {name}")
    t3 = t if t.dim() == 3 else t.reshape(B, -1, t.shape[-1]) if t.dim() >= 2 else t
    ok_t = (T, 1) if allow_per_sample else (T,)
    if t3.dim() != 3 or t3.shape[0] != B or t3.shape[2] != N or t3.shape[1] not in ok_t:
        raise ValueError(f"{name} must match the output {(B, T, N)}"
                         + (" or be per sample (B, 1, N)" if allow_per_sample else "")
                         + f", got {tuple(t.shape)}")
    check_last_dim_contiguous(name, t3)
    return t3.expand(B, T, N)


def _config(M: int, N: int, K: int, swiglu: bool, one_byte: bool):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): fixed table, no autotune.

    One-byte operands take BLOCK_K=128 (128-byte rows, the FP8/INT8 wgmma K granule is
    32). To tune on H100 at the real shapes (M = B*237, K/N 1536/4096/4608/9216):
    BLOCK_N 64 vs 128 for SwiGLU (two accumulators), num_stages 3/4, and BLOCK_M=64 or
    split-K when B=1 leaves fewer programs than the 132 SMs.
    """
    if interpret_mode():
        # Whole problem in few programs: the interpreter pays per program step.
        return (min(256, max(16, next_pow2(M))), min(256, max(16, next_pow2(N))),
                min(256, max(16, next_pow2(K))), 4, 1)
    block_k = 128 if one_byte else 64
    block_m = 128 if M >= 1024 else 64
    if swiglu:
        return block_m, 64, block_k, 8, 3
    return block_m, 128, block_k, 8, 4


def _is_fp8(t: torch.Tensor) -> bool:
    return t.dtype == torch.float8_e4m3fn


def _as_int8(t: torch.Tensor) -> torch.Tensor:
    """FP8 tensors are passed to the kernel as int8 views (see ``_load_weight``)."""
    return t.view(torch.int8) if _is_fp8(t) else t


def _launch(a3, a_scale2, w1, s1, w3, s3, bias, res3, gate3, out3, taps, epilogue):
    B, T, K = a3.shape
    N = out3.shape[2]
    M = B * T
    if M == 0 or N == 0:
        return out3
    a_quant = a_scale2 is not None
    dot_fp32 = dot_in_fp32()
    acc_int = a_quant and a3.dtype == torch.int8 and not dot_fp32
    ep = EPILOGUES[epilogue]
    block_m, block_n, block_k, num_warps, num_stages = _config(
        M, N, K, ep == 1, a3.element_size() == 1)
    # Exact fp32 products in the interpreter; elsewhere Triton's default (tf32 for fp32
    # operands of the weight-only path; ignored for fp8/int8/half operands).
    precision = "ieee" if dot_fp32 else "tf32"
    sc = a_scale2 if a_quant else out3
    res = res3 if res3 is not None else out3
    g = gate3 if gate3 is not None else out3
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    w3 = w3 if w3 is not None else w1
    _scaled_gemm_fwd[grid](
        _as_int8(a3), sc, _as_int8(w1), s1, _as_int8(w3), s3 if s3 is not None else s1,
        bias if bias is not None else s1, res, g, out3,
        M, T, K, N,
        a3.stride(0), a3.stride(1),
        sc.stride(0), sc.stride(1),
        res.stride(0), res.stride(1),
        g.stride(0), g.stride(1),
        TAPS=taps, A_QUANT=a_quant, A_FP8=_is_fp8(a3), W_FP8=_is_fp8(w1), ACC_INT=acc_int,
        EPILOGUE=ep, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_FP32=dot_fp32, PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out3


def _check_out(out, shape, dtype, device):
    if out is None:
        return torch.empty(shape, device=device, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"out must be {dtype} {tuple(shape)} on {device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    return out


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
    if a.dim() < 1:
        raise ValueError("a must be (..., K), got a scalar")
    if w_q.dim() != 2:
        raise ValueError(f"w_q must be (N, K), got shape {tuple(w_q.shape)}")
    weights = {"w_q": (w_q, w_scale)}
    if epilogue == "swiglu":
        weights["w3_q"] = (w3_q, w3_scale)
    N = _check_operands(a, a_scale, weights, 0, 1, a.shape[-1], bias, epilogue)
    out_dtype = _out_dtype(a, residual, out_dtype)
    lead = tuple(a.shape[:-1])
    if not use_triton(a, w_q):
        y = scaled_mm_reference(a, a_scale, w_q, w_scale, bias, epilogue=epilogue, w3_q=w3_q,
                                w3_scale=w3_scale, residual=residual, gate=gate, out_dtype=out_dtype)
        return y if out is None else out.copy_(y)
    # Everything runs as (B, T, .) rows; a 2-D or >3-D a becomes one "batch" of M rows.
    a3 = a if a.dim() == 3 else a.reshape(1, -1, a.shape[-1])
    B, T, _ = a3.shape
    s2 = None if a_scale is None else a_scale.reshape(B, T)
    res3 = gate3 = None
    if epilogue == "gated_residual":
        res3 = _rows_3d("residual", residual, B, T, N, False)
        gate3 = _rows_3d("gate", gate, B, T, N, a.dim() == 3)
    o = _check_out(out, lead + (N,), out_dtype, a.device)
    _launch(a3, s2, w_q, w_scale, w3_q, w3_scale, bias, res3, gate3, o.view(B, T, N), 1, epilogue)
    return o


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
    if a.dim() != 3:
        raise ValueError(f"a must be (B, T, Cin), got shape {tuple(a.shape)}")
    if w_packed.dim() != 3 or w_packed.shape[0] != 3:
        raise ValueError(f"w_packed must be (3, Cout, Cin) (see pack_quant_conv_weight), "
                         f"got {tuple(w_packed.shape)}")
    weights = {"w_packed": (w_packed, w_scale)}
    if epilogue == "swiglu":
        if w3_packed is not None and (w3_packed.dim() != 3 or w3_packed.shape[0] != 3):
            raise ValueError(f"w3_packed must be (3, Cout, Cin), got {tuple(w3_packed.shape)}")
        weights["w3_packed"] = (w3_packed, w3_scale)
    N = _check_operands(a, a_scale, weights, 1, 2, a.shape[-1], bias, epilogue)
    out_dtype = _out_dtype(a, residual, out_dtype)
    B, T, _ = a.shape
    if not use_triton(a, w_packed):
        y = scaled_conv1d_k3_reference(a, a_scale, w_packed, w_scale, bias, epilogue=epilogue,
                                       w3_packed=w3_packed, w3_scale=w3_scale, residual=residual,
                                       gate=gate, out_dtype=out_dtype)
        return y if out is None else out.copy_(y)
    res3 = gate3 = None
    if epilogue == "gated_residual":
        res3 = _rows_3d("residual", residual, B, T, N, False)
        gate3 = _rows_3d("gate", gate, B, T, N, True)
    o = _check_out(out, (B, T, N), out_dtype, a.device)
    _launch(a, a_scale, w_packed, w_scale, w3_packed, w3_scale, bias, res3, gate3, o, 3, epilogue)
    return o
