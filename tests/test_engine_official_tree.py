"""accelerate() on a module tree built here with the release's names, not from audiox/.

The classes below mirror the public release's layout (``audiox_turbo.models``:
``MMDiffusionTransformer`` -> ``ContinuousMMDiTTransformer`` -> ``MMDitSingleBlock``),
written from its documented semantics with einops, independently of ``audiox/dit.py``:
if the engine only worked because it shares code or a quirk with ``audiox``, this test
catches it. The DiT sits at ``.model.model`` as in the official model object.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from audiox_engine import engine
from audiox_engine.audiox import sampling as ref_sampling
from helpers import randomize_, rel_err
from audiox_engine.kernels._dispatch import interpret_mode

DIM, HEADS, DEPTH, FRAMES, COND_TOKENS, COND_DIM, IO = 96, 8, 2, 16, 24, 64, 64


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.scale = torch.ones(dim)  # not a parameter in the release
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + self.eps)


def rope_rotations(length, dim, theta=10000):
    pos = torch.arange(length, dtype=torch.float32)
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ang = torch.einsum("n,f->nf", pos, freqs)
    rot = torch.stack([ang.cos(), -ang.sin(), ang.sin(), ang.cos()], dim=-1)
    return rearrange(rot, "n d (i j) -> 1 n d i j", i=2, j=2)


def apply_rope(x, rot):
    xf = x.float().view(*x.shape[:-1], -1, 1, 2)
    return (rot[..., 0] * xf[..., 0] + rot[..., 1] * xf[..., 1]).reshape(x.shape).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim, nheads):
        super().__init__()
        self.dim, self.nheads = dim, nheads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = RMSNorm(dim // nheads)
        self.k_norm = RMSNorm(dim // nheads)

    def pre_attention(self, x, rot):
        q, k, v = rearrange(self.qkv(x), "b n (h d j) -> j b h n d", h=self.nheads, j=3)
        q, k = apply_rope(self.q_norm(q), rot), apply_rope(self.k_norm(k), rot)
        return q, k, v


class CrossAttention(nn.Module):
    def __init__(self, dim, nheads):
        super().__init__()
        self.dim, self.nheads = dim, nheads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, dim * 2, bias=False)
        self.q_norm = RMSNorm(dim // nheads)
        self.k_norm = RMSNorm(dim // nheads)

    def pre_attention(self, x, context):
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.nheads)
        k, v = rearrange(self.to_kv(context), "b n (h d j) -> j b h n d", h=self.nheads, j=2)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x, context):
        q, v, k = self.pre_attention(x, context)  # the release's swap, kept
        return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


class ChannelLastConv1d(nn.Conv1d):
    def forward(self, x):
        return rearrange(super().forward(rearrange(x, "b n c -> b c n")), "b c n -> b n c")


class ConvMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = ChannelLastConv1d(dim, hidden, 3, padding=1, bias=False)
        self.w2 = ChannelLastConv1d(hidden, dim, 3, padding=1, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden, 3, padding=1, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MMDitSingleBlock(nn.Module):
    def __init__(self, dim, nhead, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttention(dim, nhead)
        self.cross_attn = CrossAttention(dim, nhead)
        self.linear1 = ChannelLastConv1d(dim, dim, kernel_size=3, padding=1)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ffn = ConvMLP(dim, hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(self, x, cond, rot, context):
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(cond).chunk(6, dim=-1)
        q, k, v = self.attn.pre_attention(self.norm1(x) * (1 + sc1) + s1, rot)
        attn_out = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        x = x + self.linear1(attn_out) * g1
        x = x + self.cross_attn(x, context=context)
        return x + self.ffn(self.norm2(x) * (1 + sc2) + s2) * g2


class ContinuousMMDiTTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.project_in = nn.Linear(IO, DIM, bias=False)
        self.project_out = nn.Linear(DIM, IO, bias=False)
        self.layers = nn.ModuleList(MMDitSingleBlock(DIM, HEADS, 256) for _ in range(DEPTH))
        self.proj_mm_tokens = nn.Linear(COND_DIM, DIM)
        self.proj_mm_seq_len = nn.Linear(COND_TOKENS, FRAMES + 1)
        self.register_buffer("latent_rot", rope_rotations(FRAMES + 1, DIM // HEADS), persistent=False)

    def forward(self, x, prepend_embeds, context):
        x = torch.cat((prepend_embeds, self.project_in(x)), dim=-2)
        c = rearrange(self.proj_mm_seq_len(rearrange(self.proj_mm_tokens(context), "b n d -> b d n")),
                      "b d n -> b n d")
        for layer in self.layers:
            x = layer(x, c, self.latent_rot, context=prepend_embeds)
        return self.project_out(x)


class FourierFeatures(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features // 2, in_features))

    def forward(self, x):
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class MMDiffusionTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.timestep_features = FourierFeatures(1, 256)
        self.to_timestep_embed = nn.Sequential(nn.Linear(256, DIM), nn.SiLU(), nn.Linear(DIM, DIM))
        self.transformer = ContinuousMMDiTTransformer()
        self.preprocess_conv = nn.Conv1d(IO, IO, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(IO, IO, 1, bias=False)

    def _forward(self, x, t, cross_attn_cond):
        e = self.to_timestep_embed(self.timestep_features(t[:, None]))
        x = self.preprocess_conv(x) + x
        out = self.transformer(rearrange(x, "b c t -> b t c"), prepend_embeds=e.unsqueeze(1),
                               context=cross_attn_cond)
        out = rearrange(out, "b t c -> b c t")[:, :, 1:]
        return self.postprocess_conv(out) + out

    def forward(self, x, t, cross_attn_cond=None, cfg_scale=1.0, **kwargs):
        if cfg_scale == 1.0:
            return self._forward(x, t, cross_attn_cond)
        out = self._forward(torch.cat([x, x]), torch.cat([t, t]),
                            torch.cat([cross_attn_cond, torch.zeros_like(cross_attn_cond)]))
        c, u = out.chunk(2)
        return u + (c - u) * cfg_scale


class MMDiTWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = MMDiffusionTransformer()

    def forward(self, x, t, cross_attn_cond=None, cfg_scale=1.0, **kwargs):
        return self.model(x, t, cross_attn_cond=cross_attn_cond, cfg_scale=cfg_scale)


class ConditionedDiffusionModelWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = MMDiTWrapper()
        self.maf_block = nn.Linear(COND_DIM, COND_DIM)  # stands in for the MAF: not a DiT


@pytest.fixture(scope="module")
def official():
    return randomize_(ConditionedDiffusionModelWrapper(), std=0.1, seed=21).eval()


def _inputs(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, IO, FRAMES, generator=g), torch.rand(b, generator=g),
            torch.randn(b, COND_TOKENS, COND_DIM, generator=g))


def test_finds_and_swaps_the_official_layout(official):
    fast = engine.accelerate(official, backend="reference", dtype=torch.float32)
    assert isinstance(fast.model.model, engine.AcceleratedDiT)
    assert isinstance(official.model.model, MMDiffusionTransformer)  # deep copy by default
    assert isinstance(fast.maf_block, nn.Linear)
    (d,) = engine.describe(fast)["dits"]
    assert d["path"] == "model.model" and d["blocks"] == DEPTH and d["heads"] == f"{HEADS}x{DIM // HEADS}"


@pytest.mark.skipif(not interpret_mode(), reason="needs TRITON_INTERPRET=1 for CPU kernel runs")
def test_official_layout_parity_triton(official):
    fast = engine.accelerate(official, backend="triton", dtype=torch.float32)
    x, t, c = _inputs(b=2, seed=1)
    with torch.no_grad():
        want = official.model(x, t, cross_attn_cond=c)
        got = fast.model(x, t, cross_attn_cond=c)
    cos = F.cosine_similarity(got.double().flatten(), want.double().flatten(), dim=0).item()
    assert cos >= 0.99999 and rel_err(got, want) < 1e-4


def test_official_layout_turbo_and_cfg_reference_backend(official):
    fast = engine.accelerate(official, backend="reference", dtype=torch.float32)
    x, t, c = _inputs(b=1, seed=2)
    with torch.no_grad():
        # Guidance amplifies rounding by the scale: compare relative to the whole tensor.
        assert rel_err(fast.model(x, t, cross_attn_cond=c, cfg_scale=5.0),
                       official.model(x, t, cross_attn_cond=c, cfg_scale=5.0)) < 1e-5
    want = ref_sampling.sample_turbo(official.model, x, generator=torch.Generator().manual_seed(3),
                                     cross_attn_cond=c)
    got = engine.sample_turbo(fast.model.model, x, c, generator=torch.Generator().manual_seed(3))
    assert rel_err(got, want) < 1e-5
