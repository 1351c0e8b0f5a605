"""The quantized DiT GEMMs against bf16 and the PyTorch / bitsandbytes baselines.

One row per (layer shape, implementation), in TFLOP/s, so the distance from the card's
roofline shows. The quantized rows include the per-token activation quantization
(``quantize_rows``). Shapes are one DiT block's GEMMs at batch B (M = 237 * B tokens; 2B
with CFG): qkv (1536 -> 4608), linear1 (k3 conv 1536 -> 1536), ffn w1|w3 SwiGLU (k3 1536
-> 4096, two weights), ffn w2 (k3 4096 -> 1536). The adaLN Linear (1536 -> 9216) runs
once per generation, not per step, so it is left out of the step-time picture.
Target (H100): FP8 >= 1.4x and INT8 >= 1.3x the bf16 engine's Triton conv.

Part of the ``kernels`` suite; alone::

    python -m audiox_engine.benchmarks.kernels.quant_gemm --batch 1
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from audiox_engine.benchmarks.kernels._common import bench_impls
from audiox_engine.benchmarks.quant_baselines import torch_int_mm_int8, torch_scaled_mm_fp8
from audiox_engine.kernels import (
    conv1d_k3,
    conv1d_k3_swiglu,
    pack_conv_weight,
    pack_quant_conv_weight,
    quantize_per_channel,
    quantize_rows,
    scaled_conv1d_k3,
    scaled_mm,
)

__all__ = ["GemmShape", "dit_gemm_shapes", "run"]

TOKENS = 237
QUICK_TOKENS = 8
_LABELS = {("fp8_e4m3", True): "W8A8-FP8 triton", ("int8", True): "W8A8-INT8 triton",
           ("int8", False): "INT8 weight-only triton"}


@dataclass(frozen=True)
class GemmShape:
    name: str
    K: int  # Cin
    N: int  # Cout
    conv_k3: bool
    swiglu: bool = False


def dit_gemm_shapes(dim: int = 1536, hidden: int = 4096) -> list[GemmShape]:
    return [GemmShape("attn.qkv", dim, 3 * dim, False),
            GemmShape("linear1", dim, dim, True),
            GemmShape("ffn.w1|w3 swiglu", dim, hidden, True, swiglu=True),
            GemmShape("ffn.w2", hidden, dim, True)]


def _bf16_impls(s: GemmShape, x: torch.Tensor, w: torch.Tensor, w3: torch.Tensor | None) -> dict:
    wb, w3b = w.to(torch.bfloat16), None if w3 is None else w3.to(torch.bfloat16)
    if not s.conv_k3:
        return {"bf16 torch": lambda: F.linear(x, wb)}

    def torch_conv():
        y = F.conv1d(x.transpose(1, 2), wb, padding=1)
        return F.silu(y) * F.conv1d(x.transpose(1, 2), w3b, padding=1) if s.swiglu else y

    # The bf16 engine's own Triton conv: the baseline the quantized speed-up is measured against.
    wp = pack_conv_weight(wb)
    if s.swiglu:
        w3p = pack_conv_weight(w3b)
        return {"bf16 torch": torch_conv, "bf16 triton conv1d_k3": lambda: conv1d_k3_swiglu(x, wp, w3p)}
    return {"bf16 torch": torch_conv, "bf16 triton conv1d_k3": lambda: conv1d_k3(x, wp)}


def _triton_impl(s: GemmShape, x: torch.Tensor, w, w3, fmt: str, act: bool):
    w_q, w_s = quantize_per_channel(w, fmt)
    w3_q, w3_s = quantize_per_channel(w3, fmt) if s.swiglu else (None, None)
    if s.conv_k3:
        w_q, w3_q = pack_quant_conv_weight(w_q), None if w3_q is None else pack_quant_conv_weight(w3_q)

    def run_gemm():
        a, a_s = quantize_rows(x, fmt) if act else (x, None)
        ep = {"epilogue": "swiglu"} if s.swiglu else {}
        if s.conv_k3:
            if s.swiglu:
                ep.update(w3_packed=w3_q, w3_scale=w3_s)
            return scaled_conv1d_k3(a, a_s, w_q, w_s, out_dtype=torch.bfloat16, **ep)
        if s.swiglu:
            ep.update(w3_q=w3_q, w3_scale=w3_s)
        return scaled_mm(a, a_s, w_q, w_s, out_dtype=torch.bfloat16, **ep)
    return run_gemm


def _baseline_impls(s: GemmShape, x: torch.Tensor, w: torch.Tensor) -> dict:
    """PyTorch's scaled GEMMs and bitsandbytes: Linear layers only (neither has a k3 conv)."""
    out = {}
    for fmt, fn, label in (("fp8_e4m3", torch_scaled_mm_fp8, "W8A8-FP8 torch._scaled_mm"),
                           ("int8", torch_int_mm_int8, "W8A8-INT8 torch._int_mm")):
        w_q, w_s = quantize_per_channel(w, fmt)
        out[label] = lambda fmt=fmt, fn=fn, w_q=w_q, w_s=w_s: fn(*quantize_rows(x, fmt), w_q, w_s)
    try:
        import bitsandbytes as bnb

        lin = bnb.nn.Linear8bitLt(s.K, s.N, bias=False, has_fp16_weights=False, threshold=6.0)
        lin.weight = bnb.nn.Int8Params(w.half().cpu(), requires_grad=False, has_fp16_weights=False)
        lin = lin.to(x.device)
        out["bitsandbytes Linear8bitLt"] = lambda: lin(x.half())
    except Exception:  # not installed, or no CUDA build: the baseline is optional
        pass
    return out


