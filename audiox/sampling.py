"""Samplers for rectified flow: the Turbo student (DMD, few steps) and the teacher (Euler + CFG).

Convention (as the release): ``z_t = (1 - t) x0 + t eps``, the network predicts
``v = eps - x0``, so ``x0 = z_t - t v``; sampling runs from ``t = 1`` (noise) to ``0``.

Determinism: all noise comes from an explicit :class:`torch.Generator` (or a seed), so
the same seed gives the same output on the same device. Drawing order matches the
release (initial noise, then one fresh draw per re-noising step), so seeding the
generator as the release seeds the global RNG reproduces its samples.

Per-item noise: wherever a generator is taken, a list of generators (one per item of the
batch) may be given instead; row i is then drawn from the i-th exactly as a batch of one
would draw it from that generator, so an item's noise does not depend on its batch.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

__all__ = [
    "make_generator",
    "draw_noise",
    "Generators",
    "turbo_timesteps",
    "teacher_timesteps",
    "sample_turbo",
    "sample_teacher",
    "cfg_combine",
    "ReferenceSampler",
    "TEACHER_STEPS",
    "TEACHER_CFG_SCALE",
    "TURBO_STEPS",
]

# The release's sampler defaults: the student's 4 DMD steps, the teacher's Euler steps and guidance.
TURBO_STEPS = 4
TEACHER_STEPS = 250
TEACHER_CFG_SCALE = 6.0

VelocityFn = Callable[..., torch.Tensor]
# One generator for the whole batch, one per item (row), or None (the global RNG).
Generators = torch.Generator | Sequence[torch.Generator] | None


def make_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed``; passes generators through."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def draw_noise(shape, generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise from ``generator``, drawn in fp32 then cast (dtype-independent values).

    With a list of generators (one per row, ``shape[0]`` distinct objects), row i is drawn
    from the i-th with shape ``(1, *shape[1:])``: the values a batch of one draws from it.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: give one per item")
        if len({id(g) for g in generator}) != len(generator):
            raise ValueError("the same generator object appears twice in the list: each item needs its own "
                             "(a shared one would advance once per row)")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=device, dtype=torch.float32) for g in generator]
        return torch.cat(rows).to(dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)


def turbo_timesteps(steps: int = TURBO_STEPS) -> torch.Tensor:
    """The student's schedule ``linspace(1, 0, steps + 1)[:steps]`` (1, .75, .5, .25 for 4)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1)[:steps]


def teacher_timesteps(steps: int, sigma_max: float = 1.0) -> torch.Tensor:
    """Euler grid ``linspace(sigma_max, 0, steps + 1)`` (steps + 1 points)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(min(sigma_max, 1.0), 0.0, steps + 1)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Standard classifier-free guidance ``u + (c - u) * w`` (the release's form)."""
    return uncond + (cond - uncond) * cfg_scale


@torch.no_grad()
def sample_turbo(
    model_fn: VelocityFn,
    noise: torch.Tensor,
    steps: int = TURBO_STEPS,
    generator: Generators = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """The DMD few-step sampler: ``x0 = z - t v``; re-noise with fresh noise; last step returns x0.

    ``model_fn(z, t, **model_kwargs)`` with ``z`` (B, C, T) and ``t`` (B,) returns ``v``.
    ``callback(i, x0)`` sees each step's clean estimate. Returns x0 in ``noise.dtype``.
    ``generator``: one for the batch, or one per row (see :func:`draw_noise`).
    """
    ts = turbo_timesteps(steps).to(noise.device)
    b = noise.shape[0]
    z = noise
    x0 = noise
    for i in tqdm(range(steps), desc="turbo", disable=not progress, leave=False):
        t = ts[i].expand(b)
        v = model_fn(z, t.to(z.dtype), **model_kwargs)
        x0 = (z.float() - ts[i] * v.float())
        if callback is not None:
            callback(i, x0)
        if i < steps - 1:
            t_next = ts[i + 1]
            fresh = draw_noise(z.shape, generator, z.device)
            z = (t_next * fresh + (1 - t_next) * x0).to(noise.dtype)
    return x0.to(noise.dtype)


@torch.no_grad()
def sample_teacher(
    model_fn: VelocityFn,
    noise: torch.Tensor,
    steps: int = TEACHER_STEPS,
    cfg_scale: float = TEACHER_CFG_SCALE,
    cross_attn_cond: torch.Tensor | None = None,
    sigma_max: float = 1.0,
    init_data: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """Euler on rectified flow with batched CFG: ``x += (t_next - t) * v``.

    ``model_fn(x, t, cross_attn_cond=..., cfg_scale=...)`` must implement the batched
    guidance (cond and null side by side in one batch of 2B), as
    :class:`audiox.dit.MMDiffusionTransformer` does; ``cfg_scale == 1`` is one plain
    conditional forward. ``init_data`` starts from ``init*(1-sigma_max) + noise*sigma_max``
    (the release's "variation" mode).
    """
    ts = teacher_timesteps(steps, sigma_max)
    x = noise if init_data is None else init_data * (1 - ts[0]) + noise * ts[0]
    b = x.shape[0]
    for i in tqdm(range(steps), desc="teacher", disable=not progress, leave=False):
        t_curr, t_next = ts[i], ts[i + 1]
        t = torch.full((b,), float(t_curr), dtype=x.dtype, device=x.device)
        v = model_fn(x, t, cross_attn_cond=cross_attn_cond, cfg_scale=cfg_scale, **model_kwargs)
        x = x + (t_next - t_curr).to(x.device) * v
        if callback is not None:
            callback(i, x)
    return x


class ReferenceSampler:
    """The samplers of this module, as the pipeline calls them (its ``sampler`` slot).

    ``engine.accelerate`` puts its own sampler object with the same two methods in that
    slot; the pipeline never needs to know which one it holds.
    """

    name = "reference"

    def turbo(self, dit, noise: torch.Tensor, cond: torch.Tensor, *, steps: int,
              generator: Generators, progress: bool = False) -> torch.Tensor:
        return sample_turbo(dit, noise, steps=steps, generator=generator, progress=progress, cross_attn_cond=cond)

    def teacher(self, dit, noise: torch.Tensor, cond: torch.Tensor, *, steps: int, cfg_scale: float,
                progress: bool = False) -> torch.Tensor:
        return sample_teacher(dit, noise, steps=steps, cfg_scale=cfg_scale, cross_attn_cond=cond, progress=progress)
