"""Stage 7, ``eval``: FD / kind accuracy / frequency error on the held-out split for the data,
the VAE reconstruction, the teacher at ``cfg.eval_teacher_steps`` with CFG and the student at
``cfg.eval_student_steps``; the run writes them to ``DIR/metrics.json`` and ``DIR/metrics.png``."""
from __future__ import annotations

import functools
import os
import time
from typing import Optional

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ...model import AudioXModel
from ...sampling import draw_noise, sample_teacher, sample_turbo
from ..classifier import ProceduralAudioClassifier, classify
from ..evaluate import audio_metrics, fit_length, procedural_dataset, render, spectrograms
from .checkpoint import StepHook, read_state, stage_rng, write_json
from .config import RecipeConfig
from .model_helpers import caption_condition, clip_samples, decode_latents

__all__ = ["run_eval"]


@torch.no_grad()
def run_eval(cfg: RecipeConfig, out: str, model: AudioXModel, student_dit: nn.Module,
             classifier: ProceduralAudioClassifier, progress: bool, on_step: Optional[StepHook]) -> dict:
    """Every system on the same held-out prompts and noise; per-system results are saved as
    they finish (``DIR/eval/state.json``), so a resumed evaluation only runs the rest."""
    directory = os.path.join(out, "eval")
    state_path = os.path.join(directory, "state.json")
    os.makedirs(directory, exist_ok=True)
    state = read_state(directory) or {"stage": "eval", "done": False, "systems": {}}
    if state["done"]:
        return state
    mc = model.cfg
    sr, length = mc.sample_rate, clip_samples(model)
    n = cfg.eval_items
    ds = procedural_dataset("heldout", length, sr, cfg.seed)
    prompts_audio, captions, params = render(ds, range(n), length, progress, desc="eval prompts")
    reference_audio, _, _ = render(ds, range(n, 2 * n), length, progress, desc="eval reference")
    reference = classify(classifier, spectrograms(reference_audio, sr))["embedding"]
    cond = caption_condition(model, captions, stage_rng(cfg.seed, "eval", 0))
    noise = draw_noise((n, mc.dit.io_channels, mc.dit.latent_frames), stage_rng(cfg.seed, "eval", 1), "cpu")

    def vae_recon() -> torch.Tensor:
        means = [model.pretransform.encode(prompts_audio[i:i + 4], sample=False) for i in range(0, n, 4)]
        return decode_latents(model, torch.cat(means))

    def teacher(steps: int) -> torch.Tensor:
        return decode_latents(model, sample_teacher(model.dit, noise, steps=steps, cfg_scale=cfg.eval_cfg_scale,
                                                    cross_attn_cond=cond))

    def student(steps: int) -> torch.Tensor:
        return decode_latents(model, sample_turbo(student_dit, noise, steps=steps, cross_attn_cond=cond,
                                                  generator=stage_rng(cfg.seed, "eval", 2)))

    systems = {"data": lambda: prompts_audio, "vae_recon": vae_recon}
    for s in cfg.eval_teacher_steps:
        systems[f"teacher_{s}"] = functools.partial(teacher, s)
    for s in cfg.eval_student_steps:
        systems[f"student_{s}"] = functools.partial(student, s)
    start = time.perf_counter()
    for name, make in tqdm(list(systems.items()), desc="eval", disable=not progress, dynamic_ncols=True):
        if name in state["systems"]:
            continue
        t0 = time.perf_counter()
        audio = fit_length(make(), length)
        state["systems"][name] = {**audio_metrics(classifier, audio, params, sr, reference),
                                  "seconds": time.perf_counter() - t0}
        write_json(state_path, state)
        if on_step is not None:
            on_step("eval", len(state["systems"]))
    state.update(done=True, seconds=time.perf_counter() - start, prompts=captions)
    write_json(state_path, state)
    return state
