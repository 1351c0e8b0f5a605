"""Feature taps for DMD's adversarial term: the output of a model's first N blocks.

The release's discriminator reads the frozen teacher's early DiT blocks. Rather than
re-implementing the teacher's forward up to block N (which would drift from the model
code), a forward hook grabs block N's output and stops the forward there, so the features
are exactly what the model computes and the later blocks cost nothing.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


class _StopForward(Exception):
    """Raised from the hook to skip the blocks after the tapped one."""


def early_block_features(model: nn.Module, blocks: nn.ModuleList, num_blocks: int
                         ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``feature_fn(z, t, cond)`` returning the output of ``blocks[num_blocks - 1]`` during
    ``model(z, t, cond)``; differentiable w.r.t. ``z``. For the AudioX DiT:
    ``early_block_features(dit, dit.transformer.layers, 6)`` -> (B, T + 1, D) tokens."""
    if not 1 <= num_blocks <= len(blocks):
        raise ValueError(f"num_blocks must be in [1, {len(blocks)}], got {num_blocks}")
    target = blocks[num_blocks - 1]

    def feature_fn(z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        captured = []

        def hook(module, inputs, output):
            captured.append(output)
            raise _StopForward

        handle = target.register_forward_hook(hook)
        try:
            model(z, t, cond)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"block {num_blocks - 1} was not called by the model's forward")
        return captured[0]

    return feature_fn
