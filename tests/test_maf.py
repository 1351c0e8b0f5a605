"""The MAF block and the release's argument-order quirk (tiny preset)."""

import pytest
import torch

from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.maf import MAF_Block, fuse_modalities
from helpers import randomize_, rel_err


@pytest.fixture(scope="module")
def maf():
    return MAF_Block(get_preset("tiny").maf).eval()


def _tokens(dim, seed, b=2, n=128):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, dim, generator=g) + i for i in range(3)]


def test_untrained_gates_keep_tokens_in_release_order(maf):
    video, text, audio = _tokens(maf.dim, 0)
    with torch.no_grad():
        out = fuse_modalities(maf, video, text, audio)
    assert out.shape == (2, 384, maf.dim)
    # bypass gates start at -10: sigmoid(-10) ~ 4.5e-5, so the output is the input, reordered.
    for seg, tok in zip(out.split(128, dim=1), (text, video, audio)):
        assert (seg - tok).abs().max() < 1e-3


def test_each_modality_gets_one_broadcast_refinement(maf):
    video, text, audio = _tokens(maf.dim, 1)
    m = randomize_(MAF_Block(get_preset("tiny").maf), std=0.2, seed=3).eval()
    with torch.no_grad():
        m.bypass_gate_v.fill_(2.0)  # acts on the *first* argument: the text tokens in the release's call
        m.bypass_gate_t.fill_(-30.0)
        m.bypass_gate_a.fill_(-30.0)
        out = fuse_modalities(m, video, text, audio)
    delta = [seg - tok for seg, tok in zip(out.split(128, dim=1), (text, video, audio))]
    # the text segment moves, by the same vector at every position
    assert delta[0].abs().max() > 0.1
    torch.testing.assert_close(delta[0], delta[0][:, :1].expand_as(delta[0]), rtol=1e-5, atol=1e-5)
    # video/audio gates ~1e-13: unchanged
    assert delta[1].abs().max() < 1e-6 and delta[2].abs().max() < 1e-6


def test_gating_network_weighs_the_pooled_modalities():
    m = randomize_(MAF_Block(get_preset("tiny").maf), std=0.2, seed=4).eval()
    video, text, audio = _tokens(m.dim, 2)
    with torch.no_grad():
        m.bypass_gate_v.fill_(3.0)
        a = fuse_modalities(m, video, text, audio)
        b = fuse_modalities(m, video * 3.0, text, audio)  # changes the pooled video and the context
    assert rel_err(a[:, :128], b[:, :128]) > 1e-4


def test_bad_token_shapes(maf):
    video, text, audio = _tokens(maf.dim, 3)
    with pytest.raises(ValueError, match="MAF .* tokens must be"):
        fuse_modalities(maf, video[..., :10], text, audio)
    with pytest.raises(ValueError, match="MAF .* tokens must be"):
        fuse_modalities(maf, video, text[:1], audio)
