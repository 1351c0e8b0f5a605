"""Benchmark the channels-last Conv1d k3 kernels against the cuBLAS/cuDNN paths.

Compute-bound: reported in TFLOP/s (2 * B*T * 3*Cin * Cout per conv). Baselines:
- "cudnn_conv": F.conv1d in the input dtype on the transposed view (+ separate
  silu / mul / gate / residual ops for the fused variants);
- "unfold_gemm" (SwiGLU): the three shifted copies of x concatenated to (B*T, 3*Cin)
  and one GEMM against [W1 | W3], then silu and mul;
- "eager" (the fp32 ``*_reference``) and ``torch.compile`` of it.
Target (H100): SwiGLU >= 1.2x the cuBLAS path.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from audiox_engine.benchmarks.kernels._common import bench_impls
from audiox_engine.kernels import (
    conv1d_k3,
    conv1d_k3_gated_residual,
    conv1d_k3_gated_residual_reference,
    conv1d_k3_reference,
    conv1d_k3_swiglu,
    conv1d_k3_swiglu_reference,
    pack_conv_weight,
)

T_REAL = 237
BATCHES = [1, 4, 8]
QUICK = [(1, 9, 32, 48)]  # (B, T, Cin, Cout)


def _cudnn_conv(x, w, bias=None):
    """Channels-last conv through cuDNN in the input dtype."""
    return F.conv1d(x.transpose(1, 2), w, bias, padding=1).transpose(1, 2)


def _unfold(x):
    """(B, T, Cin) -> (B*T, 3*Cin): the three taps side by side (tap-major, as packed)."""
    xp = F.pad(x, (0, 0, 1, 1))
    T = x.shape[1]
    return torch.cat([xp[:, k:k + T] for k in range(3)], dim=-1).flatten(0, 1)


def _cases(quick: bool):
    if quick:
        return [(variant, *s) for variant in ("swiglu", "plain", "gated_residual") for s in QUICK]
    cases = []
    for B in BATCHES:
        cases.append(("swiglu", B, T_REAL, 1536, 4096))          # w1, w3
        cases.append(("gated_residual", B, T_REAL, 4096, 1536))  # w2 (+ gate, residual)
        cases.append(("gated_residual", B, T_REAL, 1536, 1536))  # linear1 (+ bias)
        cases.append(("plain", B, T_REAL, 1536, 1536))
    return cases


def run(device: str = "cuda", quick: bool = False) -> Iterator[dict]:
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    for case in _cases(quick):
        yield from _bench_case(*case, dtype, device, quick)


def _bench_case(variant, B, T, cin, cout, dtype, device, quick) -> Iterator[dict]:
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, s=1.0):
        return s * torch.randn(*shape, device=device, dtype=dtype, generator=g)

    x = rnd(B, T, cin)
    w1, w3 = rnd(cout, cin, 3, s=(3 * cin) ** -0.5), rnd(cout, cin, 3, s=(3 * cin) ** -0.5)
    w1p, w3p = pack_conv_weight(w1), pack_conv_weight(w3)
    bias = rnd(cout)
    out = torch.empty(B, T, cout, device=device, dtype=dtype)
    flops = 2.0 * B * T * 3 * cin * cout
    shape = (B, T, cin, cout)
    if variant == "swiglu":
        w13 = torch.cat([w1p, w3p], dim=1).transpose(1, 2).flatten(0, 1)  # (3*Cin, 2*Cout)

        def unfold_gemm():
            a, b = (_unfold(x) @ w13).chunk(2, dim=-1)
            return F.silu(a) * b

        yield from bench_impls(
            "conv1d_k3_swiglu", shape, dtype, device, quick,
            {"ours": lambda: conv1d_k3_swiglu(x, w1p, w3p, out=out),
             "cudnn_conv": lambda: F.silu(_cudnn_conv(x, w1)) * _cudnn_conv(x, w3),
             "unfold_gemm": unfold_gemm,
             "eager": lambda: conv1d_k3_swiglu_reference(x, w1p, w3p)},
            flops=2 * flops, compiled=(conv1d_k3_swiglu_reference, (x, w1p, w3p)))
        return
    if variant == "gated_residual":
        residual, gate = rnd(B, T, cout), rnd(B, T, cout)
        yield from bench_impls(
            "conv1d_k3_gated_residual", shape, dtype, device, quick,
            {"ours": lambda: conv1d_k3_gated_residual(x, w1p, residual, gate, bias, out=out),
             "cudnn_conv": lambda: residual + _cudnn_conv(x, w1, bias) * gate,
             "eager": lambda: conv1d_k3_gated_residual_reference(x, w1p, residual, gate, bias)},
            flops=flops,
            compiled=(conv1d_k3_gated_residual_reference, (x, w1p, residual, gate, bias)))
        return
    yield from bench_impls(
        "conv1d_k3", shape, dtype, device, quick,
        {"ours": lambda: conv1d_k3(x, w1p, bias, out=out),
         "cudnn_conv": lambda: _cudnn_conv(x, w1, bias),
         "eager": lambda: conv1d_k3_reference(x, w1p, bias)},
        flops=flops, compiled=(conv1d_k3_reference, (x, w1p, bias)))
