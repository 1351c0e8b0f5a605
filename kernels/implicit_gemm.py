"""One implicit-GEMM kernel for the DiT's k=3 convs and Linears, float or FP8/INT8, fused epilogues.

``y[b, t, n] = sum_tap sum_k a[b, t + tap - TAPS//2, k] * W[tap, n, k]``, rows outside
0..T-1 reading as zero (never across batch entries). TAPS=3 is a channels-last Conv1d
(kernel 3, padding 1) over a (B, T, K=Cin); TAPS=1 is a Linear. Rows are the B*T (b, t)
pairs; every tap loads shifted rows of ``a`` straight from memory (no unfolded copy).

One weight layout for every operand type: (TAPS, N, K), K contiguous. ``pack_conv_weight``
turns PyTorch's (Cout, Cin, 3) into (3, Cout, Cin); an ``nn.Linear`` weight (N, K) is
already a (1, N, K) one. Each tap is a K-major B operand: the only form Hopper wgmma
takes for 8-bit (FP8/INT8) and tf32 operands, one of the two it takes for fp16/bf16, and
the column-major B of ``torch._scaled_mm`` (``w.t()`` of the same buffer).

Operands (``tl.constexpr`` switches, chosen by ``kernel_switches`` from the dtypes):
- float a (fp32/fp16/bf16) x float W of the same dtype;
- float a x FP8/INT8 W with one fp32 scale per output channel (weight-only): the weight
  tile is upcast to a's dtype in registers; the scale factors out of the K sum and is
  applied once in the epilogue;
- FP8 e4m3 / INT8 a with one fp32 scale per token x W in the same format (W8A8). INT8
  accumulates exactly in int32. FP8 accumulates in fp32 with ``max_num_imprecise_acc =
  BLOCK_K``: Hopper's FP8 tensor cores keep fewer accumulator bits than fp32, so without
  it the error grows over the whole K (12288 for the FFN's w2); with it every K step's
  partial sum is added to a full-precision fp32 accumulator. The taps read three tokens
  with three scales, so each tap's partial sum is rescaled by its rows' scales before it
  is added (one [BLOCK_M, BLOCK_N] FMA per tap).
fp32 operands use ``input_precision="ieee"`` (exact fp32 products, never TF32).

Epilogues (``EPILOGUES``; the kernel's ``EPILOGUE`` is the index), after the weight
scales and the bias: ``"none"``; ``"swiglu"``: ``silu(y1) * y3`` with W1 and W3 both fed
by ONE pass over a; ``"gated_residual"``: ``residual + y * gate``, gate per token or per
sample (stride-0 rows), residual and gate strided views with a contiguous last dim.

Launch configs: ``gemm_config`` (a fixed table, no autotune). Under ``TRITON_INTERPRET=1``
operand tiles are upcast to fp32 before ``tl.dot`` (the interpreter's half-precision dot
is wrong) and FP8 tensors travel as int8 views. Plain pointer arithmetic only (no
``tl.make_block_ptr``), so Triton 3.6-3.9 all compile it.
"""

from __future__ import annotations

from typing import NamedTuple

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
    load_rows_f32,
    next_pow2,
    sm_count,
    use_triton,
)
from audiox_engine.kernels.quant_rows import dequantize_rows, format_of

EPILOGUES = ("none", "swiglu", "gated_residual")
SWIGLU = EPILOGUES.index("swiglu")
GATED_RESIDUAL = EPILOGUES.index("gated_residual")
FP8 = torch.float8_e4m3fn


def pack_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3) Conv1d weight, float or quantized -> (3, Cout, Cin) contiguous
    (tap-major, Cin contiguous: three K-major GEMM B operands). Done once at load."""
    if w.dim() != 3 or w.shape[2] != 3:
        raise ValueError(f"weight must be (Cout, Cin, 3), got {tuple(w.shape)}")
    return w.permute(2, 0, 1).contiguous()


def unpack_conv_weight(w_packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_conv_weight``: (3, Cout, Cin) -> (Cout, Cin, 3) view."""
    return w_packed.permute(1, 2, 0)


@triton.jit
def _load_tile(ptrs, mask, FP8_AS_INT8: tl.constexpr):
    # FP8 tensors arrive as int8 views under the interpreter, which cannot build the fp8
    # zero of a masked load; the bits 0x00 are +0.0.
    x = tl.load(ptrs, mask=mask, other=0.0)
    if FP8_AS_INT8:
        x = x.to(tl.float8e4nv, bitcast=True)
    return x


