"""Oobleck VAE of AudioX-Turbo (the Stable Audio Open autoencoder), plain PyTorch.

Audio (B, 2, L) at 44.1 kHz <-> latents (B, 64, L / 2048).

Module paths mirror the official release, so that with an `AutoencoderPretransform` at
attribute `pretransform` of the top model the state dict keys are exactly the official
`pretransform.model.{encoder,decoder}.layers.<...>` keys (see tests/data/vae_keys.tsv).

Weight norm. The official convolutions are weight-normalised (`weight_g`, `weight_v`, or
with newer torch `parametrizations.weight.original0/original1`). At inference the
normalisation is a constant, so our convolutions hold one plain, already folded `weight`
(one conv call per layer, nothing recomputed per forward). Loading accepts all three
naming forms and folds `weight = g * v / ||v||` (norm over every dim but 0, as
`torch.nn.utils.weight_norm(dim=0)`). Our `state_dict()` emits the official
`weight_g` / `weight_v` layout (g = ||weight||, v = weight), so a save / load round trip
gives back the same weights and a file we write loads in the official code too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

# ----------------------------------------------------------------------------- weight norm


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Weight of a weight-normalised layer: g * v / ||v||, norm over all dims but 0.

    g: (O, 1, ..., 1), v: (O, ...). Computed in at least fp32 because the norm of a large
    fan-in in half precision loses digits that the folded weight then keeps forever.
    """
    if g.shape[0] != v.shape[0] or g.numel() != v.shape[0]:
        raise ValueError(f"weight norm: weight_g {tuple(g.shape)} does not match weight_v {tuple(v.shape)} along dim 0")
    compute = torch.promote_types(v.dtype, torch.float32)
    v32 = v.to(compute)
    norm = torch.linalg.vector_norm(v32.reshape(v.shape[0], -1), dim=1)
    norm = norm.reshape((-1,) + (1,) * (v.dim() - 1))
    return (g.to(compute).reshape(norm.shape) * v32 / norm).to(v.dtype)


def _weight_norm_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Turn `weight_g/weight_v` or `parametrizations.weight.original0/1` into `weight`."""
    for g_name, v_name in (("weight_g", "weight_v"),
                           ("parametrizations.weight.original0", "parametrizations.weight.original1")):
        g_key, v_key = prefix + g_name, prefix + v_name
        if g_key in state_dict or v_key in state_dict:
            if not (g_key in state_dict and v_key in state_dict):
                error_msgs.append(f"{prefix}: weight norm needs both {g_name} and {v_name}, found only one")
                return
            g, v = state_dict.pop(g_key), state_dict.pop(v_key)
            if prefix + "weight" in state_dict:
                error_msgs.append(f"{prefix}: both a plain weight and {g_name}/{v_name} given")
                return
            state_dict[prefix + "weight"] = fold_weight_norm(g, v)


def _weight_norm_state_dict_hook(module, state_dict, prefix, local_metadata):
    """Emit the official `weight_g` / `weight_v` pair instead of our folded `weight`."""
    w = state_dict.pop(prefix + "weight")
    norm = torch.linalg.vector_norm(w.reshape(w.shape[0], -1).float(), dim=1).to(w.dtype)
    state_dict[prefix + "weight_g"] = norm.reshape((-1,) + (1,) * (w.dim() - 1))
    state_dict[prefix + "weight_v"] = w
    return state_dict


class WNConv1d(nn.Conv1d):
    """Conv1d that loads and saves as a weight-normalised conv but runs a folded weight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._register_load_state_dict_pre_hook(_weight_norm_pre_hook, with_module=True)
        self._register_state_dict_hook(_weight_norm_state_dict_hook)


class WNConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d, weight-normalised over dim 0 of its (C_in, C_out, K) weight, folded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._register_load_state_dict_pre_hook(_weight_norm_pre_hook, with_module=True)
        self._register_state_dict_hook(_weight_norm_state_dict_hook)


# ----------------------------------------------------------------------------- blocks


