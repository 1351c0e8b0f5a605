"""The DiT against hand-checked properties of the release (tiny preset, fp32)."""

import math

import pytest
import torch
import torch.nn.functional as F

from audiox_engine.audiox.config import DiTConfig, get_preset
from audiox_engine.audiox.dit import (
    CrossAttention,
    MMDiffusionTransformer,
    SelfAttention,
    apply_rope,
    rope_rotations,
)
from helpers import randomize_, rel_err


@pytest.fixture(scope="module")
def tiny_dit():
    cfg = get_preset("tiny").dit
    return randomize_(MMDiffusionTransformer(cfg), std=0.1, seed=1).eval()


def _inputs(cfg: DiTConfig, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.io_channels, cfg.latent_frames, generator=g)
    t = torch.rand(b, generator=g)
    c = torch.randn(b, cfg.num_cond_tokens, cfg.cond_token_dim, generator=g)
    return x, t, c


def test_output_shape_and_time_token_dropped(tiny_dit):
    cfg = tiny_dit.cfg
    x, t, c = _inputs(cfg)
    seen = {}
    h = tiny_dit.transformer.project_out.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    with torch.no_grad():
        v = tiny_dit(x, t, cross_attn_cond=c)
    h.remove()
    tokens = seen["tokens"]  # (B, 237, 64): the time token is position 0
    assert tokens.shape == (2, cfg.latent_seq_len, cfg.io_channels)
    assert v.shape == x.shape
    body = tokens[:, 1:].transpose(1, 2)
    expected = tiny_dit.postprocess_conv(body) + body
    torch.testing.assert_close(v, expected)


def _explicit_self_attention(attn: SelfAttention, x, rot):
    """A per-head loop over the ``(heads d j)`` layout, written independently of the module."""
    b, n, dim = x.shape
    h = attn.nheads
    d = dim // h
    qkv = attn.qkv(x)
    outs = []
    for head in range(h):
        base = head * d * 3
        q = qkv[..., base + 0 : base + 3 * d : 3]
        k = qkv[..., base + 1 : base + 3 * d : 3]
        v = qkv[..., base + 2 : base + 3 * d : 3]
        q = q / torch.sqrt((q * q).mean(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).mean(-1, keepdim=True) + 1e-6)
        pos = torch.arange(n, dtype=torch.float32)[:, None]
        freqs = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        ang = pos * freqs
        cos, sin = torch.cos(ang), torch.sin(ang)

        def rope(u):
            u0, u1 = u[..., 0::2], u[..., 1::2]
            return torch.stack([cos * u0 - sin * u1, sin * u0 + cos * u1], dim=-1).flatten(-2)

        q, k = rope(q), rope(k)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        outs.append(w @ v)
    return torch.cat(outs, dim=-1)


def test_self_attention_layout_norm_and_rope():
    torch.manual_seed(3)
    attn = randomize_(SelfAttention(96, 8), std=0.2, seed=5)  # 8 heads of dim 12
    x = torch.randn(2, 17, 96)
    rot = rope_rotations(17, 12)
    with torch.no_grad():
        ours = attn(x, rot)
        ref = _explicit_self_attention(attn, x, rot)
    assert rel_err(ours, ref) < 1e-5


def test_rope_is_a_rotation_with_relative_positions():
    torch.manual_seed(0)
    d, n = 24, 40
    rot = rope_rotations(n, d)
    q = torch.randn(1, 1, 1, d).expand(1, 1, n, d)
    k = torch.randn(1, 1, 1, d).expand(1, 1, n, d)
    rq, rk = apply_rope(q, rot), apply_rope(k, rot)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # <R_m q, R_n k> depends only on m - n
    s = rq[0, 0] @ rk[0, 0].T
    torch.testing.assert_close(torch.diagonal(s, 3), torch.full((n - 3,), s[0, 3].item()), rtol=1e-4, atol=1e-4)


def test_time_cross_attention_is_normalised_k_half_and_to_q_is_dead():
    torch.manual_seed(0)
    ca = randomize_(CrossAttention(96, 8), std=0.2, seed=2)
    x = torch.randn(3, 11, 96)
    e = torch.randn(3, 1, 96)
    with torch.no_grad():
        out = ca(x, context=e)
        # The release's computation, spelled out: K and V swapped, one key, SDPA.
        kv = ca.to_kv(e).view(3, 1, 8, 12, 2).permute(0, 2, 1, 3, 4)  # (B, H, 1, d, 2)
        k, v = kv[..., 0], kv[..., 1]
        k = k * torch.rsqrt((k * k).mean(-1, keepdim=True) + 1e-6)
        q = ca.to_q(x).view(3, 11, 8, 12).transpose(1, 2)
        q = q * torch.rsqrt((q * q).mean(-1, keepdim=True) + 1e-6)
        ref = F.scaled_dot_product_attention(q, v, k).transpose(1, 2).reshape(3, 11, 96)
        torch.testing.assert_close(out, ref)
        ca.to_q.weight.normal_()
        torch.testing.assert_close(ca(x, context=e), out)
    assert out.shape == x.shape


def test_cfg_scale_one_is_conditional_and_batched_cfg_is_standard(tiny_dit):
    x, t, c = _inputs(tiny_dit.cfg, seed=4)
    with torch.no_grad():
        cond = tiny_dit(x, t, cross_attn_cond=c)
        assert torch.equal(tiny_dit(x, t, cross_attn_cond=c, cfg_scale=1.0), cond)
        uncond = tiny_dit(x, t, cross_attn_cond=torch.zeros_like(c))
        guided = tiny_dit(x, t, cross_attn_cond=c, cfg_scale=6.0)
    assert rel_err(guided, uncond + 6.0 * (cond - uncond)) < 1e-5
    assert rel_err(guided, cond) > 1e-3  # the conditioning matters


def test_conditioning_and_time_change_the_output(tiny_dit):
    x, t, c = _inputs(tiny_dit.cfg, seed=5)
    with torch.no_grad():
        base = tiny_dit(x, t, cross_attn_cond=c)
        assert rel_err(tiny_dit(x, t * 0.5, cross_attn_cond=c), base) > 1e-3
        assert rel_err(tiny_dit(x, t, cross_attn_cond=c.flip(1)), base) > 1e-3
        assert torch.isfinite(base).all()


def test_batch_elements_are_independent(tiny_dit):
    x, t, c = _inputs(tiny_dit.cfg, b=3, seed=6)
    with torch.no_grad():
        full = tiny_dit(x, t, cross_attn_cond=c)
        one = tiny_dit(x[1:2], t[1:2], cross_attn_cond=c[1:2])
    assert rel_err(full[1:2], one) < 1e-5


@pytest.mark.parametrize(
    "x_shape,t_shape,c_shape,match",
    [
        ((2, 64, 100), (2,), (2, 384, 64), "x must be"),
        ((2, 32, 236), (2,), (2, 384, 64), "x must be"),
        ((2, 64, 236), (3,), (2, 384, 64), "t must be"),
        ((2, 64, 236), (2,), (2, 128, 64), "cross_attn_cond must be"),
        ((2, 64, 236), (2,), (2, 384, 768), "cross_attn_cond must be"),
    ],
)
def test_bad_shapes_are_named(tiny_dit, x_shape, t_shape, c_shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_dit(torch.randn(x_shape), torch.rand(t_shape), cross_attn_cond=torch.randn(c_shape))
