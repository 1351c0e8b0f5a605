"""A small audio classifier for the procedural set, and the metrics built on it.

The classifier reads a half-semitone log-frequency spectrogram (55 Hz .. 7 kHz, level
normalised) and predicts two labels of :mod:`audiox.distill.procedural`:

* ``kind``: tone / drums / noise / chirp (4 classes);
* ``semitone``: for tones, the note index 0..48 (A2 = 110 Hz .. A6 = 1760 Hz).

Its penultimate layer (``embed``) is the feature space of the Frechet distance, as an
Inception / VGGish / PANNs embedding is for FID / FAD; a classifier trained on exactly
the labels the captions state makes the distance sensitive to what the prompts ask for.

Also here: :func:`frechet_distance` and :func:`estimate_frequency` (spectral peak with
parabolic interpolation) for the median frequency error of tonal prompts, in semitones.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .procedural import KINDS, NOTE_FREQUENCIES

SPEC_N_FFT = 8192
"""5.4 Hz bins at 44.1 kHz: finer than a semitone (6.5 Hz) at the lowest note, 110 Hz."""
SPEC_LOW_HZ = 55.0
SPEC_BANDS_PER_OCTAVE = 24
SPEC_OCTAVES = 7
SPEC_TIME_FRAMES = 32
NUM_SEMITONES = len(NOTE_FREQUENCIES)


def log_frequency_filterbank(sample_rate: int, n_fft: int = SPEC_N_FFT) -> torch.Tensor:
    """(bands, n_fft // 2 + 1) triangular filters, half a semitone wide in log frequency,
    rows summing to 1. Where a band is narrower than an FFT bin the nearest bin is used, so
    no band is empty."""
    bands = SPEC_BANDS_PER_OCTAVE * SPEC_OCTAVES
    centres = SPEC_LOW_HZ * 2.0 ** (np.arange(bands) / SPEC_BANDS_PER_OCTAVE)
    bin_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    with np.errstate(divide="ignore"):
        dist_octaves = np.abs(np.log2(np.maximum(bin_hz[None, :], 1e-3) / centres[:, None]))
    w = np.maximum(0.0, 1.0 - dist_octaves * SPEC_BANDS_PER_OCTAVE)
    for b in np.where(w.sum(1) == 0)[0]:
        w[b, int(np.argmin(np.abs(bin_hz - centres[b])))] = 1.0
    w /= w.sum(1, keepdims=True)
    return torch.from_numpy(w.astype(np.float32))


def log_spectrogram(audio: torch.Tensor, sample_rate: int, time_frames: int = SPEC_TIME_FRAMES,
                    filterbank: Optional[torch.Tensor] = None) -> torch.Tensor:
    """audio (B, C, L) or (B, L) -> (B, bands, time_frames) log power, each clip peak-normalised
    first (generated audio is peak-normalised by the pipeline, so level must not matter)."""
    if audio.dim() == 3:
        audio = audio.mean(dim=1)
    if audio.dim() != 2:
        raise ValueError(f"audio must be (B, C, L) or (B, L), got {tuple(audio.shape)}")
    audio = audio.float()
    audio = audio / audio.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
    fb = log_frequency_filterbank(sample_rate) if filterbank is None else filterbank
    spec = torch.stft(audio, SPEC_N_FFT, hop_length=SPEC_N_FFT // 4, window=torch.hann_window(SPEC_N_FFT),
                      return_complex=True).abs().square()  # (B, F, T)
    bands = torch.einsum("kf,bft->bkt", fb.to(spec.device), spec)
    bands = F.adaptive_avg_pool1d(bands, time_frames)
    return torch.log(bands + 1e-6)


class ProceduralAudioClassifier(nn.Module):
    """(B, bands, T) log spectrogram -> embedding (B, embed_dim), kind logits (B, 4),
    semitone logits (B, 49). Convolutions over (frequency, time), then pooling over time
    only, so the absolute frequency (which the note label is) survives."""

    def __init__(self, bands: int = SPEC_BANDS_PER_OCTAVE * SPEC_OCTAVES, width: int = 16, embed_dim: int = 64):
        super().__init__()
        self.bands = bands
        self.convs = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.MaxPool2d((2, 2)),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d((2, 2)),
        )
        self.embed = nn.Sequential(nn.Linear(2 * width * (bands // 4) * 2, embed_dim), nn.GELU())
        self.kind_head = nn.Linear(embed_dim, len(KINDS))
        self.semitone_head = nn.Linear(embed_dim, NUM_SEMITONES)
        self.register_buffer("feat_mean", torch.zeros(()))
        self.register_buffer("feat_std", torch.ones(()))

    def embedding(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.dim() != 3 or spec.shape[1] != self.bands:
            raise ValueError(f"classifier input must be (B, {self.bands}, T), got {tuple(spec.shape)}")
        h = self.convs(((spec - self.feat_mean) / self.feat_std).unsqueeze(1))  # (B, C, bands/4, T/4)
        # Mean and max over time: tones are steady, drums and bursts are sparse in time.
        h = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1).flatten(1)
        return self.embed(h)

    def forward(self, spec: torch.Tensor) -> tuple:
        e = self.embedding(spec)
        return e, self.kind_head(e), self.semitone_head(e)


def labels_of(params: dict) -> tuple:
    """(kind index, semitone index or -1) from a procedural item's params: a tone's nearest
    note (its own index for the note frequencies; "continuous" train tones fall between)."""
    kind = KINDS.index(params["kind"])
    if params["kind"] != "tone":
        return kind, -1
    semi = round(12 * math.log2(params["freq_hz"] / NOTE_FREQUENCIES[0]))
    return kind, min(max(semi, 0), len(NOTE_FREQUENCIES) - 1)


def classifier_loss(model: ProceduralAudioClassifier, spec: torch.Tensor, kind: torch.Tensor,
                    semitone: torch.Tensor) -> tuple:
    """Cross-entropy on kind for every item, on semitone for tones (semitone >= 0)."""
    _, kind_logits, semi_logits = model(spec)
    loss = F.cross_entropy(kind_logits, kind)
    tonal = semitone >= 0
    if tonal.any():
        loss = loss + F.cross_entropy(semi_logits[tonal], semitone[tonal])
    return loss, kind_logits, semi_logits


@torch.no_grad()
def classify(model: ProceduralAudioClassifier, spec: torch.Tensor, batch_size: int = 64) -> dict:
    """Embeddings (N, E), predicted kinds (N,) and semitones (N,) for spectrograms (N, bands, T)."""
    model.eval()
    embs, kinds, semis = [], [], []
    for i in range(0, spec.shape[0], batch_size):
        e, k, s = model(spec[i:i + batch_size])
        embs.append(e)
        kinds.append(k.argmax(-1))
        semis.append(s.argmax(-1))
    return {"embedding": torch.cat(embs), "kind": torch.cat(kinds), "semitone": torch.cat(semis)}


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two embedding sets (N, E), (M, E):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, in float64 with
    symmetric eigendecompositions (no scipy; singular covariances of small sets are fine)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"embeddings must be (N, E) and (M, E), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings per set, got {a.shape[0]} and {b.shape[0]}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrt_psd(cov_a)
    cross = _sqrt_psd(root_a @ cov_b @ root_a)
    fd = (mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(cross)
    return float(fd.clamp_min(0))


def estimate_frequency(audio: torch.Tensor, sample_rate: int, low_hz: float = 50.0, high_hz: float = 5000.0) -> float:
    """Strongest spectral peak between ``low_hz`` and ``high_hz`` of a clip (C, L) or (L,), in Hz,
    refined by parabolic interpolation of the log magnitude around the peak bin (Hann window).
    For the procedural tones (sine, square, saw) the fundamental is the strongest partial."""
    x = audio.double()
    if x.dim() == 2:
        x = x.mean(0)
    if x.dim() != 1 or x.numel() < 16:
        raise ValueError(f"audio must be (C, L) or (L,) with L >= 16, got {tuple(audio.shape)}")
    n = x.numel()
    mag = torch.fft.rfft(x * torch.hann_window(n, periodic=False, dtype=x.dtype)).abs()
    lo = max(1, int(math.floor(low_hz * n / sample_rate)))
    hi = min(mag.numel() - 2, int(math.ceil(high_hz * n / sample_rate)))
    k = lo + int(torch.argmax(mag[lo:hi + 1]))
    la, lb, lc = (torch.log(mag[k + d] + 1e-30).item() for d in (-1, 0, 1))
    denom = la - 2 * lb + lc
    offset = 0.5 * (la - lc) / denom if denom < 0 else 0.0
    return (k + offset) * sample_rate / n


def semitone_error(estimate_hz: float, target_hz: float) -> float:
    """|12 log2(estimate / target)|: distance in semitones."""
    if estimate_hz <= 0 or target_hz <= 0:
        raise ValueError(f"frequencies must be positive, got {estimate_hz}, {target_hz}")
    return abs(12.0 * math.log2(estimate_hz / target_hz))
