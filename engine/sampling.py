"""Samplers over an ``AcceleratedDiT``: prepare once, then step; NVTX-annotated.

Same math and noise order as ``audiox.sampling`` (initial noise from the caller, then one
fresh fp32 draw from ``generator`` per re-noising step), so the same seed gives the same
latent as the eager reference up to kernel rounding. With ``cuda_graph=True`` (default on
CUDA when the DiT was accelerated with ``cuda_graphs=True``) the whole Turbo loop, fresh
noise included, replays as one CUDA graph; the teacher replays one captured step.

Per-item generators (a list, one per row, as ``audiox.sampling.draw_noise`` takes): the
captured Turbo graph draws from one generator, so with a list the Turbo loop runs eagerly
(``cuda_graph=None``) and ``cuda_graph=True`` is refused.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from audiox_engine.audiox.sampling import (TEACHER_CFG_SCALE, TEACHER_STEPS, TURBO_STEPS, Generators,
                                           teacher_timesteps, turbo_timesteps)
from audiox_engine.engine.accelerated_dit import AcceleratedDiT
from audiox_engine.engine.cuda_graphs import teacher_step_graph, turbo_graph
from audiox_engine.engine.loops import turbo_loop
from audiox_engine.engine.profiling import annotate

__all__ = ["sample_turbo", "sample_teacher", "decode", "EngineSampler"]


def _check_dit(dit) -> AcceleratedDiT:
    if not isinstance(dit, AcceleratedDiT):
        raise TypeError(
            f"expected an AcceleratedDiT (from engine.accelerate(dit)), got {type(dit).__name__}")
    return dit


def _want_graph(dit: AcceleratedDiT, x: torch.Tensor, cuda_graph: bool | None) -> bool:
    """None: the DiT's ``cuda_graphs`` setting, on CUDA tensors only."""
    if cuda_graph is None:
        return dit.cuda_graphs and x.is_cuda and torch.cuda.is_available()
    if cuda_graph and not x.is_cuda:
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got a tensor on {x.device}")
    return bool(cuda_graph)


@torch.no_grad()
def sample_turbo(dit: AcceleratedDiT, noise: torch.Tensor, cross_attn_cond: torch.Tensor,
                 steps: int = TURBO_STEPS, generator: Generators = None,
                 cuda_graph: bool | None = None) -> torch.Tensor:
    """Turbo (student) sampling: noise (B, C, T), cross_attn_cond (B, Nc, Dc) -> x0 (B, C, T).

    Conditioning is prepared once; each of ``steps`` forwards then costs only the time
    embedding, one bias GEMM and the fused blocks. ``generator``: one, or one per row (then
    the loop runs eagerly, outside any CUDA graph).
    """
    _check_dit(dit)
    if noise.dim() != 3:
        raise ValueError(f"noise must be (B, C, T), got {tuple(noise.shape)}")
    ts_cpu = turbo_timesteps(steps)
    with annotate("engine/conditioning"):
        prepared = dit.prepare(cross_attn_cond)
    use_graph = _want_graph(dit, noise, cuda_graph)
    if use_graph and isinstance(generator, (list, tuple)):
        if cuda_graph:
            raise ValueError("cuda_graph=True takes one generator (the captured loop draws from one); with one "
                             "generator per item leave cuda_graph unset: the loop then runs eagerly")
        use_graph = False
    if use_graph and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        # Fresh noise inside a graph needs graph-safe generators (PyTorch >= 2.5).
        if cuda_graph:
            raise RuntimeError("cuda_graph=True needs torch.cuda.CUDAGraph.register_generator_state "
                               "(PyTorch >= 2.5) to draw noise inside the graph")
        use_graph = False
    if use_graph:
        with annotate("engine/turbo_graph"):
            return turbo_graph(dit, noise, prepared, steps).run(noise, prepared, generator)
    return turbo_loop(dit, noise, prepared, ts_cpu.to(noise.device), generator)


@torch.no_grad()
def sample_teacher(dit: AcceleratedDiT, noise: torch.Tensor, cross_attn_cond: torch.Tensor,
                   steps: int = TEACHER_STEPS, cfg_scale: float = TEACHER_CFG_SCALE, sigma_max: float = 1.0,
                   init_data: torch.Tensor | None = None, progress: bool = False,
                   cuda_graph: bool | None = None) -> torch.Tensor:
    """Teacher Euler sampling with batched CFG, as ``audiox.sampling.sample_teacher``.

    The guided batch's modulations are prepared once for all ``steps``.
    """
    _check_dit(dit)
    ts = teacher_timesteps(steps, sigma_max)
    with annotate("engine/conditioning"):
        prepared = dit.prepare(cross_attn_cond, cfg_scale=cfg_scale)
    x = noise if init_data is None else init_data * (1 - ts[0]) + noise * ts[0]
    b = x.shape[0]
    runner = None
    if _want_graph(dit, x, cuda_graph):
        runner = teacher_step_graph(dit, x, prepared)
        runner.load(prepared)  # once per generation, not per step
    for i in tqdm(range(steps), desc="teacher", disable=not progress, leave=False):
        t_curr, t_next = ts[i], ts[i + 1]
        with annotate(f"engine/teacher_step{i}"):
            if runner is not None:
                x = runner.step(x, float(t_curr), float(t_next - t_curr))
            else:
                t = torch.full((b,), float(t_curr), dtype=x.dtype, device=x.device)
                v = dit.step(x, t, prepared)
                x = x + (t_next - t_curr).to(x.device) * v
    # The runner's output buffer is overwritten by its next replay.
    return x.clone() if runner is not None else x


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode inside an ``engine/decode`` range: ``vae.decode(latents)`` if it has one, else ``vae(latents)``."""
    with annotate("engine/decode"):
        fn = getattr(vae, "decode", None)
        return fn(latents) if callable(fn) else vae(latents)


class EngineSampler:
    """This module's samplers behind a pipeline's ``sampler`` slot (``engine.accelerate``
    puts one there): the same two methods as ``audiox.sampling.ReferenceSampler``."""

    name = "engine"

    def turbo(self, dit, noise, cond, *, steps, generator, progress=False):
        return sample_turbo(dit, noise, cond, steps=steps, generator=generator)

    def teacher(self, dit, noise, cond, *, steps, cfg_scale, progress=False):
        return sample_teacher(dit, noise, cond, steps=steps, cfg_scale=cfg_scale, progress=progress)