@triton.jit
def _implicit_gemm_fwd(
    A, A_SCALE, W1, W1_SCALE, W3, W3_SCALE, BIAS, RES, GATE, OUT,
    M, T, K, N,
    stride_a_b, stride_a_t,
    stride_s_b, stride_s_t,
    stride_res_b, stride_res_t,
    stride_g_b, stride_g_t,
    TAPS: tl.constexpr,
    A_SCALED: tl.constexpr,
    W_SCALED: tl.constexpr,
    A_FP8_AS_INT8: tl.constexpr,
    W_FP8_AS_INT8: tl.constexpr,
    ACC_INT: tl.constexpr,
    EPILOGUE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    MAX_IMPRECISE_ACC: tl.constexpr,
):
    # pid_m varies fastest: programs running together share a weight column block, the
    # large operand (up to 3*4096*1536), so it is read from DRAM about once.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_m
    pid_n = pid // num_m
    if ACC_INT:
        part_ty = tl.int32
    else:
        part_ty = tl.float32

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    b = (rows // T).to(tl.int64)
    t = (rows % T).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_cols = offs_n.to(tl.int64)[None, :] * K
    offs_k = tl.arange(0, BLOCK_K)

    acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for tap in tl.static_range(TAPS):
        src_t = t + (tap - TAPS // 2)
        src_ok = row_ok & (src_t >= 0) & (src_t < T)
        a_rows = A + b * stride_a_b + src_t * stride_a_t
        w_tap = tap * N * K
        # Per-token scales differ per tap, so W8A8 sums each tap on its own first.
        if A_SCALED:
            part1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=part_ty)
            part3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=part_ty)
        else:
            part1 = acc1
            part3 = acc3
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + offs_k
            c_ok = cols < K
            a = _load_tile(a_rows[:, None] + cols[None, :], src_ok[:, None] & c_ok[None, :],
                           A_FP8_AS_INT8)
            if DOT_FP32:
                a = a.to(tl.float32)
            w_off = w_tap + w_cols + cols[:, None]  # [BLOCK_K, BLOCK_N] tile of an (N, K) matrix
            w_mask = c_ok[:, None] & n_ok[None, :]
            # A no-op unless the weight is quantized under a float a (weight-only).
            w1 = _load_tile(W1 + w_off, w_mask, W_FP8_AS_INT8).to(a.dtype)
            part1 = tl.dot(a, w1, part1, input_precision=PRECISION,
                           max_num_imprecise_acc=MAX_IMPRECISE_ACC, out_dtype=part_ty)
            if EPILOGUE == 1:
                w3 = _load_tile(W3 + w_off, w_mask, W_FP8_AS_INT8).to(a.dtype)
                part3 = tl.dot(a, w3, part3, input_precision=PRECISION,
                               max_num_imprecise_acc=MAX_IMPRECISE_ACC, out_dtype=part_ty)
        if A_SCALED:
            # Rows outside the sequence load scale 0, on top of their zero operands.
            sa = tl.load(A_SCALE + b * stride_s_b + src_t * stride_s_t, mask=src_ok, other=0.0)
            acc1 += part1.to(tl.float32) * sa[:, None]
            if EPILOGUE == 1:
                acc3 += part3.to(tl.float32) * sa[:, None]
        else:
            acc1 = part1
            acc3 = part3

    if W_SCALED:
        acc1 = acc1 * tl.load(W1_SCALE + offs_n, mask=n_ok, other=0.0)[None, :]
        if EPILOGUE == 1:
            acc3 = acc3 * tl.load(W3_SCALE + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc1 += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:
        acc1 = acc1 * tl.sigmoid(acc1) * acc3
    out_mask = row_ok[:, None] & n_ok[None, :]
    if EPILOGUE == 2:
        gate = load_rows_f32(GATE, b, t, stride_g_b, stride_g_t, offs_n, out_mask)
        acc1 = load_rows_f32(RES, b, t, stride_res_b, stride_res_t, offs_n, out_mask) + acc1 * gate
    out_ptrs = OUT + rows.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc1.to(OUT.dtype.element_ty), mask=out_mask)


class GemmConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    def programs(self, M: int, N: int) -> int:
        return triton.cdiv(M, self.block_m) * triton.cdiv(N, self.block_n)