def _impls(s: GemmShape, x: torch.Tensor) -> dict:
    """name -> zero-argument callable, for one shape. x (1, M, K) bf16 activations."""
    g = torch.Generator(device="cpu").manual_seed(0)
    w = (torch.randn(s.N, s.K, 3 if s.conv_k3 else 1, generator=g) * 0.02).to(x.device)
    w = w if s.conv_k3 else w[..., 0]
    w3 = (torch.randn_like(w) * 0.02) if s.swiglu else None
    out = _bf16_impls(s, x, w, w3)
    for fmt, act in _LABELS:
        out[_LABELS[(fmt, act)]] = _triton_impl(s, x, w, w3, fmt, act)
    if not s.conv_k3:
        out |= _baseline_impls(s, x, w)
    return out


def run(device: str = "cuda", quick: bool = False, batch: int = 1,
        shapes: list[GemmShape] | None = None) -> Iterator[dict]:
    """Rows for every implementation at every shape (quick: a 32-wide DiT, 8 tokens)."""
    if shapes is None:
        shapes = dit_gemm_shapes(32, 48) if quick else dit_gemm_shapes()
    M = (QUICK_TOKENS if quick else TOKENS) * batch
    for s in shapes:
        x = torch.randn(1, M, s.K, generator=torch.Generator().manual_seed(1)).to(device, torch.bfloat16)
        flops = 2 * M * s.K * s.N * (3 if s.conv_k3 else 1) * (2 if s.swiglu else 1)
        yield from bench_impls(f"dit_gemm {s.name}", (M, s.K, s.N), torch.bfloat16, device, quick,
                               _impls(s, x), flops=flops, layer=s.name)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="quantized DiT GEMM timings")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 3 repetitions (checks the code)")
    a = p.parse_args(argv)
    for r in run(a.device, a.quick, a.batch):
        if "error" in r:
            print(f"{r['layer']:18s} {r['impl']:30s} unavailable: {r['error']}")
        else:
            print(f"{r['layer']:18s} {r['impl']:30s} {r['timing']['median_ms']:8.3f} ms {r['tflops']:8.1f} TFLOP/s")


if __name__ == "__main__":
    main()
