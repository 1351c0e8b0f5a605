"""The AudioX model as the stages use it: built at its seeded initialisation, captions to the
DiT's condition, latents to audio."""
from __future__ import annotations

import torch

from ...model import AudioXModel
from .config import RecipeConfig

__all__ = ["build_model", "clip_samples", "text_conditioner", "caption_condition", "decode_latents"]


def build_model(cfg: RecipeConfig) -> AudioXModel:
    """The model at its seeded initialisation (the frozen T5 stand-in included), without
    touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AudioXModel(cfg.model_config())


def clip_samples(model: AudioXModel) -> int:
    """Audio samples of one clip of the model's full latent length."""
    return model.cfg.dit.latent_frames * model.cfg.downsampling_ratio


def text_conditioner(model: AudioXModel):
    """The model's T5 text conditioner (the ``text`` stage trains its encoder)."""
    return model.conditioner.conditioners["text_prompt"]


def caption_condition(model: AudioXModel, captions, generator: torch.Generator) -> torch.Tensor:
    """Captions -> the DiT's cross-attention condition (B, 384, D) through the conditioners
    (frozen, no grad) and the MAF (differentiable)."""
    cond = model.conditioner(text=list(captions), device="cpu", generator=generator)
    return model.conditioning_tokens(cond)


def decode_latents(model: AudioXModel, latents: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Latents (N, C, T) -> audio (N, channels, samples) through the model's VAE, in batches."""
    return torch.cat([model.pretransform.decode(latents[i:i + batch]) for i in range(0, latents.shape[0], batch)])