def gemm_config(M: int, N: int, K: int, taps: int, swiglu: bool, one_byte: bool, sms: int) -> GemmConfig:
    """The launch config for an (M rows) x (N outputs) GEMM over ``taps`` x K, on ``sms`` SMs.

    The largest tile that still launches at least one program per SM, from 128x128 down
    to 64x32, among those whose fp32 accumulators fit 64 registers per thread at 8 warps
    (at most 128*128 accumulator elements): SwiGLU holds two accumulators, and W8A8 (the
    one-byte operands) over three taps sums each tap apart before its per-token rescale,
    which doubles them. BLOCK_M stays >= 64, the smallest that Hopper wgmma serves with
    4 warps; 8 warps when 4 would hold over 64 accumulator registers each. One-byte
    operands take BLOCK_K=128 (128-byte rows; the 8-bit wgmma K step is 32).

    At B=1 (M=237) on 132 SMs: qkv (N=4608) 128x64, 144 programs; linear1 and w2
    (N=1536) 64x32, 192; SwiGLU (N=4096) 64x64, 256. From about B=8 the largest
    allowed tile fills the machine. ``tests/kernels/test_*sm90_compile.py`` compile these
    for sm_90 and check wgmma and no register spills.

    To measure on an H100 (nothing here is timed): at B=1, 64x32 with 192 programs
    against 64x64 with 96 (fewer activation re-reads from L2) and against split-K; the
    SwiGLU 64x64 against 128x64 (128 programs); num_stages 3 vs 4; the cost of the FP8
    promotion every BLOCK_K against none.
    """
    if interpret_mode():
        # The interpreter pays per program step: the whole problem in a few programs.
        return GemmConfig(min(128, max(16, next_pow2(M))), min(128, max(16, next_pow2(N))),
                          min(128, max(16, next_pow2(K))), 4, 1)
    accumulators = (2 if swiglu else 1) * (2 if one_byte and taps > 1 else 1)
    tiles = [(bm, bn) for bm, bn in [(128, 128), (128, 64), (64, 128), (64, 64), (64, 32)]
             if bm * bn * accumulators <= 128 * 128]
    for block_m, block_n in tiles:
        if triton.cdiv(M, block_m) * triton.cdiv(N, block_n) >= sms:
            break
    acc_regs = block_m * block_n * accumulators // 128  # per thread at 4 warps
    num_stages = 3 if block_m * block_n >= 128 * 128 else 4
    return GemmConfig(block_m, block_n, 128 if one_byte else 64, 8 if acc_regs > 64 else 4, num_stages)


def kernel_switches(a_dtype: torch.dtype, w_dtype: torch.dtype, a_scaled: bool, w_scaled: bool,
                    block_k: int) -> dict:
    """The operand constexprs of ``_implicit_gemm_fwd`` for these operand dtypes."""
    interpreted = interpret_mode()
    fp8_dot = a_dtype == FP8 and w_dtype == FP8
    return dict(
        A_SCALED=a_scaled,
        W_SCALED=w_scaled,
        A_FP8_AS_INT8=interpreted and a_dtype == FP8,
        W_FP8_AS_INT8=interpreted and w_dtype == FP8,
        ACC_INT=a_dtype == torch.int8 and not dot_in_fp32(),
        DOT_FP32=dot_in_fp32(),
        PRECISION=dot_precision(a_dtype),
        # Promote FP8 partial sums to fp32 every K step; other dtypes ignore it.
        MAX_IMPRECISE_ACC=block_k if fp8_dot else 0,
    )


def _launch(a3: torch.Tensor, a_scale2: torch.Tensor | None, w1: torch.Tensor,
           w1_scale: torch.Tensor | None, w3: torch.Tensor | None, w3_scale: torch.Tensor | None,
           bias: torch.Tensor | None, res3: torch.Tensor | None, gate3: torch.Tensor | None,
           out3: torch.Tensor, epilogue: str) -> torch.Tensor:
    """Run the kernel on validated operands: a3 (B, T, K) with a_scale2 (B, T) or None,
    weights (TAPS, N, K) with scales (N,) or None, residual/gate (B, T, N) views, out3
    (B, T, N) contiguous."""
    B, T, K = a3.shape
    taps, N = w1.shape[0], w1.shape[1]
    M = B * T
    if M == 0 or N == 0:
        return out3
    ep = EPILOGUES.index(epilogue)
    cfg = gemm_config(M, N, K, taps, ep == SWIGLU, a3.element_size() == 1, sm_count(a3.device))
    switches = kernel_switches(a3.dtype, w1.dtype, a_scale2 is not None, w1_scale is not None,
                               cfg.block_k)

    def arg(t):  # FP8 travels as int8 where the kernel bitcasts it back
        return t.view(torch.int8) if t.dtype == FP8 and interpret_mode() else t

    sc = a_scale2 if a_scale2 is not None else out3
    res = res3 if res3 is not None else out3
    g = gate3 if gate3 is not None else out3
    w3 = w3 if w3 is not None else w1
    s1 = w1_scale if w1_scale is not None else out3
    s3 = w3_scale if w3_scale is not None else s1
    _implicit_gemm_fwd[(cfg.programs(M, N),)](
        arg(a3), sc, arg(w1), s1, arg(w3), s3, bias if bias is not None else out3, res, g, out3,
        M, T, K, N,
        a3.stride(0), a3.stride(1),
        sc.stride(0), sc.stride(1),
        res.stride(0), res.stride(1),
        g.stride(0), g.stride(1),
        TAPS=taps, EPILOGUE=ep, HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **switches,
    )
    return out3


