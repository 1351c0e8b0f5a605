"""Speed of the quantized DiT GEMMs against bf16 and the PyTorch / bitsandbytes baselines.

One row per (layer shape, implementation): milliseconds and achieved TFLOP/s (so the
distance from the H100 roofline, ~990 dense bf16 / ~1980 FP8 and INT8 TFLOP/s, shows).
The quantized rows include the per-token activation quantization (``quantize_rows``)
unless the layer's input comes from a fused producer (``prequantized=True`` shapes).

Shapes are one DiT block's GEMMs at batch ``B`` (M = 237 * B tokens; 2B with CFG):
qkv (1536 -> 4608), linear1 (k3 conv 1536 -> 1536), ffn w1|w3 SwiGLU (k3 1536 -> 4096,
two weights), ffn w2 (k3 4096 -> 1536). The adaLN Linear (1536 -> 9216) runs once per
generation, not per step, so it is left out of the step-time picture.

Not measured yet: this machine has no GPU. On CUDA::

    python -m audiox_engine.engine.quant_bench --batch 1
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from audiox_engine.kernels.quant_gemm import pack_quant_conv_weight, scaled_conv1d_k3, scaled_mm
from audiox_engine.kernels.quant_rows import quantize_per_channel, quantize_rows
from audiox_engine.kernels.quant_torch_mm import torch_int_mm_int8, torch_scaled_mm_fp8

__all__ = ["GemmShape", "dit_gemm_shapes", "bench_quant_gemms"]


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


def _timer(fn, reps: int, warmup: int, device: str) -> float:
    """Median milliseconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _candidates(s: GemmShape, x: torch.Tensor):
    """name -> zero-arg callable, for one shape. x (1, M, K) bf16 activations."""
    K, N = s.K, s.N
    g = torch.Generator(device="cpu").manual_seed(0)
    w = (torch.randn(N, K, 3 if s.conv_k3 else 1, generator=g) * 0.02).to(x.device)
    w = w if s.conv_k3 else w[..., 0]
    w3 = (torch.randn_like(w) * 0.02) if s.swiglu else None
    wb, w3b = w.to(torch.bfloat16), None if w3 is None else w3.to(torch.bfloat16)
    out = {}
    if s.conv_k3:
        def bf16():
            y = F.conv1d(x.transpose(1, 2), wb, padding=1)
            if s.swiglu:
                y = F.silu(y) * F.conv1d(x.transpose(1, 2), w3b, padding=1)
            return y
    else:
        def bf16():
            return F.linear(x, wb)
    out["bf16 torch"] = bf16
    if s.conv_k3:  # the bf16 engine's own Triton conv (kernels.conv1d_k3): the speed-up baseline
        from audiox_engine.kernels.conv1d_k3 import conv1d_k3, conv1d_k3_swiglu, pack_conv_weight

        wp = pack_conv_weight(wb)
        if s.swiglu:
            w3p = pack_conv_weight(w3b)
            out["bf16 triton conv1d_k3"] = lambda: conv1d_k3_swiglu(x, wp, w3p)
        else:
            out["bf16 triton conv1d_k3"] = lambda: conv1d_k3(x, wp)
    for fmt, act in (("fp8_e4m3", True), ("int8", True), ("int8", False)):
        label = {("fp8_e4m3", True): "W8A8-FP8 triton", ("int8", True): "W8A8-INT8 triton",
                 ("int8", False): "INT8 weight-only triton"}[(fmt, act)]
        w_q, w_s = quantize_per_channel(w, fmt)
        w3_q, w3_s = quantize_per_channel(w3, fmt) if s.swiglu else (None, None)
        if s.conv_k3:
            w_q, w3_q = pack_quant_conv_weight(w_q), None if w3_q is None else pack_quant_conv_weight(w3_q)

        def run(w_q=w_q, w_s=w_s, w3_q=w3_q, w3_s=w3_s, fmt=fmt, act=act):
            a, a_s = quantize_rows(x, fmt) if act else (x, None)
            ep = {"epilogue": "swiglu"} if s.swiglu else {}
            if s.conv_k3:
                if s.swiglu:
                    ep.update(w3_packed=w3_q, w3_scale=w3_s)
                return scaled_conv1d_k3(a, a_s, w_q, w_s, out_dtype=torch.bfloat16, **ep)
            if s.swiglu:
                ep.update(w3_q=w3_q, w3_scale=w3_s)
            return scaled_mm(a, a_s, w_q, w_s, out_dtype=torch.bfloat16, **ep)
        out[label] = run
    if not s.conv_k3:
        for fmt, fn, label in (("fp8_e4m3", torch_scaled_mm_fp8, "W8A8-FP8 torch._scaled_mm"),
                               ("int8", torch_int_mm_int8, "W8A8-INT8 torch._int_mm")):
            w_q, w_s = quantize_per_channel(w, fmt)
            out[label] = lambda fmt=fmt, fn=fn, w_q=w_q, w_s=w_s: fn(*quantize_rows(x, fmt), w_q, w_s)
        try:
            import bitsandbytes as bnb

            lin = bnb.nn.Linear8bitLt(K, N, bias=False, has_fp16_weights=False, threshold=6.0)
            lin.weight = bnb.nn.Int8Params(w.half().cpu(), requires_grad=False, has_fp16_weights=False)
            lin = lin.to(x.device)
            out["bitsandbytes Linear8bitLt"] = lambda: lin(x.half())
        except Exception:  # not installed, or no CUDA build: the baseline is optional
            pass
    return out


def bench_quant_gemms(batch: int = 1, device: str = "cuda", reps: int = 50, warmup: int = 10,
                      shapes: list[GemmShape] | None = None, tokens: int = 237) -> list[dict]:
    """Time every implementation at every shape; returns rows (shape, impl, ms, TFLOP/s)."""
    rows = []
    for s in shapes or dit_gemm_shapes():
        M = tokens * batch
        x = torch.randn(1, M, s.K, device=device).to(torch.bfloat16)
        flops = 2 * M * s.K * s.N * (3 if s.conv_k3 else 1) * (2 if s.swiglu else 1)
        for name, fn in _candidates(s, x).items():
            try:
                ms = _timer(fn, reps, warmup, device)
            except Exception as e:  # an unavailable path is reported, not fatal
                rows.append({"shape": s.name, "impl": name, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            rows.append({"shape": s.name, "impl": name, "M": M, "K": s.K, "N": s.N, "ms": ms,
                         "tflops": flops / (ms * 1e-3) / 1e12})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="quantized GEMM timings")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument("--reps", type=int, default=50)
    a = p.parse_args(argv)
    for r in bench_quant_gemms(a.batch, a.device, a.reps):
        if "error" in r:
            print(f"{r['shape']:18s} {r['impl']:30s} unavailable: {r['error']}")
        else:
            print(f"{r['shape']:18s} {r['impl']:30s} {r['ms']:8.3f} ms {r['tflops']:8.1f} TFLOP/s")


if __name__ == "__main__":
    main()
