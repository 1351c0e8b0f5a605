"""What makes every stage resumable: random streams keyed by (seed, stage, step), the stage
folder's checkpoint (weights, optimizer, ``state.json``), the stage's time budget, and the
step loop that ties them together (:func:`train_stage`).

A resumed run ends where an uninterrupted one does: every random draw is a function of the
step, and after each checkpoint training continues from the stored numbers, as a resume would.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Callable, Optional

import torch
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from ..._io import atomic_directory, atomic_path
from .config import RecipeConfig

__all__ = ["RNG_STREAMS", "StepHook", "StageClock", "stage_rng", "seeded_global_rng", "read_state", "write_json",
           "save_stage", "load_stage", "train_stage", "optimizer_step"]

StepHook = Callable[[str, int], None]
"""``on_step(stage, step)``, called after every update (tests use it to interrupt a run)."""

# Random-stream ids. The id is part of every seed, so the order is fixed, not the stage order
# (the classifier's stream comes after the student's, though the classifier runs first):
# reordering would change every draw of a stage. New streams go at the end.
RNG_STREAMS = ("vae", "latents", "text", "teacher", "student", "classifier", "eval", "export", "select")


def stage_rng(seed: int, stage: str, step: int) -> torch.Generator:
    """A generator for (seed, stage, step): resumed runs draw what uninterrupted ones drew."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + RNG_STREAMS.index(stage) * 7_919_993 + step * 104_729 + 1) % (2 ** 63 - 1))
    return g


@contextlib.contextmanager
def seeded_global_rng(seed: int, stage: str, step: int):
    """Seed torch's global RNG for one update and restore it after: modules that draw from
    it (the MAF's dropout) then repeat their draws when a run is resumed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=stage_rng(seed, stage, step + 10 ** 9))))
        yield


class StageClock:
    """A stage's running time against its share of the budget: the seconds earlier runs spent
    (kept in its state) plus this run's."""

    def __init__(self, budget_s: float, spent_before_s: float):
        self.budget_s, self.spent_before_s, self.start = budget_s, spent_before_s, time.perf_counter()

    def elapsed(self) -> float:
        return self.spent_before_s + time.perf_counter() - self.start

    def time_left(self) -> bool:
        return self.elapsed() < self.budget_s


def read_state(directory: str) -> Optional[dict]:
    """The stage's ``state.json``, or None if the stage has not saved one yet."""
    path = os.path.join(directory, "state.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj: dict, indent: int = 2) -> None:
    """``obj`` as JSON at ``path``, written beside it and renamed (never half-written)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)


def save_stage(directory: str, modules: dict, optimizer: Optional[torch.optim.Optimizer], state: dict) -> None:
    """Weights (safetensors per module), optimizer (torch.save, loadable with weights_only=True)
    and the JSON state, written to a temporary folder and swapped in, so an interruption
    while saving leaves the previous checkpoint whole."""
    with atomic_directory(directory) as tmp:
        for name, module in modules.items():
            save_model(module, os.path.join(tmp, f"{name}.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        write_json(os.path.join(tmp, "state.json"), state)


def load_stage(directory: str, modules: dict, optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
    """Load what :func:`save_stage` wrote into ``modules`` (and ``optimizer``); returns the state."""
    state = read_state(directory)
    if state is None:
        raise FileNotFoundError(f"no stage checkpoint in {directory!r} (missing state.json)")
    for name, module in modules.items():
        load_model(module, os.path.join(directory, f"{name}.safetensors"))
    opt_path = os.path.join(directory, "optimizer.pt")
    if optimizer is not None and os.path.isfile(opt_path):
        optimizer.load_state_dict(torch.load(opt_path, weights_only=True))
    return state


def train_stage(name: str, out: str, cfg: RecipeConfig, modules: dict, optimizer: torch.optim.Optimizer,
                step_fn: Callable[[int], dict], total_steps: int, progress: bool,
                on_step: Optional[StepHook] = None, extra_state: Optional[dict] = None) -> dict:
    """Run ``step_fn(step)`` (one optimizer update, returns float logs) until ``total_steps``
    or the stage's time share is spent, checkpointing every ``cfg.checkpoint_every`` steps.
    A finished stage (by steps or by time) is loaded and skipped, since the later stages were
    built on it; an unfinished one continues from its step with the time it has left."""
    directory = os.path.join(out, name)
    state = {"stage": name, "step": 0, "elapsed_s": 0.0, "done": False, "stopped_by": None,
             "total_steps": total_steps, "last_logs": {}, **(extra_state or {})}
    if read_state(directory) is not None:
        state.update(load_stage(directory, modules, optimizer))
        if state["done"]:
            return state
    bar = tqdm(total=total_steps, initial=state["step"], desc=name, disable=not progress, dynamic_ncols=True)
    clock = StageClock(cfg.seconds_for(name), state["elapsed_s"])
    try:
        while state["step"] < total_steps and clock.time_left():
            with seeded_global_rng(cfg.seed, name, state["step"]):
                logs = step_fn(state["step"])
            for k, v in logs.items():
                if not math.isfinite(v):
                    raise FloatingPointError(f"{name} step {state['step']}: {k} is {v}")
            state["step"] += 1
            state["last_logs"] = logs
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
            if state["step"] % cfg.checkpoint_every == 0:
                state["elapsed_s"] = clock.elapsed()
                save_stage(directory, modules, optimizer, state)
                load_stage(directory, modules)  # continue from the stored numbers, as a resume would
            if on_step is not None:
                on_step(name, state["step"])
    finally:
        bar.close()
    state.update(elapsed_s=clock.elapsed(), done=True, stopped_by="steps" if state["step"] >= total_steps else "time")
    save_stage(directory, modules, optimizer, state)
    # Later stages use the weights as stored, so a run that resumes after this stage sees the
    # very same numbers (the VAE's weight norm is folded on save and split again on load,
    # which may move the last bit).
    load_stage(directory, modules)
    return state


def optimizer_step(opt: torch.optim.Optimizer, params: list, loss: torch.Tensor, lr: float) -> dict:
    """One optimizer step at learning rate ``lr`` with gradients clipped to norm 1."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return {"loss": loss.item(), "grad_norm": float(gn)}
