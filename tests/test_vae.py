"""Oobleck VAE: official key layout, weight-norm folding, a functional reference, shapes, errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import read_reference_keys, reduction_rtol
from torch import nn
from torch.nn import functional as F

from audiox_engine.audiox.vae import (
    AudioAutoencoder,
    SnakeBeta,
    VAEBottleneck,
    VAEConfig,
    WNConv1d,
    WNConvTranspose1d,
    fold_weight_norm,
)
from audiox_engine.audiox.pretransform import AutoencoderPretransform


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Snake alpha/beta are zeros at init and weight_g equals ||v||: move everything off init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(("alpha", "beta")):
                p.copy_(noise * 0.3)
            elif name.endswith("bias"):
                p.copy_(noise * 0.05)
            else:
                p.mul_(1 + 0.2 * noise)
    return model


@pytest.fixture(scope="module")
def tiny() -> AudioAutoencoder:
    torch.manual_seed(0)
    return _randomized(AudioAutoencoder(VAEConfig.tiny())).eval()


# ----------------------------------------------------------------------------- layout


def test_full_vae_keys_and_shapes_match_official():
    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.pretransform = AutoencoderPretransform(VAEConfig.full())

    with torch.device("meta"):
        top = Top()
    ours = {k: tuple(v.shape) for k, v in top.state_dict().items()}
    ref = read_reference_keys("vae_keys.tsv", {})
    assert len(ref) == 365
    assert sorted(set(ref) - set(ours)) == []
    assert sorted(set(ours) - set(ref)) == []
    assert {k: s for k, s in ours.items() if ref[k] != s} == {}
    # SPEC: encoder 78.0 M, decoder 78.1 M (folded weights; g adds a few K in the file)
    model = top.pretransform.model
    assert round(sum(p.numel() for p in model.encoder.parameters()) / 1e6, 1) == 78.0
    assert round(sum(p.numel() for p in model.decoder.parameters()) / 1e6, 1) == 78.1
    assert model.downsampling_ratio == 2048 and model.latent_dim == 64 and model.io_channels == 2


def test_tiny_preset_keeps_ratio_and_is_small():
    cfg = VAEConfig.tiny()
    assert cfg.downsampling_ratio == 2048
    n = sum(p.numel() for p in AudioAutoencoder(cfg).parameters())
    assert 100_000 < n < 1_500_000


def test_config_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="c_mults"):
        VAEConfig(c_mults=[1, 2], strides=[2, 4, 8])


# ----------------------------------------------------------------------------- weight norm


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("style", ["legacy", "parametrization"])
@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_weight_norm_folding_matches_torch(transpose, style):
    torch.manual_seed(1)
    cls, ours_cls = (nn.ConvTranspose1d, WNConvTranspose1d) if transpose else (nn.Conv1d, WNConv1d)
    kw = {"kernel_size": 8, "stride": 4, "padding": 2} if transpose else {"kernel_size": 7, "dilation": 3, "padding": 9}
    conv = cls(6, 5, **kw)
    if style == "legacy":
        official = torch.nn.utils.weight_norm(conv, dim=0)
        with torch.no_grad():
            official.weight_g.mul_(torch.rand_like(official.weight_g) + 0.5)
        keys = {"weight_g", "weight_v", "bias"}
    else:
        official = torch.nn.utils.parametrizations.weight_norm(conv, dim=0)
        with torch.no_grad():
            official.parametrizations.weight.original0.mul_(torch.rand(official.parametrizations.weight.original0.shape) + 0.5)
        keys = {"parametrizations.weight.original0", "parametrizations.weight.original1", "bias"}
    assert set(official.state_dict()) == keys
    ours = ours_cls(6, 5, **kw)
    ours.load_state_dict(official.state_dict())
    x = torch.randn(2, 6, 40)
    want = official(x).detach()  # the legacy hook refreshes official.weight only in forward
    # Tolerances from the reductions: the norm over one slice of v (weights), then the
    # convolution's in_channels * kernel_size terms on top (outputs), each bounded by its
    # terms' magnitudes (the output's per channel: max |x| * sum |w|).
    w = official.weight.detach()
    w_tol = reduction_rtol(torch.float32, w[0].numel())
    y_tol = w_tol + reduction_rtol(torch.float32, w.shape[0 if transpose else 1] * w.shape[2])
    y_scale = x.abs().max() * w.abs().sum(dim=(0, 2) if transpose else (1, 2)).max()
    torch.testing.assert_close(ours.weight, w, rtol=w_tol, atol=w_tol * w.abs().max().item())
    torch.testing.assert_close(ours(x), want, rtol=y_tol, atol=y_tol * y_scale.item())
    # our state_dict is the official legacy layout and reloads to the same weight
    sd = ours.state_dict()
    assert set(sd) == {"weight_g", "weight_v", "bias"}
    assert sd["weight_g"].shape == (ours.weight.shape[0], 1, 1)
    again = ours_cls(6, 5, **kw)
    again.load_state_dict(sd)
    torch.testing.assert_close(again.weight, ours.weight, rtol=w_tol, atol=w_tol * w.abs().max().item())
    legacy = torch.nn.utils.weight_norm(cls(6, 5, **kw), dim=0)
    legacy.load_state_dict(sd)
    torch.testing.assert_close(legacy(x).detach(), ours(x), rtol=y_tol, atol=y_tol * y_scale.item())


def test_fold_weight_norm_formula_and_errors():
    v = torch.randn(4, 3, 5, dtype=torch.float64)
    g = torch.rand(4, 1, 1, dtype=torch.float64) + 0.1
    want = torch._weight_norm(v, g, 0)
    torch.testing.assert_close(fold_weight_norm(g, v), want)
    with pytest.raises(ValueError, match="weight_g"):
        fold_weight_norm(torch.ones(3, 1, 1), v)
    conv = WNConv1d(3, 4, 5)
    with pytest.raises(RuntimeError, match="weight_v"):
        conv.load_state_dict({"weight_g": g.float(), "bias": torch.zeros(4)})


def test_plain_weight_also_loads():
    conv = WNConv1d(3, 4, 5)
    w = torch.randn(4, 3, 5)
    conv.load_state_dict({"weight": w, "bias": torch.zeros(4)})
    assert torch.equal(conv.weight.detach(), w)


# ----------------------------------------------------------------------------- functional reference


def _ref_conv(sd, prefix, x, transpose=False, **kw):
    w = torch._weight_norm(sd[prefix + "weight_v"], sd[prefix + "weight_g"], 0)
    b = sd.get(prefix + "bias")
    return (F.conv_transpose1d if transpose else F.conv1d)(x, w, b, **kw)


def _ref_snake(sd, prefix, x):
    a = sd[prefix + "alpha"].exp()[None, :, None]
    b = sd[prefix + "beta"].exp()[None, :, None]
    return x + 1.0 / (b + 1e-9) * torch.sin(a * x) ** 2


def _ref_residual(sd, p, x, dilation):
    h = _ref_snake(sd, p + "layers.0.", x)
    h = _ref_conv(sd, p + "layers.1.", h, dilation=dilation, padding=3 * dilation)
    h = _ref_snake(sd, p + "layers.2.", h)
    return x + _ref_conv(sd, p + "layers.3.", h)


def _ref_encoder(sd, cfg: VAEConfig, x):
    """The official Oobleck encoder written out from its state dict (weight_g / weight_v)."""
    x = _ref_conv(sd, "layers.0.", x, padding=3)
    for i, s in enumerate(cfg.strides):
        p = f"layers.{i + 1}.layers."
        for j, d in enumerate((1, 3, 9)):
            x = _ref_residual(sd, f"{p}{j}.", x, d)
        x = _ref_snake(sd, f"{p}3.", x)
        x = _ref_conv(sd, f"{p}4.", x, stride=s, padding=math.ceil(s / 2))
    n = len(cfg.strides)
    x = _ref_snake(sd, f"layers.{n + 1}.", x)
    return _ref_conv(sd, f"layers.{n + 2}.", x, padding=1)


def _ref_decoder(sd, cfg: VAEConfig, z):
    x = _ref_conv(sd, "layers.0.", z, padding=3)
    for k, s in enumerate(reversed(cfg.strides)):
        p = f"layers.{k + 1}.layers."
        x = _ref_snake(sd, f"{p}0.", x)
        x = _ref_conv(sd, f"{p}1.", x, transpose=True, stride=s, padding=math.ceil(s / 2))
        for j, d in enumerate((1, 3, 9)):
            x = _ref_residual(sd, f"{p}{j + 2}.", x, d)
    n = len(cfg.strides)
    x = _ref_snake(sd, f"layers.{n + 1}.", x)
    return _ref_conv(sd, f"layers.{n + 2}.", x, padding=3)


def test_encoder_and_decoder_match_functional_reference(tiny):
    cfg = tiny.config
    x = torch.randn(2, 2, 2048 * 3)
    z = torch.randn(2, 64, 3)
    with torch.no_grad():
        enc = tiny.encoder(x)
        dec = tiny.decoder(z)
        enc_ref = _ref_encoder(tiny.encoder.state_dict(), cfg, x)
        dec_ref = _ref_decoder(tiny.decoder.state_dict(), cfg, z)
    assert enc.shape == (2, 128, 3) and dec.shape == (2, 2, 2048 * 3)
    torch.testing.assert_close(enc, enc_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dec, dec_ref, rtol=1e-4, atol=1e-5)


def test_snake_beta_formula():
    act = SnakeBeta(3)
    with torch.no_grad():
        act.alpha.copy_(torch.tensor([0.1, -0.5, 0.7]))
        act.beta.copy_(torch.tensor([-0.2, 0.3, 1.0]))
    x = torch.randn(2, 3, 11)
    a, b = act.alpha.exp()[:, None], act.beta.exp()[:, None]
    torch.testing.assert_close(act(x), x + torch.sin(a * x) ** 2 / (b + 1e-9))


# ----------------------------------------------------------------------------- autoencoder


def test_encode_decode_shapes(tiny):
    with torch.no_grad():
        for frames in (1, 3):
            audio = torch.randn(2, 2, 2048 * frames)
            z = tiny.encode(audio, generator=torch.Generator().manual_seed(0))
            assert z.shape == (2, 64, frames)
            assert torch.isfinite(z).all()
            y = tiny.decode(z)
            assert y.shape == (2, 2, 2048 * frames)
            assert torch.isfinite(y).all()


def test_full_size_latent_lengths():
    """Release lengths, by shape inference on meta: 10 s prompt 441000 -> 215, sample_size 485100 -> 236."""
    with torch.device("meta"):
        vae = AudioAutoencoder(VAEConfig.full())
        for samples, frames in ((441000, 215), (485100, 236), (2048 * 236, 236)):
            z = vae.encode(torch.empty(1, 2, samples), sample=False)
            assert z.shape == (1, 64, frames)
        assert vae.decode(torch.empty(1, 64, 236)).shape == (1, 2, 236 * 2048)


def test_bottleneck_mean_and_sampling(tiny):
    audio = torch.randn(2, 2, 2048 * 2)
    with torch.no_grad():
        h = tiny.encoder(audio)
        mean = tiny.encode(audio, sample=False)
        torch.testing.assert_close(mean, h[:, :64])
        z1 = tiny.encode(audio, generator=torch.Generator().manual_seed(5))
        z2 = tiny.encode(audio, generator=torch.Generator().manual_seed(5))
        z3 = tiny.encode(audio, generator=torch.Generator().manual_seed(6))
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    std = F.softplus(h[:, 64:]) + 1e-4
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z1, mean + std * noise)


def test_bottleneck_rejects_odd_channels():
    with pytest.raises(ValueError, match=r"\(B, 2\*D, T\)"):
        VAEBottleneck().encode(torch.randn(1, 3, 4))


def test_state_dict_round_trip_reproduces_outputs(tiny):
    sd = tiny.state_dict()
    assert any(k.endswith("weight_g") for k in sd) and not any(k.endswith(".weight") for k in sd)
    fresh = AudioAutoencoder(VAEConfig.tiny()).eval()
    fresh.load_state_dict(sd)
    z = torch.randn(1, 64, 2)
    with torch.no_grad():
        torch.testing.assert_close(fresh.decode(z), tiny.decode(z), rtol=1e-5, atol=1e-6)


def test_pretransform_wraps_model(tiny):
    pt = AutoencoderPretransform(VAEConfig.tiny())
    pt.model.load_state_dict(tiny.state_dict())
    audio = torch.randn(1, 2, 2048 * 2)
    with torch.no_grad():
        torch.testing.assert_close(pt.encode(audio, sample=False), tiny.encode(audio, sample=False))
    assert set(pt.state_dict()) == {"model." + k for k in tiny.state_dict()}
    assert pt.downsampling_ratio == 2048 and pt.encoded_channels == 64 and pt.io_channels == 2


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"\(B, 2, L\)"):
        tiny.encode(torch.randn(1, 1, 4096))
    with pytest.raises(ValueError, match="at least 2048 samples"):
        tiny.encode(torch.randn(1, 2, 100))
    with pytest.raises(ValueError, match=r"\(B, 64, T\)"):
        tiny.decode(torch.randn(1, 32, 4))