class SnakeBeta(nn.Module):
    """x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2, per channel; x: (B, C, T).

    alpha and beta are stored in log scale (official `alpha_logscale=True`).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.exp()[None, :, None]
        inv_beta = 1.0 / (self.beta.exp()[None, :, None] + 1e-9)
        return x + inv_beta * torch.sin(alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """x + conv1x1(snake(conv7_dilated(snake(x)))); (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.layers = nn.Sequential(
            SnakeBeta(channels),
            WNConv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation),
            SnakeBeta(channels),
            WNConv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class EncoderBlock(nn.Module):
    """Three residual units (dilation 1, 3, 9), snake, strided conv: (B, C_in, T) -> (B, C_out, T / stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(in_channels, 1),
            ResidualUnit(in_channels, 3),
            ResidualUnit(in_channels, 9),
            SnakeBeta(in_channels),
            WNConv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    """Snake, transposed conv (kernel 2*stride), three residual units: (B, C_in, T) -> (B, C_out, T * stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.layers = nn.Sequential(
            SnakeBeta(in_channels),
            WNConvTranspose1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride,
                              padding=math.ceil(stride / 2)),
            ResidualUnit(out_channels, 1),
            ResidualUnit(out_channels, 3),
            ResidualUnit(out_channels, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ----------------------------------------------------------------------------- config


@dataclass
class VAEConfig:
    """Shape of the Oobleck VAE. `latent_dim` is the bottleneck's output (the DiT's io channels);
    the encoder emits 2 * latent_dim (mean and scale)."""

    channels: int = 128
    c_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    strides: list[int] = field(default_factory=lambda: [2, 4, 4, 8, 8])
    latent_dim: int = 64
    in_channels: int = 2
    out_channels: int = 2
    sample_rate: int = 44100

    def __post_init__(self):
        if len(self.c_mults) != len(self.strides):
            raise ValueError(f"VAEConfig: c_mults {self.c_mults} and strides {self.strides} differ in length")

    @property
    def downsampling_ratio(self) -> int:
        return math.prod(self.strides)

    @classmethod
    def full(cls) -> VAEConfig:
        """The official AudioX-Turbo VAE (156 M params)."""
        return cls()

    @classmethod
    def tiny(cls) -> VAEConfig:
        """Same topology and 2048x ratio, ~0.6 M params: for tests."""
        return cls(channels=8)


# ----------------------------------------------------------------------------- models


class OobleckEncoder(nn.Module):
    """(B, in_channels, L) -> (B, 2 * latent_dim, L / prod(strides)) (mean and scale stacked on channels)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        mults = [1] + list(config.c_mults)
        ch = config.channels
        layers: list[nn.Module] = [WNConv1d(config.in_channels, mults[0] * ch, kernel_size=7, padding=3)]
        for i, stride in enumerate(config.strides):
            layers.append(EncoderBlock(mults[i] * ch, mults[i + 1] * ch, stride))
        layers += [
            SnakeBeta(mults[-1] * ch),
            WNConv1d(mults[-1] * ch, 2 * config.latent_dim, kernel_size=3, padding=1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckDecoder(nn.Module):
    """(B, latent_dim, T) -> (B, out_channels, T * prod(strides)); no final tanh (official `final_tanh: false`)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        mults = [1] + list(config.c_mults)
        ch = config.channels
        layers: list[nn.Module] = [WNConv1d(config.latent_dim, mults[-1] * ch, kernel_size=7, padding=3)]
        for i in range(len(mults) - 1, 0, -1):
            layers.append(DecoderBlock(mults[i] * ch, mults[i - 1] * ch, config.strides[i - 1]))
        layers += [
            SnakeBeta(mults[0] * ch),
            WNConv1d(mults[0] * ch, config.out_channels, kernel_size=7, padding=3, bias=False),
            nn.Identity(),  # index 8: the official tanh slot, off in this model
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def sample_gaussian(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """mean + std * noise, the noise drawn on the generator's device so that a CPU generator
    gives the same latents whatever device the model runs on."""
    gen_device = generator.device if generator is not None else mean.device
    noise = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype).to(mean.device)
    return mean + std * noise


class VAEBottleneck(nn.Module):
    """Splits the encoder output in mean and scale and samples z = mean + std * noise.

    std = softplus(scale) + 1e-4. No parameters.
    """

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """x: (B, 2 * D, T) -> (B, D, T). `sample=False` returns the mean (the posterior mode)."""
        if x.dim() != 3 or x.shape[1] % 2:
            raise ValueError(f"VAEBottleneck.encode expects (B, 2*D, T), got {tuple(x.shape)}")
        if not sample:
            return x.chunk(2, dim=1)[0]
        return sample_gaussian(*self.posterior(x), generator)

    @staticmethod
    def posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 2 * D, T) -> (mean, std), std = softplus(scale) + 1e-4."""
        mean, scale = x.chunk(2, dim=1)
        return mean, F.softplus(scale) + 1e-4

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class AudioAutoencoder(nn.Module):
    """Encoder + VAE bottleneck + decoder. audio (B, 2, L) <-> latents (B, 64, L / 2048)."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        config = config or VAEConfig.full()
        self.config = config
        self.latent_dim = config.latent_dim
        self.downsampling_ratio = config.downsampling_ratio
        self.io_channels = config.in_channels
        self.sample_rate = config.sample_rate
        self.encoder = OobleckEncoder(config)
        self.decoder = OobleckDecoder(config)
        self.bottleneck = VAEBottleneck()

    def encode(self, audio: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """audio: (B, in_channels, L) -> latents (B, latent_dim, ~L / downsampling_ratio)."""
        return self.bottleneck.encode(self._encoder_output(audio), generator=generator, sample=sample)

    def _encoder_output(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 3 or audio.shape[1] != self.config.in_channels:
            raise ValueError(f"AudioAutoencoder.encode expects audio (B, {self.config.in_channels}, L), "
                             f"got {tuple(audio.shape)}")
        if audio.shape[-1] < self.downsampling_ratio:
            raise ValueError(f"AudioAutoencoder.encode needs at least {self.downsampling_ratio} samples, "
                             f"got {audio.shape[-1]}")
        return self.encoder(audio.to(self.encoder.layers[0].weight.dtype))

    def posterior(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, in_channels, L) -> (mean, std) of the latent posterior (for training)."""
        return self.bottleneck.posterior(self._encoder_output(audio))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, latent_dim, T) -> audio (B, out_channels, T * downsampling_ratio)."""
        if latents.dim() != 3 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"AudioAutoencoder.decode expects latents (B, {self.latent_dim}, T), "
                             f"got {tuple(latents.shape)}")
        latents = latents.to(self.decoder.layers[0].weight.dtype)
        return self.decoder(self.bottleneck.decode(latents))
