"""Stage 2, ``latents``: procedural train clips of the model's full length (236 latent frames
for ``tiny``) encoded to posterior means by the trained VAE, with their captions.

Tones are at any whole frequency outside the held-out notes' neighbourhoods by default
(``cfg.train_frequencies``). The clips are saved every ``cfg.latents_save_every`` items to
``DIR/latents/latents.safetensors``, the captions in its ``state.json``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..._io import atomic_directory
from ...model import AudioXModel
from ..evaluate import fit_length, procedural_dataset
from .checkpoint import StageClock, StepHook, read_state, write_json
from .config import RecipeConfig
from .model_helpers import clip_samples

__all__ = ["run_latents", "set_latent_normalization", "load_latents"]


def run_latents(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool,
                on_step: Optional[StepHook]) -> dict:
    """Encode full-length train clips; saved every ``cfg.latents_save_every`` items, resumable.
    At least 2 clips are encoded whatever the time budget."""
    directory = os.path.join(out, "latents")
    path = os.path.join(directory, "latents.safetensors")
    state = read_state(directory) or {"stage": "latents", "step": 0, "elapsed_s": 0.0, "done": False}
    mc = model.cfg
    length = clip_samples(model)
    ds = procedural_dataset("train", length, mc.sample_rate, cfg.seed, frequencies=cfg.train_frequencies)
    set_latent_normalization(out, model, ds, length)
    if state["done"]:
        return state
    latents = list(load_file(path)["latents"]) if state["step"] else []
    captions = list(state.get("captions", []))[: state["step"]]
    clock = StageClock(cfg.seconds_for("latents"), state["elapsed_s"])

    def save(done: bool) -> None:
        with atomic_directory(directory) as tmp:
            stacked = torch.stack(latents).contiguous()
            save_file({"latents": stacked}, os.path.join(tmp, "latents.safetensors"))
            state.update(step=len(latents), captions=captions, done=done, elapsed_s=clock.elapsed(),
                         shape=list(latents[0].shape), std=float(stacked.std()))
            write_json(os.path.join(tmp, "state.json"), state, indent=1)

    bar = tqdm(total=cfg.latent_items, initial=len(latents), desc="latents", disable=not progress,
               dynamic_ncols=True)
    try:
        with torch.no_grad():
            while len(latents) < cfg.latent_items and (clock.time_left() or len(latents) < 2):
                item = ds[len(latents)]
                # Posterior means: the deterministic code of each clip (the KL is small, so
                # samples would only add the VAE's own noise to the teacher's targets).
                z = model.pretransform.encode(fit_length(item["audio"], length)[None], sample=False)[0]
                latents.append(z)
                captions.append(item["caption"])
                bar.update(1)
                if len(latents) % cfg.latents_save_every == 0:
                    save(False)
                if on_step is not None:
                    on_step("latents", len(latents))
    finally:
        bar.close()
    save(True)
    return state


@torch.no_grad()
def set_latent_normalization(out: str, model: AudioXModel, ds, length: int, items: int = 64) -> None:
    """Codecs that standardise their latents per channel (the DDSP codec) get the mean / std
    of the first ``items`` train clips' posterior means, computed once and kept in
    ``DIR/latent_normalization.safetensors`` (later stages and resumed runs load it), so the
    teacher sees unit-scale channels, the pitch channel included."""
    ae = model.pretransform.model
    if not hasattr(ae, "set_latent_normalization"):
        return
    path = os.path.join(out, "latent_normalization.safetensors")
    if os.path.isfile(path):
        stats = load_file(path)
        ae.latent_mean.copy_(stats["latent_mean"])
        ae.latent_std.copy_(stats["latent_std"])
        return
    ae.latent_mean.zero_()
    ae.latent_std.fill_(1.0)
    raw = torch.cat([model.pretransform.encode(fit_length(ds[i]["audio"], length)[None], sample=False)
                     for i in range(items)])
    ae.set_latent_normalization(raw)
    save_file({"latent_mean": ae.latent_mean.clone(), "latent_std": ae.latent_std.clone()}, path)


def load_latents(out: str) -> tuple:
    """(latents (N, C, T), captions) as the ``latents`` stage saved them."""
    directory = os.path.join(out, "latents")
    state = read_state(directory)
    return load_file(os.path.join(directory, "latents.safetensors"))["latents"], state["captions"]
