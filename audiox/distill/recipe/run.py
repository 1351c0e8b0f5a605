"""The stage driver: :func:`run_recipe` runs the stages in :data:`STAGES` order, each in
``DIR/<stage>/`` and each resumable, and writes ``DIR/metrics.json``, ``DIR/metrics.png`` and
``DIR/export``.

Resume: ``DIR/recipe.json`` holds the settings a run started with; a resumed run must match
them except for the budget, the thread count and the checkpoint spacing. A stage that
finished, by steps or by time, stays finished, since the later stages were built on it; an
unfinished one continues from its last checkpoint with what is left of its time share (the
elapsed time is kept in its state).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

from ..evaluate import plot_metrics, write_metrics
from ..toy import torch_threads
from .checkpoint import StepHook, write_json
from .classifier import run_classifier
from .config import RecipeConfig
from .evaluation import run_eval
from .export import export_pipeline, round_shipped
from .latents import run_latents
from .model_helpers import build_model
from .student import run_student
from .teacher import run_teacher
from .text import run_text
from .vae import run_vae

__all__ = ["STAGES", "run_recipe"]

STAGES = ("vae", "latents", "text", "teacher", "classifier", "student", "eval", "export")
# Settings a resumed run may change; any other difference would mix two different models.
_RESUME_FREE_SETTINGS = ("budget_minutes", "num_threads", "checkpoint_every")


def _check_out(cfg: RecipeConfig, out: str, resume: bool) -> None:
    """Refuse to write over started stages without ``resume``, and to resume with other
    settings; then record ``cfg`` in ``DIR/recipe.json``."""
    path = os.path.join(out, "recipe.json")
    started = [s for s in STAGES if os.path.exists(os.path.join(out, s))]
    if started and not resume:
        raise FileExistsError(f"{out} already holds stages {started}: pass --resume to continue, or a new --out")
    if resume and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        mine = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE_SETTINGS}
        theirs = {k: v for k, v in saved.items() if k not in _RESUME_FREE_SETTINGS}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"{path}: the run was started with other settings ({diff}); use a new --out")
    os.makedirs(out, exist_ok=True)
    write_json(path, cfg.to_dict())


@contextlib.contextmanager
def _timed(timings: dict, name: str):
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0


def _summary(cfg: RecipeConfig, model_name: str, stage_states: dict, generator_steps: int) -> str:
    """The export's description: what was trained, how long."""
    sel = stage_states["student"].get("selected") if cfg.student_select_every else None
    picked = f" (the EMA after {sel['generator_steps']} picked on training-split prompts)" if sel else ""
    return (f"AudioX '{model_name}' trained from scratch by `audiox distill --recipe` on the procedural "
            f"captioned audio set (sine/square/saw tones, kick drums, noise bursts, chirps at 44.1 kHz): "
            f"VAE {stage_states['vae']['step']} steps, text encoder {stage_states['text']['step']} steps, "
            f"teacher {stage_states['teacher']['step']} steps on "
            f"{stage_states['latents']['step']} clips, {generator_steps} DMD generator updates{picked} "
            f"({cfg.dmd_config().student_timesteps} student steps). It only knows that set's captions.")


def run_recipe(cfg: RecipeConfig, out: str, resume: bool = False, progress: bool = True,
               on_step: Optional[StepHook] = None) -> dict:
    """All stages; returns the metrics dict also written to ``DIR/metrics.json``.
    ``on_step(stage, step)`` is called after every update (tests use it to interrupt)."""
    _check_out(cfg, out, resume)
    timings, stage_states = {}, {}
    with torch_threads(cfg.num_threads):
        model = build_model(cfg)
        model.eval().requires_grad_(False)  # each stage switches on what it trains
        for name, run_stage in (("vae", run_vae), ("latents", run_latents), ("text", run_text),
                                ("teacher", run_teacher)):
            with _timed(timings, name):
                stage_states[name] = run_stage(cfg, out, model, progress, on_step)
        with _timed(timings, "classifier"):
            stage_states["classifier"], classifier = run_classifier(cfg, out, model, progress, on_step)
        with _timed(timings, "student"):
            stage_states["student"], trainer, student = run_student(cfg, out, model, classifier, progress, on_step)
        round_shipped(cfg, model, student)
        with _timed(timings, "eval"):
            ev = run_eval(cfg, out, model, student, classifier, progress, on_step)
        summary = _summary(cfg, model.cfg.name, stage_states, trainer.generator_steps)
        with _timed(timings, "export"):
            export_path, export_bytes = export_pipeline(cfg, out, model, student, summary)
    extra = {
        "held_out_prompts": ev.get("prompts", []),
        "stages": {k: {kk: v.get(kk) for kk in ("step", "total_steps", "elapsed_s", "stopped_by", "last_logs",
                                                 "generator_steps", "std", "check", "selected")}
                   for k, v in stage_states.items()},
        "this_run_seconds": timings,
        "eval_cfg_scale": cfg.eval_cfg_scale,
        "dmd_guidance_scale": cfg.dmd_config().guidance_scale,
        "export": {"path": export_path, "bytes": export_bytes},
        "budget_minutes": cfg.budget_minutes,
    }
    write_metrics(ev["systems"], extra, os.path.join(out, "metrics.json"))
    plot_metrics(ev["systems"], os.path.join(out, "metrics.png"))
    return {"systems": ev["systems"], **extra}
