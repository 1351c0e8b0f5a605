"""Stage 6, ``student``: 4-step DMD from the teacher with :class:`~audiox.distill.dmd.DMDTrainer`.

The student's EMA is scored on training-split prompts every ``cfg.student_select_every``
updates (:func:`score_student`) and the best-scoring one is kept in
``DIR/student/selected_ema.safetensors``: DMD's EMA passes its best pitch early and then
drifts, so the final EMA is not the one to ship.
"""
from __future__ import annotations

import copy
import os
from typing import Optional

import torch
import torch.nn as nn
from safetensors.torch import load_model, save_model

from ..._io import atomic_path
from ...model import AudioXModel
from ...sampling import draw_noise, sample_turbo
from ..classifier import ProceduralAudioClassifier, classify
from ..dmd import DMDTrainer
from ..evaluate import audio_metrics, fit_length, procedural_dataset, render, spectrograms
from .checkpoint import StageClock, StepHook, read_state, stage_rng, write_json
from .config import RecipeConfig
from .latents import load_latents
from .model_helpers import caption_condition, clip_samples, decode_latents

__all__ = ["selection_prompts", "score_student", "run_student"]


class _BudgetSpent(Exception):
    """Raised from the DMD trainer's log hook when the student's time share is spent."""


@torch.no_grad()
def selection_prompts(cfg: RecipeConfig, model: AudioXModel, classifier: ProceduralAudioClassifier) -> dict:
    """The prompts :func:`score_student` uses: ``student_select_items`` items of the *training*
    split (a seed of their own, so neither the training clips nor the held-out evaluation),
    with fixed noise. Returns cond, noise, params and the clips' classifier embeddings (the
    FD's reference)."""
    mc = model.cfg
    length = clip_samples(model)
    ds = procedural_dataset("train", length, mc.sample_rate, cfg.seed + 3_333, frequencies=cfg.train_frequencies)
    audio, captions, params = render(ds, range(cfg.student_select_items), length)
    return {"cond": caption_condition(model, captions, stage_rng(cfg.seed, "select", 0)),
            "noise": draw_noise((len(params), mc.dit.io_channels, mc.dit.latent_frames),
                                stage_rng(cfg.seed, "select", 1), "cpu"),
            "params": params, "reference": classify(classifier, spectrograms(audio, mc.sample_rate))["embedding"]}


@torch.no_grad()
def score_student(cfg: RecipeConfig, model: AudioXModel, dit: nn.Module, classifier: ProceduralAudioClassifier,
                  prompts: dict) -> dict:
    """Metrics of ``dit`` as a 4-step student on :func:`selection_prompts`, and its selection
    ``score`` (lower is better): the median tone error in semitones plus 12 semitones per unit
    of kind error (hearing a drum for a tone counts as an octave off)."""
    mc = model.cfg
    length = clip_samples(model)
    steps = len(cfg.dmd_config().student_timesteps)
    latents = sample_turbo(dit, prompts["noise"], steps=steps, cross_attn_cond=prompts["cond"],
                           generator=stage_rng(cfg.seed, "select", 2))
    m = audio_metrics(classifier, fit_length(decode_latents(model, latents), length), prompts["params"],
                      mc.sample_rate, prompts["reference"])
    m["score"] = (m["median_semitone_error"] or 0.0) + 12.0 * (1.0 - m["kind_accuracy"])
    return m


def run_student(cfg: RecipeConfig, out: str, model: AudioXModel, classifier: ProceduralAudioClassifier,
                progress: bool, on_step: Optional[StepHook]) -> tuple:
    """DMD from the teacher DiT (MAF frozen: its condition is what the student sees). Returns
    (state, trainer, student): ``student`` is the EMA the selection picked (or the final EMA)."""
    directory = os.path.join(out, "student")
    ckpt = os.path.join(directory, "dmd")
    selected_path = os.path.join(directory, "selected_ema.safetensors")
    latents, captions = load_latents(out)
    trainer = DMDTrainer(model.dit, cfg.dmd_config())
    state = read_state(directory) or {"stage": "student", "elapsed_s": 0.0, "done": False, "selection": []}
    if DMDTrainer.has_checkpoint(ckpt):
        trainer.load(ckpt)
    selected = copy.deepcopy(trainer.ema)
    if os.path.isfile(selected_path):
        load_model(selected, selected_path)

    def result() -> tuple:
        return state, trainer, (selected if cfg.student_select_every else trainer.ema)

    if state["done"]:
        return result()

    def batch_fn(k: int) -> tuple:
        g = stage_rng(cfg.seed, "student", k)
        idx = torch.randint(0, latents.shape[0], (cfg.student_batch,), generator=g)
        with torch.no_grad():
            cond = caption_condition(model, [captions[i] for i in idx.tolist()], g)
        return latents[idx], cond

    def save_progress(done: bool, elapsed: float) -> None:
        os.makedirs(directory, exist_ok=True)
        state.update(done=done, elapsed_s=elapsed, step=trainer.step, generator_steps=trainer.generator_steps,
                     total_steps=cfg.student_updates)
        write_json(os.path.join(directory, "state.json"), state)

    prompts = selection_prompts(cfg, model, classifier) if cfg.student_select_every else None

    def select() -> None:
        """Score the EMA once per step count (also after a resume that stopped before scoring)."""
        if prompts is None or (state["selection"] and state["selection"][-1]["step"] == trainer.step):
            return
        m = score_student(cfg, model, trainer.ema, classifier, prompts)
        entry = {"step": trainer.step, "generator_steps": trainer.generator_steps,
                 **{k: m[k] for k in ("score", "median_semitone_error", "kind_accuracy", "fd")}}
        best = state.get("selected")
        if best is None or entry["score"] < best["score"]:
            selected.load_state_dict(trainer.ema.state_dict())
            os.makedirs(directory, exist_ok=True)
            with atomic_path(selected_path) as tmp:
                save_model(selected, tmp)
            state["selected"] = entry
        state["selection"].append(entry)

    clock = StageClock(cfg.seconds_for("student"), state["elapsed_s"])

    def log_fn(step: int, logs: dict) -> None:
        state.setdefault("last_logs", {}).update({k: v for k, v in logs.items() if k != "k"})
        if on_step is not None:
            on_step("student", step)
        if not clock.time_left():
            raise _BudgetSpent  # stop inside a chunk; the checkpoint is written below

    def next_stop() -> int:
        stops = [cfg.student_updates, (trainer.step // cfg.checkpoint_every + 1) * cfg.checkpoint_every]
        if cfg.student_select_every:
            stops.append((trainer.step // cfg.student_select_every + 1) * cfg.student_select_every)
        return min(stops)

    try:
        select()
        while trainer.step < cfg.student_updates and clock.time_left():
            trainer.train(batch_fn, next_stop(), progress=progress, checkpoint_dir=ckpt, log_fn=log_fn)
            if trainer.step % max(1, cfg.student_select_every) == 0 or trainer.step >= cfg.student_updates:
                select()
            save_progress(False, clock.elapsed())
    except _BudgetSpent:
        trainer.save(ckpt)
    state["stopped_by"] = "steps" if trainer.step >= cfg.student_updates else "time"
    if not DMDTrainer.has_checkpoint(ckpt):
        trainer.save(ckpt)
    select()  # the final EMA is a candidate too
    save_progress(True, clock.elapsed())
    return result()
