"""A torch.profiler Chrome trace of one generation, with named ranges.

Ranges (record_function, and NVTX on CUDA so Nsight Systems shows them too):
`generation` around the call; `step <k>` around each DiT forward; `conditioning:<name>`
around each conditioning module; `decode` around the VAE decode. They are attached with
module hooks from outside, because benchmarks/ only uses public APIs: the DiT is found by
its class, a VAE by a `decode` method or a name containing vae/pretransform/decoder, and
every other top-level module counts as conditioning.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.benchmarks import workloads

_VAE_NAMES = ("vae", "pretransform", "decoder", "autoencoder")


class _Range:
    """record_function + NVTX range opened and closed from separate hooks."""

    def __init__(self):
        self._stack = []

    def push(self, name: str) -> None:
        rf = torch.profiler.record_function(name)
        rf.__enter__()
        self._stack.append(rf)
        if torch.cuda.is_available():
            torch.cuda.nvtx.range_push(name)

    def pop(self) -> None:
        if self._stack:
            self._stack.pop().__exit__(None, None, None)
            if torch.cuda.is_available():
                torch.cuda.nvtx.range_pop()


def _contains(module: torch.nn.Module, cls) -> bool:
    return any(isinstance(m, cls) for m in module.modules())


def instrument(obj, dit_cls) -> tuple[list, dict]:
    """Adds the ranges to `obj` (a pipeline, or a bare DiT). Returns (handles, counters)."""
    ranges = _Range()
    counters = {"step": 0}
    handles = []

    def hook_module(m: torch.nn.Module, name_fn):
        def pre(mod, args):
            ranges.push(name_fn())

        def post(mod, args, out):
            ranges.pop()

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))

    def step_name():
        k = counters["step"]
        counters["step"] += 1
        return f"step {k}"

    def wrap_decode(owner, attr):
        fn = getattr(owner, attr)

        def decode(*a, **kw):
            ranges.push("decode")
            try:
                return fn(*a, **kw)
            finally:
                ranges.pop()

        setattr(owner, attr, decode)
        handles.append(_Restore(owner, attr))

    def visit(name: str, m: torch.nn.Module):
        if isinstance(m, dit_cls):
            hook_module(m, step_name)
        elif _contains(m, dit_cls):
            for child_name, child in m.named_children():
                visit(child_name, child)
        elif callable(getattr(m, "decode", None)):
            wrap_decode(m, "decode")
        elif any(v in name.lower() for v in _VAE_NAMES):
            hook_module(m, lambda: "decode")
        else:
            hook_module(m, lambda n=name: f"conditioning:{n}")

    if isinstance(obj, torch.nn.Module):
        visit(type(obj).__name__, obj)
    else:
        for name, v in list(vars(obj).items()):
            if isinstance(v, torch.nn.Module):
                visit(name, v)
    return handles, counters


class _Restore:
    """Undoes a wrapped method, with the same remove() as a hook handle."""

    def __init__(self, owner, attr):
        self.owner, self.attr = owner, attr

    def remove(self):
        with contextlib.suppress(AttributeError):
            delattr(self.owner, self.attr)


def profile_generation(preset: str = "tiny", device=None, out: str | Path = "trace.json", mode: str = "turbo",
                       steps: int = workloads.TURBO_STEPS, progress: Callable[[str], None] | None = None) -> dict:
    """Profiles one warm generation through AudioXPipeline; writes a Chrome trace to `out`.

    progress: called with a line as each long phase starts (building, warm-up, the traced
      generation), so that a caller can say what is running.
    Returns {"trace": path, "level": "e2e", "ranges": {name: total ms}, "steps_seen": k}.
    """
    say = progress or (lambda line: None)
    dev = workloads.resolve_device(device)
    say(f"building the {preset} pipeline on {dev} ...")
    prep = workloads.prepare_pipeline(preset, dev, "eager")
    w = workloads.e2e_workload(prep, mode, steps, group="profile")
    say(f"warm-up generation ({mode}, {steps} steps; not traced) ...")
    w.fn()  # warm: the trace shows steady state, not compilation
    say(f"tracing one generation -> {out} ...")
    handles, counters = instrument(prep.obj, MMDiffusionTransformer)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            with torch.profiler.record_function("generation"):
                w.fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
    finally:
        for h in handles:
            h.remove()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out))
    ranges = {}
    for ev in prof.key_averages():
        if ev.key == "generation" or ev.key.startswith(("step ", "conditioning:", "decode")):
            ranges[ev.key] = ev.cpu_time_total / 1e3
    return {"trace": str(out), "level": "e2e", "ranges": ranges, "steps_seen": counters["step"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def read_trace_names(path: str | Path) -> set[str]:
    """Names of all events in a Chrome trace file (for checks)."""
    data = json.loads(Path(path).read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return {e.get("name") for e in events if isinstance(e, dict)}
