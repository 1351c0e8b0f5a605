"""The procedural recipe's DDSP codec: shapes, the analysed-pitch channel, coherent tones,
determinism, bad input, the model / pipeline wiring and the recipe's loss."""
import math

import pytest
import torch

from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.ddsp_vae import DDSPAutoencoder, DDSPConfig, analyse_log_f0, log_band_filterbank
from audiox_engine.audiox.distill.classifier import estimate_frequency, semitone_error
from audiox_engine.audiox.model import AudioXModel, vae_config_for

SR = 44100


def tone(freq, frames=8, amp=0.5, wave="sine"):
    t = torch.arange(frames * 2048) / SR
    x = torch.sin(2 * math.pi * freq * t) if wave == "sine" else torch.sign(torch.sin(2 * math.pi * freq * t))
    return (amp * x).expand(1, 2, -1).contiguous()


@pytest.fixture(scope="module")
def ae():
    torch.manual_seed(0)
    return DDSPAutoencoder(DDSPConfig(width=32)).eval()


def test_shapes_and_posterior(ae):
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.randn(2, 2, 6 * 2048, generator=g)
    mean, std = ae.posterior(x)
    assert mean.shape == std.shape == (2, 64, 6) and (std > 0).all()
    assert torch.allclose(std[:, 0], torch.full_like(std[:, 0], 1e-4))
    assert ae.encode(x, sample=False).equal(mean)
    z = ae.encode(x, generator=torch.Generator().manual_seed(2))
    assert not z.equal(mean) and z[:, 0].sub(mean[:, 0]).abs().max() < 1e-2
    y = ae.decode(z)
    assert y.shape == (2, 2, 6 * 2048) and torch.isfinite(y).all()
    assert ae.decode(z).equal(y), "decoding is deterministic"
    assert ae.encode(x[..., :5 * 2048 + 7], sample=False).shape[-1] == 6  # partial frame padded


@pytest.mark.parametrize("freq", [110.0, 261.6, 440.0, 1661.0])
def test_pitch_channel_is_the_analysed_frequency_and_the_decoder_plays_it(ae, freq):
    x = tone(freq, wave="square")
    log_f0 = analyse_log_f0(x, 2048, SR)
    assert semitone_error(float(log_f0[0, 4].exp()), freq) < 0.1
    # Untrained, the harmonic weights are uniform: the oscillator still runs at the pitch
    # in the latent, so the spectral peak sits on a partial of it.
    z = ae.encode(x, sample=False)
    y = ae.decode(z)
    peak = estimate_frequency(y[0], SR)
    ratio = peak / freq
    assert round(ratio) >= 1 and semitone_error(peak, round(ratio) * freq) <= 0.1


def test_filterbank_and_config_errors():
    fb = log_band_filterbank(1024, 48, SR)
    assert fb.shape == (48, 513) and (fb.sum(1) > 0).all() and fb.max() <= 1.0
    with pytest.raises(ValueError, match="multiple of control_hop"):
        DDSPConfig(control_hop=500)
    with pytest.raises(ValueError, match="unknown DDSPConfig keys"):
        DDSPConfig.from_dict({"harmonix": 3})


def test_bad_input_is_named(ae):
    with pytest.raises(ValueError, match=r"audio \(B, 2, L\)"):
        ae.encode(torch.randn(1, 1, 4096))
    with pytest.raises(ValueError, match="at least 2048 samples"):
        ae.encode(torch.randn(1, 2, 100))
    with pytest.raises(ValueError, match=r"latents \(B, 64, T\)"):
        ae.decode(torch.randn(1, 32, 4))


def test_model_builds_the_codec_from_the_config_and_round_trips_its_state():
    import dataclasses

    cfg = dataclasses.replace(get_preset("tiny"), vae={"type": "ddsp", "config": {"width": 32}})
    assert isinstance(vae_config_for(cfg), DDSPConfig)
    torch.manual_seed(0)
    a, b = AudioXModel(cfg), AudioXModel(cfg)
    assert isinstance(a.pretransform.model, DDSPAutoencoder)
    assert any(k.startswith("pretransform.model.decoder.") for k in a.state_dict())
    b.load_state_dict(a.state_dict())
    z = torch.randn(1, 64, 3, generator=torch.Generator().manual_seed(3))
    assert a.pretransform.decode(z).equal(b.pretransform.decode(z))


def test_latent_normalization_standardises_and_round_trips():
    torch.manual_seed(0)
    ae = DDSPAutoencoder(DDSPConfig(width=32)).eval()
    g = torch.Generator().manual_seed(4)
    clips = torch.cat([tone(f, frames=4, amp=a) for f, a in ((110, .1), (440, .8), (1661, .5), (262, .3))])
    clips = clips + 0.01 * torch.randn(clips.shape, generator=g)
    raw = ae.encode(clips, sample=False)
    z_in = torch.randn(2, 64, 3, generator=g)
    y_raw = ae.decode(z_in)
    ae.set_latent_normalization(raw)
    norm = ae.encode(clips, sample=False)
    flat = norm.transpose(0, 1).reshape(64, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(1)[1:], torch.ones(63), atol=1e-3, rtol=0)
    # decode(normalised) == decode_raw(raw): the normalisation is invisible end to end.
    z_norm = (z_in - ae.latent_mean[None, :, None]) / ae.latent_std[None, :, None]
    torch.testing.assert_close(ae.decode(z_norm), y_raw, atol=1e-5, rtol=1e-4)
    # Saved with the weights; a checkpoint without the buffers loads as identity.
    state = ae.state_dict()
    assert {"latent_mean", "latent_std"} <= set(state)
    fresh = DDSPAutoencoder(DDSPConfig(width=32))
    fresh.load_state_dict(state)
    assert fresh.latent_std.equal(ae.latent_std)
    old = {k: v for k, v in state.items() if not k.startswith("latent_")}
    fresh.load_state_dict(old)
    assert fresh.latent_std.eq(1).all() and fresh.latent_mean.eq(0).all()
    with pytest.raises(ValueError, match="raw_means"):
        ae.set_latent_normalization(raw[:, :10])
