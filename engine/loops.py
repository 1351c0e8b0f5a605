"""The sampling loops the engine runs eagerly and captures in CUDA graphs.

Same math and noise order as ``audiox.sampling``; no host sync inside, so that a loop can
be captured whole.
"""

from __future__ import annotations

import torch

from audiox_engine.audiox.sampling import Generators, draw_noise
from audiox_engine.engine.accelerated_dit import AcceleratedDiT, PreparedConditioning
from audiox_engine.engine.profiling import annotate

__all__ = ["turbo_loop"]


def turbo_loop(dit: AcceleratedDiT, noise: torch.Tensor, prepared: PreparedConditioning,
               ts: torch.Tensor, generator: Generators) -> torch.Tensor:
    """The DMD loop on device, no host sync: ``x0 = z - t v``; re-noise; last step returns x0.

    ts: (steps,) timesteps already on ``noise``'s device. generator: one, or one per row (row i's
    fresh noise from the i-th, see ``draw_noise``). Returns x0 in ``noise.dtype``.
    """
    steps = ts.shape[0]
    b = noise.shape[0]
    z = noise
    x0 = noise
    for i in range(steps):
        with annotate(f"engine/turbo_step{i}"):
            t = ts[i].expand(b)
            v = dit.step(z, t.to(z.dtype), prepared)
            x0 = z.float() - ts[i] * v.float()
            if i < steps - 1:
                t_next = ts[i + 1]
                fresh = draw_noise(z.shape, generator, z.device)
                z = (t_next * fresh + (1 - t_next) * x0).to(noise.dtype)
    return x0.to(noise.dtype)
