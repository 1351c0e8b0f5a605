"""dit_attention (RMSNorm + RoPE + attention from interleaved qkv) against its reference."""

import importlib
import math

import pytest
import torch
from kernel_test_utils import DEVICE, assert_close, make_generator, poisoned, randn

from audiox_engine.kernels import dit_attention, dit_attention_reference, rope_tables

# (B, N, H, d): N=1, N not a multiple of any block, d=24 (padded to 32 in-kernel),
# d not a power of two, d up to 128, and the real geometry (heads of 24, N=237) with
# fewer heads: every head is its own program, so 64 heads only cost interpreter time.
SHAPES = [
    (1, 1, 2, 24),
    (2, 37, 3, 24),
    (1, 150, 2, 16),
    (1, 20, 2, 6),
    (2, 33, 1, 96),
    (1, 140, 1, 128),
    (1, 237, 4, 24),
]


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="64 heads take ~30 s in the interpreter")
@pytest.mark.parametrize("B", [1, 4])
def test_dit_attention_real_shape(B, dtype):
    H, d, N = 64, 24, 237
    qkv, cos, sin = _inputs(B, N, H, d, dtype)
    assert_close(dit_attention(qkv, H, cos, sin),
                 dit_attention_reference(qkv.float(), H, cos, sin), dtype, reduction=N)


def _inputs(B, N, H, d, dtype, *key):
    gen = make_generator("attn", B, N, H, d, dtype, *key)
    qkv = randn(gen, B, N, 3 * H * d, dtype=dtype, scale=2.0, offset=0.1)
    cos, sin = rope_tables(N, d, device=DEVICE)
    return qkv, cos, sin


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dit_attention(shape, dtype):
    B, N, H, d = shape
    qkv, cos, sin = _inputs(B, N, H, d, dtype)
    out = poisoned(B, N, H * d, dtype=dtype)
    o = dit_attention(qkv, H, cos, sin, out=out)
    assert o is out
    # Softmax-weighted sums over N keys (the longest fp32 reduction; d <= 128 < 140 <= N
    # or the head dim dominates only where N is short).
    assert_close(o, dit_attention_reference(qkv.float(), H, cos, sin), dtype, reduction=max(N, d))


def test_strided_qkv_and_default_out():
    """qkv as a view with a row stride wider than 3*H*d (last dim still contiguous)."""
    gen = make_generator("attn-strided")
    B, N, H, d = 2, 21, 2, 24
    qkv = randn(gen, B, N, 3 * H * d + 8)[..., : 3 * H * d]
    cos, sin = rope_tables(N, d, device=DEVICE)
    o = dit_attention(qkv, H, cos, sin)
    assert o.shape == (B, N, H * d) and o.is_contiguous()
    assert_close(o, dit_attention_reference(qkv, H, cos, sin), torch.float32, reduction=N)


def test_reference_matches_explicit_math():
    """The reference against a loop written straight from the layout definition."""
    gen = make_generator("attn-explicit")
    B, N, H, d, eps = 1, 5, 2, 4, 1e-6
    qkv = randn(gen, B, N, 3 * H * d, dtype=torch.float64)
    theta = 10000.0
    expected = torch.zeros(B, N, H * d, dtype=torch.float64)
    for h in range(H):
        q, k, v = (torch.stack([qkv[0, :, h * d * 3 + i * 3 + j] for i in range(d)], -1)
                   for j in range(3))

        def norm_rope(x):
            x = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
            y = torch.empty_like(x)
            for n in range(N):
                for i in range(d // 2):
                    a = n * theta ** (-2 * i / d)
                    y[n, 2 * i] = math.cos(a) * x[n, 2 * i] - math.sin(a) * x[n, 2 * i + 1]
                    y[n, 2 * i + 1] = math.sin(a) * x[n, 2 * i] + math.cos(a) * x[n, 2 * i + 1]
            return y

        q, k = norm_rope(q), norm_rope(k)
        p = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)
        expected[0, :, h * d:(h + 1) * d] = p @ v
    cos, sin = rope_tables(N, d)
    got = dit_attention_reference(qkv, H, cos.double(), sin.double(), eps)
    # RMSNorm and RoPE run in fp32 whatever the input dtype (then SDPA in float64).
    assert_close(got, expected, torch.float32, reduction=d, scale=expected.abs().max().item())


def test_real_shape_config_uses_wgmma_blocks_and_fills_an_h100(monkeypatch):
    """At B=1 (64 heads of 24, N=237) the query block is 64 rows with 4 warps, the
    smallest Hopper serves with wgmma, and the grid still covers 132 SMs."""
    # By path: the package re-exports the op under the module's name.
    attention_module = importlib.import_module("audiox_engine.kernels.dit_attention")
    monkeypatch.setattr(attention_module, "interpret_mode", lambda: False)
    for B in (1, 8):
        block_m, _, num_warps = attention_module._config(237, 24, B, 64)
        assert block_m == 64 and num_warps == 4
        assert B * 64 * math.ceil(237 / block_m) >= 132


def test_rope_tables():
    cos, sin = rope_tables(7, 24, theta=10000.0)
    assert cos.shape == sin.shape == (7, 12) and cos.dtype == torch.float32
    angle = 5 * 10000.0 ** (-2 * 3 / 24)
    assert cos[5, 3].item() == pytest.approx(math.cos(angle), rel=1e-6)
    assert sin[5, 3].item() == pytest.approx(math.sin(angle), rel=1e-6)


def test_bad_inputs_raise():
    qkv = torch.randn(1, 4, 3 * 2 * 8, device=DEVICE)
    cos, sin = rope_tables(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="not divisible"):
        dit_attention(qkv, 5, cos, sin)
    with pytest.raises(ValueError, match="must be even"):
        dit_attention(torch.randn(1, 4, 3 * 2 * 5, device=DEVICE), 2, cos, sin)
    with pytest.raises(ValueError, match="qkv must be"):
        dit_attention(qkv[0], 2, cos, sin)
    with pytest.raises(ValueError, match="cos must be"):
        dit_attention(qkv, 2, cos[:3], sin)
    with pytest.raises(ValueError, match="sin must be float32"):
        dit_attention(qkv, 2, cos, sin.half())
    with pytest.raises(ValueError, match="is on"):
        dit_attention(qkv, 2, cos.to("meta"), sin)
    with pytest.raises(ValueError, match="exceeds"):
        big = torch.randn(1, 2, 3 * 256, device=DEVICE)
        dit_attention(big, 1, *rope_tables(2, 256, device=DEVICE))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        dit_attention(qkv.double(), 2, cos, sin)