def _out_dtype(a: torch.Tensor, a_scale, residual, out_dtype) -> torch.dtype:
    if out_dtype is not None:
        return out_dtype
    if a_scale is None:
        return a.dtype
    return residual.dtype if residual is not None else torch.bfloat16


def _dequant_weight(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """fp32 (TAPS, N, K) weight, times its per-output-channel scale when quantized."""
    return w.float() if scale is None else w.float() * scale.float()[:, None]


def implicit_gemm_reference(a: torch.Tensor, a_scale: torch.Tensor | None, w: torch.Tensor,
                            w_scale: torch.Tensor | None, bias: torch.Tensor | None = None, *,
                            epilogue: str = "none", w3: torch.Tensor | None = None,
                            w3_scale: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                            gate: torch.Tensor | None = None,
                            out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Plain PyTorch of the kernel: dequantize every operand to fp32, then ``F.conv1d``
    (three taps; a (B, T, K)) or a matmul (one tap; a (..., K)), then the epilogue.
    w, w3: (TAPS, N, K); out_dtype defaults as in ``implicit_gemm``."""
    out_dtype = _out_dtype(a, a_scale, residual, out_dtype)
    af = a.float() if a_scale is None else dequantize_rows(a, a_scale)

    def gemm(wt, scale, b=None):  # the eager modules' own ops, bias included
        wf = _dequant_weight(wt, scale)
        if wf.shape[0] == 1:
            return F.linear(af, wf[0], b)
        y = F.conv1d(af.transpose(1, 2), unpack_conv_weight(wf), b, padding=wf.shape[0] // 2)
        return y.transpose(1, 2)

    y = gemm(w, w_scale, None if bias is None else bias.float())
    if epilogue == "swiglu":
        y = F.silu(y) * gemm(w3, w3_scale)
    elif epilogue == "gated_residual":
        y = residual.float() + y * gate.float()
    return y.to(out_dtype)


def _check_weights(a, a_scale, weights: dict, taps: int, a_name: str) -> int:
    """Validate the (TAPS, N, K) weights and their scales against a; returns N."""
    K = a.shape[-1]
    layout = "(N, K)" if taps == 1 else "a packed (3, Cout, Cin) weight (see pack_conv_weight)"
    n = None
    for name, (w, s) in weights.items():
        shape = tuple(w.shape[1:]) if taps == 1 else tuple(w.shape)
        if w.dim() != 3 or w.shape[0] != taps or w.shape[2] != K:
            raise ValueError(f"{name} must be {layout} with K = {a_name}.shape[-1] = {K}, got {shape}")
        if not w.is_contiguous():
            raise ValueError(f"{name} must be contiguous" + ("" if taps == 1 else " (see pack_conv_weight)"))
        if n is not None and w.shape[1] != n:
            raise ValueError(f"weights disagree on N: {n} vs {w.shape[1]}")
        n = w.shape[1]
        if s is None:  # a float weight: a float GEMM in the input's dtype
            check_same_device_dtype(a, **{name: w})
            continue
        fmt = format_of(w.dtype)
        if a_scale is not None and w.dtype != a.dtype:
            raise ValueError(f"{name} is {w.dtype} ({fmt}) but {a_name} is {a.dtype}: W8A8 needs both "
                             "operands in the same format")
        if tuple(s.shape) != (n,) or s.dtype != torch.float32:
            raise ValueError(f"{name}'s scale must be float32 ({n},), got {s.dtype} {tuple(s.shape)}")
        for t_name, t in ((name, w), (f"{name}'s scale", s)):
            if t.device != a.device:
                raise ValueError(f"{t_name} is on {t.device} but {a_name} is on {a.device}")
    return n


def _check_float_operand(name: str, t: torch.Tensor, a: torch.Tensor) -> None:
    check_float(name, t)
    if t.device != a.device:
        raise ValueError(f"{name} is on {t.device} but the input is on {a.device}")


def _rows3(name: str, t: torch.Tensor | None, B: int, T: int, N: int, per_sample: bool, a):
    """``t`` (shaped like the output, or (B, 1, N) when ``per_sample``) as a (B, T, N) view."""
    if t is None:
        raise ValueError(f"the gated_residual epilogue needs {name}")
    _check_float_operand(name, t, a)
    t3 = t.reshape(B, T, t.shape[-1]) if t.dim() not in (0, 3) and t.shape[:-1].numel() == B * T else t
    if per_sample:
        return expand_broadcast(name, t3, B, T, N)
    if tuple(t3.shape) != (B, T, N):
        raise ValueError(f"{name} must be shaped like the output {(B, T, N)}, got {tuple(t.shape)}")
    check_last_dim_contiguous(name, t3)
    return t3


def implicit_gemm(a: torch.Tensor, a_scale: torch.Tensor | None, weights: dict, bias=None, *,
                  taps: int, epilogue: str = "none", residual=None, gate=None,
                  out_dtype: torch.dtype | None = None, out: torch.Tensor | None = None,
                  a_name: str = "a") -> torch.Tensor:
    """Validate, then run the kernel (or ``implicit_gemm_reference`` where Triton does not run).

    a: (..., K) ((B, T, K) for three taps), float, or FP8/INT8 with per-token fp32
    ``a_scale`` (a.shape[:-1]). ``weights``: name -> (w (TAPS, N, K), scale (N,) fp32 or None
    for a float weight in a's dtype): one entry, two for ``"swiglu"`` (W1 then W3). bias (N,).
    ``"gated_residual"`` takes residual shaped like the output and gate likewise or, for a
    3-D a, (B, 1, N). Returns (..., N) in ``out_dtype`` (default: a's dtype when a is
    float, else residual's, else bfloat16), written into ``out`` when given.
    """
    if epilogue not in EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}; expected one of {list(EPILOGUES)}")
    if taps == 3 and a.dim() != 3:
        raise ValueError(f"{a_name} must be (B, T, Cin), got shape {tuple(a.shape)}")
    if a.dim() < 1:
        raise ValueError(f"{a_name} must be (..., K), got a scalar")
    check_last_dim_contiguous(a_name, a)
    if a_scale is None and a.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{a_name} is {a.dtype}: a quantized activation needs its per-token a_scale "
                         "(float and weight-only GEMMs take a float32, float16 or bfloat16 input)")
    if a_scale is not None:
        format_of(a.dtype)  # raises naming the dtype
        if tuple(a_scale.shape) != tuple(a.shape[:-1]) or a_scale.dtype != torch.float32:
            raise ValueError(f"a_scale must be float32 {tuple(a.shape[:-1])} (one scale per token), "
                             f"got {a_scale.dtype} {tuple(a_scale.shape)}")
        _check_float_operand("a_scale", a_scale, a)
    first_scale = next(iter(weights.values()))[1]
    for name, (w, scale) in weights.items():
        if w is None or (scale is None) != (first_scale is None):
            raise ValueError(f"epilogue {epilogue!r} needs {name}"
                             + ("" if first_scale is None else " and its scale"))
    N = _check_weights(a, a_scale, weights, taps, a_name)
    if bias is not None:
        _check_float_operand("bias", bias, a)
        if tuple(bias.shape) != (N,) or not bias.is_contiguous():
            raise ValueError(f"bias must be contiguous (N,) = ({N},), got {tuple(bias.shape)}")
        if epilogue == "swiglu":
            raise ValueError("the swiglu epilogue takes no bias (the DiT's FFN has none)")
    a3 = a if a.dim() == 3 else a.reshape(1, -1, a.shape[-1])
    B, T, _ = a3.shape
    res3 = gate3 = None
    if epilogue == "gated_residual":
        res3 = _rows3("residual", residual, B, T, N, False, a)
        gate3 = _rows3("gate", gate, B, T, N, a.dim() == 3, a)
    (w1, s1), (w3, s3) = list(weights.values()) + [(None, None)] * (2 - len(weights))
    out_dtype = _out_dtype(a, a_scale, residual, out_dtype)
    o = check_out(out, tuple(a.shape[:-1]) + (N,), a, dtype=out_dtype)
    if not use_triton(a, w1):
        return copy_into(out, implicit_gemm_reference(
            a, a_scale, w1, s1, bias, epilogue=epilogue, w3=w3, w3_scale=s3, residual=residual,
            gate=gate, out_dtype=out_dtype))
    s2 = None if a_scale is None else a_scale.reshape(B, T)
    _launch(a3, s2, w1, s1, w3, s3, bias, res3, gate3, o.view(B, T, N), epilogue)
    return o
