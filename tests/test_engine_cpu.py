"""engine's CPU backend (``backend="cpu"``) against the eager reference, on fresh random weights.

Tolerances come from the dtype and the reduction length, not from one machine: the CPU
blocks compute what the reference computes with other summation orders (one GEMM per
conv instead of ``F.conv1d``), so in fp32 the norm-wise relative error of each GEMM is a
few ``sqrt(K) * 2^-24``; in bf16 each GEMM input is rounded to 8 significant bits, a
relative error of about ``2^-8`` per GEMM that adds up over the GEMMs in sequence.
"""

import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audiox_engine import engine
from audiox_engine.audiox import sampling as ref_sampling
from audiox_engine.audiox.config import DiTConfig
from audiox_engine.audiox.dit import MMDiffusionTransformer, rope_rotations
from audiox_engine.audiox.vae import OobleckDecoder, SnakeBeta, VAEConfig
from audiox_engine.engine import cpu_features as cpu_features_mod
from audiox_engine.engine.cpu_block import ConvTaps, CPUDiTBlock, qkv_row_order, unfold_conv_weight
from audiox_engine.engine.cpu_gemm import packed_linear, packed_weight, packing_available
from audiox_engine.engine.cpu_vae import (COMPILE_MIN_ELEMENTS, ChannelsLastConv1d, CPUSnakeBeta,
                                          snake_beta_cpu)
from audiox_engine.kernels import snake_beta_reference
from helpers import cosine, dit_inputs, randomize_, rel_err

# 8 heads of dim 12, 16 latent frames (+1 time token), 2 blocks, FFN hidden 256.
SMALL = DiTConfig(embed_dim=96, depth=2, num_heads=12, cond_token_dim=64, global_cond_dim=0,
                  mlp_ratio=2.0, latent_seq_len=17, num_cond_tokens=24)
EPS32 = 2.0 ** -24
EPS_BF16 = 2.0 ** -8
# GEMMs one after another in a forward: 4 per block.
GEMMS_IN_SEQUENCE = 4 * SMALL.depth
K_MAX = 3 * SMALL.ffn_hidden  # the longest reduction: W2 over 3 taps of the hidden width
TOL_FP32 = 64 * math.sqrt(K_MAX) * EPS32 * GEMMS_IN_SEQUENCE
TOL_BF16 = 4 * EPS_BF16 * math.sqrt(GEMMS_IN_SEQUENCE)


def snr_db(got: torch.Tensor, want: torch.Tensor) -> float:
    noise = (got.double() - want.double()).pow(2).sum()
    return (10 * torch.log10(want.double().pow(2).sum() / noise.clamp_min(1e-300))).item()


def inputs(b: int = 2, seed: int = 0):
    return dit_inputs(SMALL, b, seed)


@pytest.fixture(scope="module")
def dit():
    return randomize_(MMDiffusionTransformer(SMALL), std=0.1, seed=21).eval()


@pytest.fixture(scope="module")
def fast(dit):
    """The CPU backend on the same weights, GEMMs in fp32 and in bf16."""
    return {dtype: engine.accelerate(dit, backend="cpu", dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}


# ----------------------------------------------------------------------------- layouts


def test_conv_taps_gemm_is_the_k3_conv():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)  # (B, T, Cin), B > 1: no leak across rows
    w = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    taps = ConvTaps(3, 7, 5, torch.float64, x.device)
    taps.buffer.fill_(float("nan"))  # every element must be written
    taps.center.copy_(x)
    got = F.linear(taps.spread(), unfold_conv_weight(w), b)
    want = F.conv1d(x.transpose(1, 2), w, b, padding=1).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Cout, Cin, 3"):
        unfold_conv_weight(torch.zeros(4, 5, 5))


def test_qkv_row_order_is_q_k_v_slabs_half_split():
    heads, d = 3, 4
    order = qkv_row_order(heads, d)
    # Interleaved row r = (h*d + i)*3 + j; decode the reordered rows back to (j, h, i).
    j, hi = order % 3, order // 3
    h, i = hi // d, hi % d
    assert order.sort().values.tolist() == list(range(3 * heads * d))
    assert j.view(3, -1).tolist() == [[0] * heads * d, [1] * heads * d, [2] * heads * d]
    assert h.view(3, heads, d).tolist()[0] == [[k] * d for k in range(heads)]
    assert i.view(3, heads, d)[0, 0].tolist() == [0, 2, 1, 3]  # q, k: even dims then odd dims
    assert i.view(3, heads, d)[2, 0].tolist() == [0, 1, 2, 3]  # v: natural order


