"""Benchmark dit_attention against SDPA backends, flash-attn and xformers.

Every alternative includes the work it needs around the attention itself: split of the
interleaved qkv, RMSNorm and RoPE of q and k, and the output back to (B, N, H*d)
(norm + RoPE in eager PyTorch, as an engine without this kernel would run them).
Reported in TFLOP/s of the attention matmuls (4 * B*H*N^2*d).
Target (H100): <= 1.2x the time of the best alternative at B=1..4, 64 heads x 24, N=237.
"""

from __future__ import annotations

import functools
from typing import Iterator

import torch
import torch.nn.functional as F

from audiox_engine.benchmarks.kernels._common import bench_impls
from audiox_engine.kernels import dit_attention, dit_attention_reference, rope_tables

SHAPES = [(1, 237, 64, 24), (2, 237, 64, 24), (4, 237, 64, 24), (1, 4096, 64, 24),
          (1, 1024, 16, 128)]  # (B, N, H, d)
QUICK_SHAPES = [(1, 16, 2, 24)]


def _norm_rope(qkv, H, cos, sin, eps=1e-6):
    """Eager split + RMSNorm + RoPE: q, k, v as (B, N, H, d) in qkv's dtype."""
    B, N, _ = qkv.shape
    d = qkv.shape[-1] // (3 * H)
    q, k, v = qkv.view(B, N, H, d, 3).unbind(-1)

    def nr(t):
        t = t.float()
        t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)
        e, o = t[..., 0::2], t[..., 1::2]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return torch.stack((c * e - s * o, s * e + c * o), -1).flatten(-2).to(qkv.dtype)

    return nr(q), nr(k), v


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def fn(qkv, H, cos, sin):
        q, k, v = _norm_rope(qkv, H, cos, sin)
        with sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2))
        return o.transpose(1, 2).flatten(2)
    return fn


def _flash_attn(qkv, H, cos, sin):
    from flash_attn import flash_attn_func

    q, k, v = _norm_rope(qkv, H, cos, sin)
    return flash_attn_func(q, k, v.contiguous()).flatten(2)


def _xformers(qkv, H, cos, sin):
    import xformers.ops as xops

    q, k, v = _norm_rope(qkv, H, cos, sin)
    return xops.memory_efficient_attention(q, k, v.contiguous()).flatten(2)


def _alternatives(device: str) -> dict:
    alts = {}
    if torch.device(device).type == "cuda":
        from torch.nn.attention import SDPBackend

        for name in ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION"):
            if hasattr(SDPBackend, name):
                alts[f"sdpa_{name.lower()}"] = _sdpa(getattr(SDPBackend, name))
        alts["flash_attn"] = _flash_attn  # error rows when not importable
        alts["xformers"] = _xformers
    return alts


def run(device: str = "cuda", quick: bool = False) -> Iterator[dict]:
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    for shape in QUICK_SHAPES if quick else SHAPES:
        yield from _bench_shape(shape, dtype, device, quick)


def _bench_shape(shape, dtype, device, quick) -> Iterator[dict]:
    B, N, H, d = shape
    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(B, N, 3 * H * d, device=device, dtype=dtype, generator=g)
    cos, sin = rope_tables(N, d, device=device)
    out = torch.empty(B, N, H * d, device=device, dtype=dtype)
    impls = {"ours": lambda: dit_attention(qkv, H, cos, sin, out=out),
             "eager": lambda: dit_attention_reference(qkv, H, cos, sin)}
    for name, fn in _alternatives(device).items():
        impls[name] = functools.partial(fn, qkv, H, cos, sin)
    yield from bench_impls("dit_attention", shape, dtype, device, quick, impls,
                       flops=4.0 * B * H * N * N * d,
                       compiled=(dit_attention_reference, (qkv, H, cos, sin)))
