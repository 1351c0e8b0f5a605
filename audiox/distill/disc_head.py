"""Small discriminator head for DMD's optional adversarial term.

It reads features of the frozen teacher (the release used the first 6 DiT blocks) at a
lightly re-noised sample and scores each token; the trainer averages the logits. Kept
tiny on purpose: the teacher's features do the work, the head only separates them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TokenDiscriminatorHead(nn.Module):
    """Per-token logits from features: (B, N, D) -> (B, N), or (B, D) -> (B,)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() not in (2, 3) or features.shape[-1] != self.dim:
            raise ValueError(f"features must be (B, N, {self.dim}) or (B, {self.dim}), got {tuple(features.shape)}")
        h = F.leaky_relu(self.proj(self.norm(features)), 0.2)
        return self.out(h).squeeze(-1)
