"""The model's pretransform: the autoencoder between waveforms and latents, under the release's names.

``AutoencoderPretransform(config)`` holds the Oobleck VAE of :mod:`.vae` (a ``VAEConfig``,
the release's) or the DDSP codec of :mod:`.ddsp_vae` (a ``DDSPConfig``, the tiny recipe's)
at ``.model``, so its keys read ``pretransform.model.*``.
"""

from __future__ import annotations

import torch
from torch import nn

from .ddsp_vae import DDSPAutoencoder, DDSPConfig
from .vae import AudioAutoencoder

__all__ = ["AutoencoderPretransform"]


class AutoencoderPretransform(nn.Module):
    """Holds the autoencoder at `.model` (so keys read `pretransform.model.*`), scale 1.0 as released."""

    def __init__(self, config=None, scale: float = 1.0):
        super().__init__()
        self.model = DDSPAutoencoder(config) if isinstance(config, DDSPConfig) else AudioAutoencoder(config)
        self.scale = scale
        self.downsampling_ratio = self.model.downsampling_ratio
        self.io_channels = self.model.io_channels
        self.encoded_channels = self.model.latent_dim
        self.sample_rate = self.model.sample_rate

    def encode(self, audio: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        return self.model.encode(audio, generator=generator, sample=sample) / self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents * self.scale)
