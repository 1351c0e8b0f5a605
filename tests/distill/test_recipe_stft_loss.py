"""The VAE stage's multi-resolution STFT loss (audiox.distill.recipe.stft_loss)."""
import math

import pytest
import torch

from audiox_engine.audiox.distill.recipe import multi_resolution_stft_loss

SR = 44100


def test_multi_resolution_stft_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 4096, generator=g)
    assert float(multi_resolution_stft_loss(x, x, (256, 64))) == pytest.approx(0.0, abs=1e-6)
    y = x + 0.3 * torch.randn(x.shape, generator=g)
    assert float(multi_resolution_stft_loss(y, x, (256, 64))) > 0.1
    y.requires_grad_(True)
    multi_resolution_stft_loss(y, x, (256, 64)).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape mismatch"):
        multi_resolution_stft_loss(x, x[..., :100])


def test_stft_loss_floor_ignores_what_is_inaudible_in_sparse_spectra():
    """A pure tone: hiss 100 dB below it costs (nearly) nothing with the -80 dB floor, yet
    dominates the loss with no effective floor (-400 dB here), while the tone's level still
    counts."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(16384) / SR
    tone = (0.8 * torch.sin(2 * math.pi * (300 + 200 * torch.rand((), generator=g)) * t)).expand(1, 2, -1)
    hiss = tone + 1e-5 * torch.randn(tone.shape, generator=g)
    floored = float(multi_resolution_stft_loss(hiss, tone, (1024, 256)))
    unfloored = float(multi_resolution_stft_loss(hiss, tone, (1024, 256), floor_db=-400.0))
    assert floored < 0.02 and unfloored > 0.3
    assert float(multi_resolution_stft_loss(0.5 * tone, tone, (1024, 256))) > 0.3  # 6 dB too soft


def test_stft_loss_band_terms_rank_a_near_miss_above_a_far_one():
    """Per-bin terms see a tone one semitone off and one seven semitones off as equally wrong
    (all energy in other bins); the log-band terms rank the near miss better."""
    t = torch.arange(16384) / SR

    def sine(f):
        return (0.5 * torch.sin(2 * math.pi * f * t)).expand(1, 2, -1)

    target, near, far = sine(440.0), sine(440.0 * 2 ** (1 / 12)), sine(440.0 * 2 ** (7 / 12))

    def cost(x, bands):
        return float(multi_resolution_stft_loss(x, target, (4096,), bands=bands))

    assert cost(near, (12, 48)) - cost(near, ()) < cost(far, (12, 48)) - cost(far, ()) - 0.5
