"""The whole AudioX model: conditioners, MAF, DiT and VAE under their official names.

``AudioXModel`` mirrors the release's ``ConditionedDiffusionModelWrapper``, so one
official checkpoint loads into it with no renaming:

- ``model.model.<...>``: the DiT (``MMDiTWrapper.model`` = ``MMDiffusionTransformer``)
- ``maf_block.<...>``: the MAF block
- ``conditioner.conditioners.<id>.<...>``: video and audio-prompt conditioners (T5 is kept
  out of the module tree and the checkpoint, as in the release)
- ``pretransform.model.{encoder,decoder}.<...>``: the Oobleck VAE
"""

from __future__ import annotations

import torch
from torch import nn

from .conditioners import ConditionerConfig, MultiConditioner, T5Conditioner
from .config import AudioXConfig
from .dit import MMDiffusionTransformer, MMDiTWrapper
from .maf import MAF_Block, fuse_modalities
from .pretransform import AutoencoderPretransform
from .synchformer import SynchformerConfig
from .vae import VAEConfig

__all__ = ["AudioXModel", "vae_config_for", "conditioner_config_for", "synchformer_config_for"]

COND_IDS = ("video_prompt", "text_prompt", "audio_prompt")


def vae_config_for(cfg: AudioXConfig):
    """The VAE described by ``cfg.vae`` (a preset name, ``{"type": "ddsp", "config": {...}}``
    for the procedural recipe's codec, or the official pretransform JSON)."""
    if cfg.vae.get("type") == "ddsp":
        from .ddsp_vae import DDSPConfig

        return DDSPConfig.from_dict({"sample_rate": cfg.sample_rate, **cfg.vae.get("config", {})})
    if cfg.vae.get("preset") == "tiny":
        return VAEConfig.tiny()
    inner = cfg.vae.get("config", {})
    dec = inner.get("decoder", {}).get("config", {})
    if not dec:
        return VAEConfig.full()
    return VAEConfig(
        channels=int(dec.get("channels", 128)),
        c_mults=list(dec.get("c_mults", [1, 2, 4, 8, 16])),
        strides=list(dec.get("strides", [2, 4, 4, 8, 8])),
        latent_dim=int(inner.get("latent_dim", dec.get("latent_dim", 64))),
        in_channels=int(inner.get("io_channels", 2)),
        out_channels=int(dec.get("out_channels", 2)),
        sample_rate=cfg.sample_rate,
    )


def conditioner_config_for(cfg: AudioXConfig) -> ConditionerConfig:
    if cfg.conditioning.get("preset") == "tiny":
        return ConditionerConfig.tiny()
    cc = ConditionerConfig.full()
    cc.vae = vae_config_for(cfg)
    return cc


def synchformer_config_for(cfg: AudioXConfig) -> SynchformerConfig:
    """The Synchformer that feeds this model's video conditioner (not part of its checkpoint)."""
    return SynchformerConfig.tiny() if cfg.conditioning.get("preset") == "tiny" else SynchformerConfig.full()


class AudioXModel(nn.Module):
    """Conditioners + MAF + DiT + VAE. See :class:`audiox.pipeline.AudioXPipeline` to generate."""

    def __init__(self, cfg: AudioXConfig, text_encoder: T5Conditioner | None = None, with_text: bool = True):
        super().__init__()
        self.cfg = cfg
        self.model = MMDiTWrapper(cfg.dit)
        self.maf_block = MAF_Block(cfg.maf)
        self.conditioner = MultiConditioner(conditioner_config_for(cfg), text=text_encoder, with_text=with_text)
        self.pretransform = AutoencoderPretransform(vae_config_for(cfg))

    @property
    def dit(self) -> MMDiffusionTransformer:
        return self.model.model

    def conditioning_tokens(self, cond: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Conditioner outputs -> the DiT's ``cross_attn_cond`` (B, 384, D) via MAF (once per generation)."""
        missing = [k for k in COND_IDS if k not in cond]
        if missing:
            raise ValueError(f"conditioning is missing {missing}")
        video, text, audio = (cond[k][0] for k in COND_IDS)
        dtype = next(self.maf_block.parameters()).dtype
        return fuse_modalities(self.maf_block, video.to(dtype), text.to(dtype), audio.to(dtype))
