"""Benchmark snake_beta against eager and torch.compile, in GB/s (one read, one write).

Target (H100): >= 80% of copy bandwidth on the long VAE rows, >= 3x eager.
"""

from __future__ import annotations

from typing import Iterator

import torch

from audiox_engine.benchmarks.kernels._common import bench_impls
from audiox_engine.kernels import snake_beta, snake_beta_reference

# VAE decoder activations (B, C, T): 2048 ch near the latent rate up to 128 ch near audio rate.
SHAPES = [(1, 2048, 474), (1, 1024, 1888), (1, 512, 15104), (1, 128, 242550), (4, 128, 242550)]
QUICK_SHAPES = [(1, 4, 64)]


def run(device: str = "cuda", quick: bool = False) -> Iterator[dict]:
    # The release runs the VAE decoder in fp32; bf16 shows the half-precision path.
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in dtypes:
            yield from _bench_shape(shape, dtype, device, quick)


def _bench_shape(shape, dtype, device, quick) -> Iterator[dict]:
    B, C, T = shape
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, C, T, device=device, dtype=dtype, generator=g)
    alpha = 0.5 * torch.randn(C, device=device, dtype=dtype, generator=g)
    beta = 0.5 * torch.randn(C, device=device, dtype=dtype, generator=g)
    out = torch.empty_like(x)
    yield from bench_impls(
        "snake_beta", shape, dtype, device, quick,
        {"ours": lambda: snake_beta(x, alpha, beta, out=out),
         "eager": lambda: snake_beta_reference(x, alpha, beta)},
        nbytes=2 * x.numel() * dtype.itemsize,
        compiled=(snake_beta_reference, (x, alpha, beta)))
