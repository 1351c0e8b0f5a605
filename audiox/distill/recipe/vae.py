"""Stage 1, ``vae``: the VAE on crops of procedural train clips, then a gate on its pitch.

The loss is the multi-resolution STFT of :mod:`.stft_loss` (-80 dB floor, log-band terms),
an optional waveform L1 and a small KL term. The default VAE is the DDSP codec of
:mod:`audiox.ddsp_vae` (``vae_type="ddsp"``), since the tiny preset's Oobleck does not learn
pitch within this budget; :func:`check_vae` then gates the later stages.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ...model import AudioXModel
from ..classifier import estimate_frequency, semitone_error
from ..evaluate import fit_length, procedural_dataset
from .checkpoint import StepHook, stage_rng, train_stage
from .config import RecipeConfig
from .stft_loss import multi_resolution_stft_loss

__all__ = ["run_vae", "check_vae"]


def run_vae(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool, on_step: Optional[StepHook]) -> dict:
    """Train the model's VAE (``DIR/vae/``), then refuse to go on if :func:`check_vae` finds
    held-out tones over ``cfg.vae_max_tone_error`` semitones off."""
    ae = model.pretransform.model
    sr, crop = model.cfg.sample_rate, cfg.vae_crop_frames * ae.downsampling_ratio
    ds = procedural_dataset("train", max(crop, int(cfg.vae_clip_seconds * sr)), sr, cfg.seed)
    ae.train().requires_grad_(True)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.vae_lr, betas=(0.8, 0.99))

    def step(k: int) -> dict:
        g = stage_rng(cfg.seed, "vae", k)
        idx = torch.randint(0, len(ds), (cfg.vae_batch,), generator=g).tolist()
        clips = []
        for i in idx:
            audio = ds[i]["audio"]
            off = int(torch.randint(0, audio.shape[-1] - crop + 1, (1,), generator=g))
            clips.append(audio[:, off:off + crop])
        x = torch.stack(clips)
        mean, std = ae.posterior(x)
        z = mean + std * torch.randn(mean.shape, generator=g)
        y = ae.decode(z)[..., :crop]
        stft = multi_resolution_stft_loss(y, x, cfg.vae_stft_sizes, cfg.vae_stft_floor_db, cfg.vae_bands, sr)
        l1 = (y - x).abs().mean()
        kl = 0.5 * (mean.square() + std.square() - 2 * torch.log(std) - 1).mean()
        loss = stft + cfg.vae_l1_weight * l1 + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), "stft": stft.item(), "l1": l1.item(), "kl": kl.item()}

    state = train_stage("vae", out, cfg, {"vae": ae}, opt, step, cfg.vae_steps, progress, on_step)
    ae.eval().requires_grad_(False)
    state["check"] = check_vae(model, cfg.seed)
    gate = cfg.vae_max_tone_error
    if gate is not None and not state["check"]["median_semitone_error"] <= gate:
        c = state["check"]
        raise RuntimeError(
            f"the VAE reconstructs held-out tones {c['median_semitone_error']:.2f} semitones off (median of "
            f"{c['num_tones']}; level {c['median_level_db']:+.1f} dB), over vae_max_tone_error={gate}: the teacher "
            f"would learn from a codec that loses the pitch. Give the VAE more time (vae_minutes / vae_steps in a "
            f"new --out), or set vae_max_tone_error to null to go on anyway.")
    return state


@torch.no_grad()
def check_vae(model: AudioXModel, seed: int, num_tones: int = 16, frames: int = 32) -> dict:
    """Reconstruct ``num_tones`` held-out tones (``frames`` latent frames each) and measure
    what the later stages depend on: the pitch (median |semitone error| of the spectral
    peak) and the level (median peak gain, dB)."""
    mc = model.cfg
    length = frames * mc.downsampling_ratio
    ds = procedural_dataset("heldout", length, mc.sample_rate, seed + 1)
    errors, gains, i = [], [], 0
    while len(errors) < num_tones:
        item = ds[i]
        i += 1
        if item["params"]["kind"] != "tone":
            continue
        x = fit_length(item["audio"], length)[None]
        y = model.pretransform.decode(model.pretransform.encode(x, sample=False))
        errors.append(semitone_error(estimate_frequency(y[0], mc.sample_rate), item["params"]["freq_hz"]))
        gains.append(20 * math.log10(max(float(y.abs().max()), 1e-12) / float(x.abs().max())))
    return {"median_semitone_error": float(torch.tensor(errors).median()),
            "fraction_within_1_semitone": float((torch.tensor(errors) <= 1.0).float().mean()),
            "median_level_db": float(torch.tensor(gains).median()), "num_tones": num_tones}
