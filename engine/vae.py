"""VAE decoder acceleration: SnakeBeta activations swapped for the fused Triton op.

A SnakeBeta is found by duck typing (class named ``SnakeBeta`` with 1-D ``alpha`` and
``beta`` parameters, log scale as the release's ``alpha_logscale=True``). The swap keeps
the parameter names, so state dicts still load. The VAE's convolutions are 1-D, where
PyTorch has no channels-last memory format; they stay cuDNN convs, which use TF32 on
Ampere+ by default (``torch.backends.cudnn.allow_tf32``) when the decoder runs in fp32
as the release does, or bf16 when ``accelerate(..., vae_dtype=torch.bfloat16)``.
"""

from __future__ import annotations

import torch
from torch import nn

from audiox_engine import kernels
from audiox_engine.engine import ops
from audiox_engine.engine.discover import find_snake_betas, replace_module

__all__ = ["FusedSnakeBeta", "swap_snake_betas"]


class FusedSnakeBeta(nn.Module):
    """``x + 1/(exp(beta)+1e-9) * sin(exp(alpha) x)^2`` in one pass; x (B, C, T)."""

    def __init__(self, snake: nn.Module, backend: str = "triton"):
        super().__init__()
        if backend not in ("triton", "reference"):
            raise ValueError(f"backend must be 'triton' or 'reference', got {backend!r}")
        self.backend = backend
        self.alpha = snake.alpha
        self.beta = snake.beta

    def extra_repr(self) -> str:
        return f"channels={self.alpha.shape[0]}, backend={self.backend}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha, self.beta
        if self.backend == "triton":
            return ops.snake_beta(x, alpha, beta)
        return kernels.snake_beta_reference(x, alpha, beta)


def swap_snake_betas(root: nn.Module, backend: str, make=None) -> tuple[int, list[str]]:
    """Replace every log-scale SnakeBeta under ``root``; returns (count, names skipped and why).

    ``make(snake)`` builds each replacement (default ``FusedSnakeBeta(snake, backend)``).
    """
    make = make or (lambda snake: FusedSnakeBeta(snake, backend))
    swapped, skipped = 0, []
    for name, module in find_snake_betas(root):
        if getattr(module, "alpha_logscale", True) is False:
            skipped.append(f"{name}: alpha_logscale=False (linear-scale SnakeBeta, kept eager)")
            continue
        if name == "":
            raise ValueError("the root module is a SnakeBeta itself; pass its parent")
        replace_module(root, name, make(module))
        swapped += 1
    return swapped, skipped