# ----------------------------------------------------------------------------- one block


def test_block_matches_reference_block(dit):
    ref = dit.transformer.layers[1]
    block = CPUDiTBlock(copy.deepcopy(ref))
    g = torch.Generator().manual_seed(2)
    n, d = SMALL.latent_seq_len, SMALL.embed_dim
    x = torch.randn(2, n, d, generator=g)
    c = torch.randn(2, n, d, generator=g)
    context = torch.randn(2, 1, d, generator=g)
    rot = rope_rotations(n, SMALL.head_dim)
    with torch.no_grad():
        want = ref(x, c, rot, context)
        mod = block.prepare_modulation(ref.adaLN_modulation(c))
        bias = ref.cross_attn.time_bias(context)[:, 0]
        cos, sin = rot[0, :, :, 0, 0].contiguous(), rot[0, :, :, 1, 0].contiguous()
        got = block(x, mod, bias, cos, sin)
    assert got.dtype == torch.float32
    assert rel_err(got, want) < 64 * math.sqrt(K_MAX) * EPS32 * 4


def test_prepare_hoists_one_plus_scale(dit, fast):
    fast32 = fast[torch.float32]
    _, _, c = inputs(b=1, seed=3)
    prepared = fast32.prepare(c)
    assert prepared.block_modulation is not None and len(prepared.block_modulation) == SMALL.depth
    for i, ref in enumerate(dit.transformer.layers):
        with torch.no_grad():
            cc = dit.transformer.modulation_tokens(c)
            shift1, scale1, gate1, shift2, scale2, gate2 = ref.adaLN_modulation(cc).chunk(6, dim=-1)
        m = prepared.block_modulation[i]
        assert m.shape == (6, 1, SMALL.latent_seq_len, SMALL.embed_dim) and m.dtype == torch.float32
        for got, want in zip(m, (shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the DiT


def test_forward_parity_fp32(dit, fast):
    fast32 = fast[torch.float32]
    assert isinstance(fast32, engine.AcceleratedDiT) and fast32.backend == "cpu"
    assert all(isinstance(b, CPUDiTBlock) for b in fast32.transformer.layers)
    x, t, c = inputs(b=2)
    with torch.no_grad():
        want = dit(x, t, c)
        got = fast32(x, t, c)
        want_cfg = dit(x, t, c, cfg_scale=4.0)
        got_cfg = fast32(x, t, c, cfg_scale=4.0)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert rel_err(got, want) < TOL_FP32
    assert rel_err(got_cfg, want_cfg) < TOL_FP32


def test_forward_bf16_against_the_fp32_reference(dit, fast):
    fast16 = fast[torch.bfloat16]
    assert fast16.dtype == torch.bfloat16
    x, t, c = inputs(b=2, seed=4)
    with torch.no_grad():
        want = dit(x, t, c)
        got = fast16(x, t, c)
    assert got.dtype == x.dtype  # returned in the caller's dtype
    assert rel_err(got, want) < TOL_BF16
    assert cosine(got, want) > 0.999


class _PoisonedAllocations(torch.overrides.TorchFunctionMode):
    """Every fresh float tensor (torch.empty / empty_like / Tensor.new_empty) starts as NaN,
    so an element the CPU path allocates but never writes shows up in its output."""

    FACTORIES = {torch.empty, torch.empty_like, torch.Tensor.new_empty}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.FACTORIES and out.is_floating_point():
            out.fill_(float("nan"))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_buffers_are_fully_written_when_poisoned(dit, fast, dtype):
    """The block's buffers (conv taps with their zeroed edges, modulated rows, rotated
    heads, attention output) and the VAE's channels-last outputs start as NaN here."""
    x, t, c = inputs(b=2, seed=9)
    with torch.no_grad():
        want = dit(x, t, c)
        with _PoisonedAllocations():
            got = fast[dtype](x, t, c)
    assert torch.isfinite(got).all()
    assert rel_err(got, want) < (TOL_FP32 if dtype == torch.float32 else TOL_BF16)
    dec = _vae(seed=14)
    z = torch.randn(1, 8, 6, generator=torch.Generator().manual_seed(15))
    fast_vae = engine.accelerate(dec, vae_dtype=dtype)
    with torch.no_grad():
        want = dec(z)
        with _PoisonedAllocations():
            got = engine.decode(fast_vae, z)
    assert torch.isfinite(got).all()
    assert rel_err(got, want) < (1e-5 if dtype == torch.float32 else 0.1)


def test_turbo_loop_parity(dit, fast):
    fast32 = fast[torch.float32]
    fast16 = fast[torch.bfloat16]
    x, _, c = inputs(b=1, seed=5)
    want = ref_sampling.sample_turbo(dit, x, steps=4, generator=torch.Generator().manual_seed(6), cross_attn_cond=c)
    got32 = engine.sample_turbo(fast32, x, c, steps=4, generator=torch.Generator().manual_seed(6))
    got16 = engine.sample_turbo(fast16, x, c, steps=4, generator=torch.Generator().manual_seed(6))
    assert rel_err(got32, want) < TOL_FP32
    assert cosine(got16, want) >= 0.999


def test_teacher_parity(dit, fast):
    fast32 = fast[torch.float32]
    x, _, c = inputs(b=1, seed=7)
    want = ref_sampling.sample_teacher(dit, x, steps=2, cfg_scale=5.0, cross_attn_cond=c)
    got = engine.sample_teacher(fast32, x, c, steps=2, cfg_scale=5.0)
    assert rel_err(got, want) < TOL_FP32


def test_packed_weights_survive_copy_and_cast(dit, fast):
    fast16 = fast[torch.bfloat16]
    x, t, c = inputs(b=1, seed=8)
    with torch.no_grad():
        before = fast16(x, t, c)  # builds the packed cache
        clone = copy.deepcopy(fast16)
        torch.testing.assert_close(clone(x, t, c), before, rtol=0, atol=0)
        as32 = copy.deepcopy(fast16).to(torch.float32)
        assert all(b.gemm_kind == "aten" for b in as32.transformer.layers)
        assert rel_err(as32(x, t, c), dit(x, t, c)) < TOL_BF16


@pytest.mark.skipif(not packing_available(torch.bfloat16), reason="no oneDNN bf16 weight packing here")
def test_packed_linear_matches_linear():
    g = torch.Generator().manual_seed(9)
    w = torch.randn(48, 96, generator=g).bfloat16()
    b = torch.randn(48, generator=g).bfloat16()
    x = torch.randn(2, 11, 96, generator=g).bfloat16()  # rows differ from the packing hint
    got = packed_linear(x, packed_weight(w, 17), b)
    want = F.linear(x.float(), w.float(), b.float())
    assert got.shape == want.shape and rel_err(got.float(), want) < 2 * EPS_BF16
    assert packed_weight(w.float(), 17) is None  # fp32 stays plain (MKL reads it in place)


# ----------------------------------------------------------------------------- choice, describe


def test_auto_dtype_follows_the_isa(dit, monkeypatch):
    fast = engine.accelerate(dit, backend="cpu")
    assert fast.dtype == cpu_features_mod.auto_cpu_dtype()
    accelerate_module = sys.modules["audiox_engine.engine.accelerate"]  # the package exports the function
    monkeypatch.setattr(accelerate_module, "auto_cpu_dtype", lambda: torch.float32)
    assert engine.accelerate(dit).dtype == torch.float32
    monkeypatch.setattr(accelerate_module, "auto_cpu_dtype", lambda: torch.bfloat16)
    assert engine.accelerate(dit).dtype == torch.bfloat16
    assert engine.accelerate(dit, backend="reference").dtype == torch.float32  # upcasts per call anyway


def test_cpu_probes_are_guarded(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_features_mod._probe("_is_amx_tile_supported") is False
    assert cpu_features_mod._probe("_no_such_probe") is False
    info = cpu_features_mod.cpu_features()
    assert set(info) == {"capability", "amx", "avx512_bf16", "bf16_fast"}
    assert info["bf16_fast"] == (info["amx"] or info["avx512_bf16"])


def test_describe_reports_the_cpu_path(fast):
    fast16 = fast[torch.bfloat16]
    info = engine.describe(fast16)
    (d,) = info["dits"]
    assert d["backend"] == "cpu" and d["gemm_dtype"] == "bfloat16" and d["stream_dtype"] == "float32"
    assert d["gemm_weights"] == ("onednn-packed" if packing_available(torch.bfloat16) else "plain")
    assert any("one_plus_scale" in h for h in d["hoisted"])
    assert info["cpu"]["isa"] == cpu_features_mod.cpu_features()
    assert info["cpu"]["dit_gemm_dtype"] == ["bfloat16"]


def test_cpu_backend_refuses_other_attention_and_quantization(dit, fast):
    with pytest.raises(ValueError, match="attention must be 'auto' or 'sdpa'"):
        engine.accelerate(dit, backend="cpu", attention="flash")
    with pytest.raises(ValueError, match="backend='reference' to quantize"):
        engine.quantize_accelerated_(copy.deepcopy(fast[torch.float32]), engine.Int8WeightOnlyConfig())


def test_official_layout_on_the_cpu_backend():
    from test_engine_official_tree import ConditionedDiffusionModelWrapper, _inputs

    official = randomize_(ConditionedDiffusionModelWrapper(), std=0.1, seed=23).eval()
    fast = engine.accelerate(official, backend="cpu", dtype=torch.float32)
    assert all(isinstance(b, CPUDiTBlock) for b in fast.model.model.transformer.layers)
    x, t, c = _inputs(b=2, seed=24)
    with torch.no_grad():
        want = official.model(x, t, cross_attn_cond=c, cfg_scale=3.0)
        got = fast.model(x, t, cross_attn_cond=c, cfg_scale=3.0)
    assert rel_err(got, want) < TOL_FP32


# ----------------------------------------------------------------------------- VAE

SMALL_VAE = VAEConfig(channels=4, c_mults=[1, 2], strides=[2, 4], latent_dim=8)


def _vae(seed: int = 10) -> OobleckDecoder:
    return randomize_(OobleckDecoder(SMALL_VAE), std=0.3, seed=seed).eval()


def test_vae_cpu_path_matches_eager():
    dec = _vae()
    n_snakes = sum(isinstance(m, SnakeBeta) for m in dec.modules())
    n_convs = sum(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in dec.modules())
    fast = engine.accelerate(dec, dtype=torch.float32)
    assert sum(isinstance(m, CPUSnakeBeta) for m in fast.modules()) == n_snakes
    assert sum(isinstance(m, ChannelsLastConv1d) for m in fast.modules()) == n_convs
    z = torch.randn(2, 8, 6, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = dec(z)
        got = engine.decode(fast, z)
    assert got.shape == want.shape and got.is_contiguous()  # the 2-channel audio comes back contiguous
    assert rel_err(got, want) < 1e-5
    info = engine.describe(fast)
    assert info["snake_beta"] == {"cpu": n_snakes}
    assert info["cpu"]["vae_convs_channels_last"] == {"float32": n_convs}


def test_vae_bf16_convs_against_fp32():
    dec = _vae(seed=12)
    fast = engine.accelerate(dec, vae_dtype=torch.bfloat16)
    assert all(m.weight.dtype == torch.bfloat16 for m in fast.modules() if isinstance(m, ChannelsLastConv1d))
    assert all(m.alpha.dtype == torch.float32 for m in fast.modules() if isinstance(m, CPUSnakeBeta))
    z = torch.randn(1, 8, 6, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        want = dec(z)
        got = fast(z)
    assert got.dtype == torch.bfloat16
    # 11 convs in sequence, each rounding its input and weight to bf16 (about 2^-8 relative),
    # the SnakeBetas between them amplifying it up to 8x: rel err < 8 * 2^-8 * sqrt(11), > 19.7 dB.
    assert rel_err(got.float(), want) < 8 * EPS_BF16 * math.sqrt(11)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")  # the old hook form, on purpose
@pytest.mark.parametrize("style", ["parametrize", "hook"])
def test_vae_weight_norm_is_folded_once(style):
    dec = _vae(seed=14)
    norm = (torch.nn.utils.parametrizations.weight_norm if style == "parametrize"
            else torch.nn.utils.weight_norm)
    for name, m in list(dec.named_modules()):
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            norm(m)
    with torch.no_grad():  # change g and v after wrapping: the fold must read them, not a stale weight
        for m in dec.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                g = m.parametrizations.weight.original0 if style == "parametrize" else m.weight_g
                g.mul_(1.5)
    z = torch.randn(1, 8, 5, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        want = dec(z)
        fast = engine.accelerate(dec, dtype=torch.float32)
        got = fast(z)
    assert not any(hasattr(m, "weight_g") or hasattr(m, "parametrizations") for m in fast.modules()
                   if isinstance(m, ChannelsLastConv1d))
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("kind", ["conv", "transposed"])
def test_channels_last_conv_matches_conv1d(kind):
    g = torch.Generator().manual_seed(16)
    if kind == "conv":
        conv = nn.Conv1d(6, 10, 5, stride=2, padding=3, dilation=2, groups=2)
    else:
        conv = nn.ConvTranspose1d(6, 10, 8, stride=4, padding=2, output_padding=1, groups=2)
    randomize_(conv, std=0.3, seed=17)
    fast = ChannelsLastConv1d(conv)
    x = torch.randn(3, 6, 13, generator=g)
    with torch.no_grad():
        want = conv(x)
        got = fast(x)
        chained = fast(x.transpose(1, 2).contiguous().transpose(1, 2))  # a channels-last input
    assert got.shape == want.shape and rel_err(got, want) < 1e-6 and rel_err(chained, want) < 1e-6
    assert got.transpose(1, 2).is_contiguous()  # output stays channels-last for the next layer
    with pytest.raises(ValueError, match="expected"):
        fast(torch.randn(1, 5, 13))
    with pytest.raises(ValueError, match="padding_mode"):
        ChannelsLastConv1d(nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect"))


def test_snake_eager_path_matches_reference():
    snake = randomize_(SnakeBeta(16), std=0.5, seed=18)
    x = torch.randn(2, 300, 16, generator=torch.Generator().manual_seed(19)).transpose(1, 2)  # channels-last
    fast = CPUSnakeBeta(snake)
    assert x.numel() < COMPILE_MIN_ELEMENTS  # small: PyTorch ops, no compile
    with torch.no_grad():
        got = fast(x)
        want = snake_beta_reference(x, snake.alpha, snake.beta)
    assert rel_err(got, want) < 8 * EPS32 * 16
    assert fast.implementation in ("compiled", "eager") or fast.implementation.startswith("eager (compile")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_snake_compiled_path_matches_reference(dtype):
    alpha = torch.randn(32, generator=torch.Generator().manual_seed(20)) * 0.5
    beta = torch.randn(32, generator=torch.Generator().manual_seed(21)) * 0.5
    x = torch.randn(1, COMPILE_MIN_ELEMENTS // 32, 32, generator=torch.Generator().manual_seed(22))
    x = x.to(dtype).transpose(1, 2)
    got = snake_beta_cpu(x, alpha, beta)
    want = snake_beta_reference(x.float(), alpha, beta)
    assert got.dtype == dtype and got.stride() == x.stride()
    assert rel_err(got.float(), want) < (8 * EPS32 * 16 if dtype == torch.float32 else EPS_BF16)


# ----------------------------------------------------------------------------- a whole pipeline


def test_tiny_pipeline_on_the_cpu_backend(tmp_path):
    """`engine.accelerate(pipe)` on CPU: the CPU DiT, and the audio prompt's Oobleck encoder
    channels-last, against the eager pipeline, fp32, same seed. Latents are compared: the
    tiny preset's DDSP decoder integrates frequency into phase, so a 1e-7 latent difference
    grows along the waveform."""
    from audiox_engine.audiox.pipeline import AudioXPipeline
    from helpers import write_test_wav

    pipe = AudioXPipeline.from_preset("tiny")
    write_test_wav(tmp_path / "prompt.wav")
    fast = engine.accelerate(pipe, dtype=torch.float32)
    info = engine.describe(fast)
    n_convs = sum(info["cpu"]["vae_convs_channels_last"].values())
    assert info["dits"][0]["backend"] == "cpu" and n_convs > 0
    # Only the convs beside SnakeBetas (the Oobleck's) changed layout: the DiT's 1x1 convs did not.
    assert isinstance(fast.model.dit.preprocess_conv, nn.Conv1d)
    prompt = str(tmp_path / "prompt.wav")
    with torch.no_grad():
        want, _ = pipe("a tone", audio=prompt, seconds=2.0, generator=1, return_latents=True)
        got, _ = fast("a tone", audio=prompt, seconds=2.0, generator=1, return_latents=True)
        torch.testing.assert_close(fast.decode(want, 2.0), pipe.decode(want, 2.0))
    assert got.shape == want.shape and rel_err(got, want) < TOL_FP32
