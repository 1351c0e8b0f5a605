"""CUDA-graph capture of the Turbo loop (whole) and of one teacher step (replayed N times).

Only used when ``torch.cuda.is_available()`` and the tensors are on CUDA. Each runner
owns static buffers (noise/latent, modulations, timesteps) at fixed addresses; a call
copies the new inputs into them and replays, with no host sync inside the graph.
Runners are cached on the ``AcceleratedDiT`` per (batch, length, dtype, steps), so
buffers are reused across calls.

Fresh noise inside the graph: each ``TurboGraph`` owns a CUDA generator registered with
the graph (``CUDAGraph.register_generator_state``), so every replay reads that
generator's seed and philox offset and advances it, exactly as eager draws would. A call
copies the caller's generator state (or the default generator's) into it before the
replay and copies the advanced state back after: host-side seed/offset only, no device
sync, and a fresh ``torch.Generator`` per call (the diffusers idiom) reuses the graph.
"""

from __future__ import annotations

import dataclasses

import torch

from audiox_engine.audiox.sampling import turbo_timesteps
from audiox_engine.engine.accelerated_dit import AcceleratedDiT, PreparedConditioning
from audiox_engine.engine.loops import turbo_loop

__all__ = ["TurboGraph", "TeacherStepGraph", "turbo_graph", "teacher_step_graph"]


def _source_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    if isinstance(generator, (list, tuple)):
        raise ValueError("a TurboGraph draws from one generator; with one per item run engine.loops.turbo_loop "
                         "(engine.sample_turbo does)")
    if generator is not None:
        if generator.device.type != "cuda":
            raise ValueError(f"the generator must be a CUDA generator for CUDA-graph sampling, got {generator.device}")
        return generator
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.default_generators[index]


def _warm_up(fn, device: torch.device) -> None:
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)


def capture(fn, device: torch.device, generators: tuple = ()):
    """Warm ``fn`` up on a side stream, then capture one call as a CUDA graph.

    ``generators`` are registered with the graph so that random draws inside it advance
    them at every replay. Returns ``(replay, output)``: calling ``replay()`` reruns the
    captured work, which rewrites ``output`` in place from the static input buffers.
    """
    _warm_up(fn, device)
    graph = torch.cuda.CUDAGraph()
    for g in generators:
        graph.register_generator_state(g)
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def _static_prepared(prepared: PreparedConditioning) -> PreparedConditioning:
    return dataclasses.replace(prepared, modulation=prepared.modulation.clone(),
                               cos=prepared.cos.clone(), sin=prepared.sin.clone())


def _load_prepared(static: PreparedConditioning, prepared: PreparedConditioning) -> None:
    if prepared.modulation.shape != static.modulation.shape or prepared.guided != static.guided:
        raise ValueError("prepared conditioning does not match the captured graph's shapes")
    if prepared.modulation is not static.modulation:
        static.modulation.copy_(prepared.modulation)


class TurboGraph:
    """The whole ``steps``-step Turbo loop, fresh noise included, as one CUDA graph."""

    def __init__(self, dit: AcceleratedDiT, noise: torch.Tensor, prepared: PreparedConditioning, steps: int):
        if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            raise RuntimeError("this PyTorch has no CUDAGraph.register_generator_state: cannot draw noise "
                               "inside a graph")
        dev = noise.device
        self.rng = torch.Generator(device=dev)  # the graph's own; callers' states are copied in and out
        self.static_noise = noise.clone()
        self.static_prepared = _static_prepared(prepared)
        self.ts = turbo_timesteps(steps).to(dev)

        def loop():
            return turbo_loop(dit, self.static_noise, self.static_prepared, self.ts, self.rng)

        self._replay, self.static_out = capture(loop, dev, generators=(self.rng,))

    def run(self, noise: torch.Tensor, prepared: PreparedConditioning,
            generator: torch.Generator | None) -> torch.Tensor:
        if noise.shape != self.static_noise.shape or noise.dtype != self.static_noise.dtype:
            raise ValueError(f"noise {tuple(noise.shape)} {noise.dtype} does not match the captured "
                             f"{tuple(self.static_noise.shape)} {self.static_noise.dtype}")
        source = _source_generator(generator, noise.device)
        self.static_noise.copy_(noise)
        _load_prepared(self.static_prepared, prepared)
        self.rng.set_state(source.get_state())
        self._replay()
        source.set_state(self.rng.get_state())  # the caller's generator advances as if drawn eagerly
        return self.static_out.clone()


class TeacherStepGraph:
    """One teacher Euler step ``x + dt * v(x, t)`` captured once, replayed every step.

    The guidance scale is a device scalar read inside the graph, so one capture serves
    every ``cfg_scale`` of its shape; ``load`` copies a generation's conditioning in once,
    ``step`` then only copies the latent and two scalars per step.
    """

    def __init__(self, dit: AcceleratedDiT, x: torch.Tensor, prepared: PreparedConditioning):
        dev = x.device
        self.static_x = x.clone()
        self.static_t = torch.zeros(x.shape[0], dtype=x.dtype, device=dev)
        self.static_dt = torch.zeros((), dtype=torch.float32, device=dev)
        self.static_cfg = torch.full((), float(prepared.cfg_scale), dtype=torch.float32, device=dev)
        self.static_prepared = _static_prepared(prepared)
        guidance = self.static_cfg if prepared.guided else None

        def step():
            v = dit.step(self.static_x, self.static_t, self.static_prepared, cfg_scale=guidance)
            return self.static_x + self.static_dt * v

        self._replay, self.static_out = capture(step, dev)

    def load(self, prepared: PreparedConditioning) -> None:
        """Copy one generation's prepared conditioning and guidance scale into the graph."""
        _load_prepared(self.static_prepared, prepared)
        self.static_cfg.fill_(float(prepared.cfg_scale))

    def step(self, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
        """One Euler step from ``x`` at time ``t``; the result lives in a buffer the next step rewrites."""
        self.static_x.copy_(x)
        self.static_t.fill_(t)
        self.static_dt.fill_(dt)
        self._replay()
        return self.static_out


def turbo_graph(dit: AcceleratedDiT, noise: torch.Tensor, prepared: PreparedConditioning,
                steps: int) -> TurboGraph:
    """The cached ``TurboGraph`` for this (batch, shape, dtype, steps), captured once."""
    key = ("turbo", tuple(noise.shape), noise.dtype, steps)
    runner = dit._graphs.get(key)
    if runner is None:
        runner = TurboGraph(dit, noise, prepared, steps)
        dit._graphs[key] = runner
    return runner


def teacher_step_graph(dit: AcceleratedDiT, x: torch.Tensor, prepared: PreparedConditioning) -> TeacherStepGraph:
    """The cached ``TeacherStepGraph`` for this (shape, dtype, guided), captured once."""
    key = ("teacher", tuple(x.shape), x.dtype, prepared.guided)
    runner = dit._graphs.get(key)
    if runner is None:
        runner = TeacherStepGraph(dit, x, prepared)
        dit._graphs[key] = runner
    return runner
