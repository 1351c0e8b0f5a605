"""A small DDSP-style VAE for the procedural ``tiny`` recipe (``cfg.vae = {"type": "ddsp"}``).

Why it exists: the ``tiny`` preset's 8-channel Oobleck VAE did not learn to reproduce a pure
tone in the recipe's CPU budget (held-out tones 15 semitones off, 8-13 dB too quiet after
4000-6000 steps; a spectral loss gives almost no gradient toward the right frequency, and a
waveform decoder must learn phase-coherent oscillation, which codecs learn over 100k+ GAN
steps). This codec makes coherent sinusoids by construction, as DDSP does:

* **latent** (B, 64, L / 2048), the Oobleck's shape, so the DiT is unchanged. Channel 0 is
  the analysed pitch: the strongest spectral peak of each 2048-sample frame (8192-point FFT,
  parabolic refinement), as log-frequency scaled to [-1, 1] over 30 Hz .. 5 kHz; it is
  measured, not learned (its posterior std is ~0). Channels 1..63 are a learned VAE code of a
  log-frequency spectrogram (128 bands per channel, hop 512).
* **decoder**: a small conv net (latent rate, then 4x up to the 512-sample control rate)
  emits per control frame the weights of ``harmonics`` partials (softmax), an amplitude per audio channel, ``noise_bands``
  filtered-noise band gains and a noise gain per channel. The harmonic oscillator's phase is
  the running sum of the (interpolated) frequency, so a steady tone stays in phase across
  frames; partials above 0.95 x Nyquist are muted; the noise is a fixed-seed excitation
  shaped in the STFT domain (so decoding is deterministic).

It knows nothing beyond harmonic + noise sounds: right for the procedural set (tones, kicks,
noise bursts, chirps), wrong for speech or music. The release's Oobleck VAE stays the model
for the full-size AudioX.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DictConfigMixin
from .vae import sample_gaussian

__all__ = ["DDSPConfig", "DDSPAutoencoder", "log_band_filterbank", "analyse_log_f0"]


@dataclass
class DDSPConfig(DictConfigMixin):
    latent_dim: int = 64
    downsampling_ratio: int = 2048
    control_hop: int = 512
    n_fft: int = 2048
    harmonics: int = 40
    noise_bands: int = 48
    input_bands: int = 128
    width: int = 256
    sample_rate: int = 44100
    f0_min_hz: float = 30.0
    f0_max_hz: float = 5000.0
    noise_scale: float = 0.05
    io_channels: int = 2

    def __post_init__(self):
        if self.downsampling_ratio % self.control_hop:
            raise ValueError(f"DDSPConfig: downsampling_ratio {self.downsampling_ratio} is not a multiple of "
                             f"control_hop {self.control_hop}")
        if self.io_channels != 2:
            raise ValueError(f"DDSPConfig: only stereo (io_channels=2) is supported, got {self.io_channels}")
        if self.latent_dim < 2:
            raise ValueError(f"DDSPConfig: latent_dim must be >= 2 (pitch + code), got {self.latent_dim}")


def log_band_filterbank(n_fft: int, bands: int, sample_rate: int, low_hz: float = 30.0,
                        high_hz: float = 18000.0) -> torch.Tensor:
    """(bands, n_fft // 2 + 1) triangular filters (peak 1) evenly spaced in log frequency;
    a band narrower than an FFT bin takes its nearest bin, so none is empty."""
    edges = np.geomspace(low_hz, high_hz, bands + 2)
    f = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    w = np.zeros((bands, f.size))
    for b in range(bands):
        lo, c, hi = edges[b], edges[b + 1], edges[b + 2]
        w[b] = np.clip(np.minimum((f - lo) / (c - lo), (hi - f) / (hi - c)), 0.0, None)
    for b in np.where(w.sum(1) == 0)[0]:
        w[b, int(np.argmin(np.abs(f - edges[b + 1])))] = 1.0
    return torch.from_numpy(w.astype(np.float32))


def analyse_log_f0(audio: torch.Tensor, frame: int, sample_rate: int, low_hz: float = 40.0,
                   high_hz: float = 5000.0) -> torch.Tensor:
    """(B, C, L) with L a multiple of ``frame`` -> (B, L / frame) log of the strongest peak's
    frequency per frame (mono mix, 4 x frame FFT, Hann, parabolic refinement)."""
    x = audio.float().mean(1)
    n = 4 * frame
    mag = torch.stft(x, n, frame, window=torch.hann_window(n, device=x.device), return_complex=True,
                     center=True, pad_mode="constant")[..., :-1].abs() + 1e-9
    lo, hi = int(low_hz * n / sample_rate), int(high_hz * n / sample_rate)
    k = mag[:, lo:hi].argmax(1) + lo
    la, lb, lc = (torch.log(mag.gather(1, (k + d)[:, None]))[:, 0] for d in (-1, 0, 1))
    den = la - 2 * lb + lc
    off = torch.where(den < 0, 0.5 * (la - lc) / den.clamp(max=-1e-12), torch.zeros_like(den)).clamp(-0.5, 0.5)
    return torch.log((k + off) * sample_rate / n)


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv1d(c, c, 3, padding=1)
        self.c2 = nn.Conv1d(c, c, 1)

    def forward(self, x):
        return x + self.c2(F.gelu(self.c1(F.gelu(x))))


class DDSPAutoencoder(nn.Module):
    """audio (B, 2, L) <-> latents (B, latent_dim, L / downsampling_ratio); see the module doc."""

    def __init__(self, config: DDSPConfig | None = None):
        super().__init__()
        self.config = c = config or DDSPConfig()
        self.latent_dim = c.latent_dim
        self.downsampling_ratio = c.downsampling_ratio
        self.io_channels = c.io_channels
        self.sample_rate = c.sample_rate
        up = c.downsampling_ratio // c.control_hop
        w = c.width
        self.encoder = nn.Sequential(nn.Conv1d(2 * c.input_bands, w, 1), _Res(w), nn.Conv1d(w, w, up, stride=up),
                                     _Res(w), nn.Conv1d(w, 2 * (c.latent_dim - 1), 3, padding=1))
        self._controls = c.harmonics + 2 + c.noise_bands + 2
        self.decoder = nn.Sequential(nn.Conv1d(c.latent_dim, w, 3, padding=1), _Res(w),
                                     nn.ConvTranspose1d(w, w, up, stride=up), _Res(w), _Res(w), nn.GELU(),
                                     nn.Conv1d(w, self._controls, 1))
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        self.register_buffer("input_filterbank", log_band_filterbank(c.n_fft, c.input_bands, c.sample_rate),
                             persistent=False)
        self.register_buffer("noise_filterbank", log_band_filterbank(c.n_fft, c.noise_bands, c.sample_rate),
                             persistent=False)
        # Channel 0 <-> log frequency: log f = centre + pitch * half, pitch in [-1, 1].
        self._centre = (math.log(c.f0_min_hz) + math.log(c.f0_max_hz)) / 2
        self._half = (math.log(c.f0_max_hz) - math.log(c.f0_min_hz)) / 2
        # Per-channel standardisation of the latents the DiT sees (identity while the codec
        # trains; set from data by :meth:`set_latent_normalization`, saved with the weights).
        self.register_buffer("latent_mean", torch.zeros(c.latent_dim))
        self.register_buffer("latent_std", torch.ones(c.latent_dim))
        self._register_load_state_dict_pre_hook(self._default_normalization)

    def _default_normalization(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the normalisation existed load as identity."""
        for name in ("latent_mean", "latent_std"):
            if prefix + name not in state_dict:
                buf = getattr(self, name)
                state_dict[prefix + name] = torch.ones_like(buf) if name == "latent_std" else torch.zeros_like(buf)

    @torch.no_grad()
    def set_latent_normalization(self, raw_means: torch.Tensor) -> None:
        """Standardise each latent channel with the mean / std of ``raw_means``
        (N, latent_dim, T) posterior means taken with the identity normalisation."""
        if raw_means.dim() != 3 or raw_means.shape[1] != self.latent_dim:
            raise ValueError(f"raw_means must be (N, {self.latent_dim}, T), got {tuple(raw_means.shape)}")
        flat = raw_means.transpose(0, 1).reshape(self.latent_dim, -1).float()
        self.latent_mean.copy_(flat.mean(1))
        self.latent_std.copy_(flat.std(1).clamp_min(1e-3))

    def _normalize(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.latent_mean[None, :, None]) / self.latent_std[None, :, None]

    # ------------------------------------------------------------------ encode

    def _check_audio(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 3 or audio.shape[1] != self.io_channels:
            raise ValueError(f"DDSPAutoencoder.encode expects audio (B, {self.io_channels}, L), got {tuple(audio.shape)}")
        if audio.shape[-1] < self.downsampling_ratio:
            raise ValueError(f"DDSPAutoencoder.encode needs at least {self.downsampling_ratio} samples, "
                             f"got {audio.shape[-1]}")
        rest = audio.shape[-1] % self.downsampling_ratio
        if rest:  # right-pad to whole frames (as the Oobleck's convolutions cover a partial frame)
            audio = F.pad(audio, (0, self.downsampling_ratio - rest))
        return audio.float()

    def posterior(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, 2, L) -> (mean, std), each (B, latent_dim, ceil(L / downsampling_ratio)),
        standardised per channel; channel 0 is the analysed pitch with std 1e-4 (the
        bottleneck's floor) before standardisation."""
        c = self.config
        audio = self._check_audio(audio)
        spec = torch.stft(audio.flatten(0, 1), c.n_fft, c.control_hop, window=self.window,
                          return_complex=True)[..., :-1].abs()
        feats = torch.log(self.input_filterbank @ spec + 1e-3).reshape(audio.shape[0], -1, spec.shape[-1])
        mean, scale = self.encoder(feats.to(self.encoder[0].weight.dtype)).float().chunk(2, dim=1)
        log_f0 = analyse_log_f0(audio, c.downsampling_ratio, c.sample_rate, high_hz=c.f0_max_hz)
        pitch = (log_f0 - self._centre) / self._half
        mean = torch.cat([pitch.clamp(-1, 1)[:, None].to(mean.dtype), mean], 1)
        std = torch.cat([torch.full_like(mean[:, :1], 1e-4), F.softplus(scale) + 1e-4], 1)
        return self._normalize(mean), std / self.latent_std[None, :, None]

    def encode(self, audio: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        mean, std = self.posterior(audio)
        return sample_gaussian(mean, std, generator) if sample else mean

    # ------------------------------------------------------------------ decode

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, latent_dim, T) -> audio (B, 2, T * downsampling_ratio)."""
        c = self.config
        if latents.dim() != 3 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"DDSPAutoencoder.decode expects latents (B, {self.latent_dim}, T), "
                             f"got {tuple(latents.shape)}")
        z = latents.float() * self.latent_std[None, :, None] + self.latent_mean[None, :, None]
        b, _, frames = z.shape
        length = frames * c.downsampling_ratio
        ctl = self.decoder(z.to(self.decoder[0].weight.dtype)).float()  # (B, controls, 4T)
        up = c.downsampling_ratio // c.control_hop
        k = c.harmonics
        # The pitch is the latent's channel 0 as it is: a learned correction on top (tried:
        # tanh-bounded to +-0.44 semitone) saturated on the untrained codec's large latents
        # and put every tone 0.44 semitone off.
        log_f = self._centre + z[:, :1].clamp(-1, 1).repeat_interleave(up, -1) * self._half
        harm = F.softmax(ctl[:, :k], dim=1)
        amp = F.softplus(ctl[:, k:2 + k])
        bands = F.softplus(ctl[:, 2 + k:2 + k + c.noise_bands])
        noise_gain = F.softplus(ctl[:, 2 + k + c.noise_bands:])

        def to_audio_rate(t):
            return F.interpolate(t, size=length, mode="linear", align_corners=False)

        freq = torch.exp(to_audio_rate(log_f))[:, 0]  # (B, L) Hz
        # The phase is a running sum: float64 keeps a 10 s sum of ~1e6 radians exact enough.
        phase = torch.remainder(2 * math.pi * torch.cumsum(freq.double(), -1) / c.sample_rate, 2 * math.pi).float()
        order = torch.arange(1, k + 1, device=z.device, dtype=torch.float32)[None, :, None]
        audible = (freq[:, None, :] * order < 0.95 * c.sample_rate / 2).float()
        partials = torch.zeros(b, length, device=z.device)
        weights = to_audio_rate(harm)
        for h in range(k):  # a loop keeps memory at (B, L) instead of (B, K, L)
            partials = partials + weights[:, h] * audible[:, h] * torch.sin((h + 1) * phase)
        tonal = to_audio_rate(amp) * partials[:, None, :]
        gen = torch.Generator(device="cpu").manual_seed(1234)
        excitation = torch.randn(b * 2, length, generator=gen).to(z.device)
        spec = torch.stft(excitation, c.n_fft, c.control_hop, window=self.window, return_complex=True)
        shape = self.noise_filterbank.T.float() @ bands  # (B, bins, 4T)
        pad = spec.shape[-1] - shape.shape[-1]
        shape = F.pad(shape, (0, pad), mode="replicate").repeat_interleave(2, 0)
        gain = F.pad(noise_gain, (0, pad), mode="replicate").reshape(b * 2, 1, -1)
        noise = torch.istft(spec * shape * gain, c.n_fft, c.control_hop, window=self.window, length=length)
        return tonal + c.noise_scale * noise.reshape(b, 2, length)
