"""Benchmark adaln_modulate / gated_residual_adaln against eager and torch.compile.

Memory-bound: reported in GB/s of compulsory traffic (each input read once, each
output written once) so results compare directly with ``measure_copy_bandwidth``.
Targets (H100): >= 80% of copy bandwidth at 16k+ rows, >= 3x eager at B*237 rows.
"""

from __future__ import annotations

from typing import Iterator

import torch

from audiox_engine.benchmarks.kernels._common import bench_impls
from audiox_engine.kernels import (
    adaln_modulate,
    adaln_modulate_reference,
    gated_residual_adaln,
    gated_residual_adaln_reference,
)

# (B, N, D): one DiT block's tokens at B=1 and B=8, and a 16k-row case for bandwidth.
SHAPES = [(1, 237, 1536), (8, 237, 1536), (1, 16384, 1536), (4, 16384, 1536)]
QUICK_SHAPES = [(1, 8, 64)]


def run(device: str = "cuda", quick: bool = False) -> Iterator[dict]:
    dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float32]
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in dtypes:
            yield from _bench_shape(shape, dtype, device, quick)


def _bench_shape(shape, dtype, device, quick) -> Iterator[dict]:
    B, N, D = shape
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, N, D, device=device, dtype=dtype, generator=g)
    y = torch.randn(B, N, D, device=device, dtype=dtype, generator=g)
    bias = torch.randn(B, D, device=device, dtype=dtype, generator=g)
    # Per-token modulation as chunks of one (B, N, 6D) tensor, as the engine has it.
    mods = torch.randn(B, N, 6 * D, device=device, dtype=dtype, generator=g)
    shift, scale, gate = mods[..., :D], mods[..., D:2 * D], mods[..., 2 * D:3 * D]
    el = dtype.itemsize * B * N * D
    h = torch.empty_like(x)
    yield from bench_impls(
        "adaln_modulate", (B, N, D), dtype, device, quick,
        {"ours": lambda: adaln_modulate(x, shift, scale, out=h),
         "eager": lambda: adaln_modulate_reference(x, shift, scale)},
        nbytes=4 * el,  # x, shift, scale in; h out
        compiled=(adaln_modulate_reference, (x, shift, scale)),
        modulation="per_token")
    outs = (torch.empty_like(x), torch.empty_like(x))
    yield from bench_impls(
        "gated_residual_adaln", (B, N, D), dtype, device, quick,
        {"ours": lambda: gated_residual_adaln(x, y, gate, shift, scale, bias, out=outs),
         "eager": lambda: gated_residual_adaln_reference(x, y, gate, shift, scale, bias)},
        nbytes=7 * el,  # x, y, gate, shift, scale in; x2, h out (bias negligible)
        compiled=(gated_residual_adaln_reference, (x, y, gate, shift, scale, bias)),
        modulation="per_token")
