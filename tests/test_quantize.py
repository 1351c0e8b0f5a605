"""engine.quantize.quantize_ on the tiny DiT: which layers, quality per forward, memory."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_
from torch import nn

from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import ChannelLastConv1d, MMDiffusionTransformer
from audiox_engine.benchmarks.quant_baselines import bitsandbytes_available, swap_to_bnb_linear8bit
from audiox_engine.benchmarks.quant_quality import block_branches
from audiox_engine.engine.quant_checkpoint import weight_memory_report
from audiox_engine.engine.quantize import (
    Float8WeightAndActivationConfig,
    Int8WeightAndActivationConfig,
    Int8WeightOnlyConfig,
    QuantizedChannelLastConv1d,
    QuantizedLinear,
    default_filter,
    quantize_,
    quantized_modules,
    set_backend,
)
from audiox_engine.kernels import adaln_modulate_quantize

# Velocity cosine vs the unquantized model the issue asks for, per config.
TARGETS = {
    Float8WeightAndActivationConfig: 0.995,
    Int8WeightAndActivationConfig: 0.99,
    Int8WeightOnlyConfig: 0.998,
}
BLOCK_LAYERS = ["attn.qkv", "cross_attn.to_q", "cross_attn.to_kv", "linear1",
                "ffn.w1", "ffn.w2", "ffn.w3", "adaLN_modulation.1"]
CFG = get_preset("tiny").dit
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton paths run


def tiny_dit(seed: int = 1, std: float = 0.04, depth: int | None = None) -> MMDiffusionTransformer:
    cfg = CFG if depth is None else dataclasses.replace(CFG, depth=depth)
    return randomize_(MMDiffusionTransformer(cfg), std=std, seed=seed).eval()


def tiny_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, CFG.io_channels, CFG.latent_frames, generator=g),
            torch.rand(2, generator=g),
            torch.randn(2, CFG.num_cond_tokens, CFG.cond_token_dim, generator=g))


def cosine(a, b) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.fixture(scope="module")
def reference_velocity():
    with torch.no_grad():
        return tiny_dit()(*tiny_inputs())


def test_default_filter_selects_exactly_the_block_layers():
    model = quantize_(tiny_dit(), Int8WeightOnlyConfig())
    expected = {f"transformer.layers.{i}.{name}" for i in range(CFG.depth) for name in BLOCK_LAYERS}
    assert set(quantized_modules(model)) == expected
    # Everything else stays a plain high-precision module.
    for fqn, m in model.named_modules():
        if fqn not in expected and isinstance(m, (nn.Linear, nn.Conv1d)):
            assert m.weight.dtype == torch.float32, fqn
    assert isinstance(model.transformer.project_in, nn.Linear)
    assert isinstance(model.transformer.layers[0].ffn.w2, QuantizedChannelLastConv1d)
    assert isinstance(model.transformer.layers[0].attn.qkv, QuantizedLinear)


def test_default_filter_follows_wrapper_prefixes():
    conv = ChannelLastConv1d(4, 4, 3, padding=1)
    assert default_filter(conv, "model.model.transformer.layers.3.ffn.w1")
    assert not default_filter(conv, "transformer.project_in")
    assert not default_filter(ChannelLastConv1d(4, 4, 1), "transformer.layers.0.x")  # k=1
    assert not default_filter(nn.LayerNorm(4), "transformer.layers.0.norm1")


def test_filter_fn_overrides_and_errors():
    model = tiny_dit()
    seen = []

    def only_qkv(m, fqn):
        seen.append(type(m))
        return fqn.endswith("attn.qkv")

    quantize_(model, Float8WeightAndActivationConfig(), filter_fn=only_qkv)
    assert set(quantized_modules(model)) == {f"transformer.layers.{i}.attn.qkv" for i in range(CFG.depth)}
    # Asked only about Linear / ChannelLastConv1d, never about containers or norms.
    assert set(seen) <= {nn.Linear, ChannelLastConv1d}
    # Quantizing again leaves quantized layers alone and adds the rest.
    quantize_(model, Float8WeightAndActivationConfig(), filter_fn=lambda m, fqn: fqn.endswith("ffn.w2"))
    assert len(quantized_modules(model)) == 2 * CFG.depth
    with pytest.raises(ValueError, match="selected no"):
        quantize_(tiny_dit(), Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: False)
    with pytest.raises(ValueError, match="kernel_size 1"):
        quantize_(nn.Sequential(ChannelLastConv1d(4, 4, 1)), Int8WeightOnlyConfig(), filter_fn=lambda m, f: True)
    with pytest.raises(TypeError, match="QuantConfig"):
        quantize_(tiny_dit(), "fp8")


@pytest.mark.parametrize("config_cls", list(TARGETS), ids=lambda c: c.__name__)
def test_quality_reference_backend(config_cls, reference_velocity):
    """The CPU path (dequantize-then-matmul) on random weights, std 0.04."""
    model = set_backend(quantize_(tiny_dit(), config_cls()), "reference")
    with torch.no_grad():
        v = model(*tiny_inputs())
    assert cosine(v, reference_velocity) >= TARGETS[config_cls]
    # ... and the quantization really happened (a no-op would pass the bound above).
    assert (v - reference_velocity).norm() > 1e-4 * reference_velocity.norm()


@pytest.mark.parametrize("config_cls", list(TARGETS), ids=lambda c: c.__name__)
def test_quality_triton_kernels_one_sample(config_cls):
    """The Triton kernels (interpreter on CPU) end to end; one sample and one block, to
    keep the interpreter under a few seconds."""
    x, t, c = (a[:1].to(DEVICE) for a in tiny_inputs())
    with torch.no_grad():
        ref = tiny_dit(depth=1).to(DEVICE)(x, t, c)
        model = set_backend(quantize_(tiny_dit(depth=1).to(DEVICE), config_cls()), "triton")
        v = model(x, t, c)
        v_ref_backend = set_backend(model, "reference")(x, t, c)
    assert torch.isfinite(v).all()
    assert cosine(v, ref) >= TARGETS[config_cls]
    # Kernels and reference quantize identically: they agree far better than with fp32.
    assert cosine(v, v_ref_backend) >= 0.99999


@pytest.mark.parametrize("config_cls", list(TARGETS), ids=lambda c: c.__name__)
def test_weight_memory(config_cls):
    model = tiny_dit()
    before = weight_memory_report(model)
    assert before.quantized_layers == 0 and before.total_ratio == 1.0
    quantize_(model, config_cls())
    rep = weight_memory_report(model)
    assert rep.quantized_layers == 8 * CFG.depth
    assert rep.quantized_ratio <= 0.52, rep.describe()
    assert rep.total_ratio < 0.6, rep.describe()  # tiny: the unquantized share is large
    assert rep.total_baseline_bytes == before.total_baseline_bytes
    # Weights really are one byte each now.
    for m in quantized_modules(model).values():
        assert m.weight_q.element_size() == 1 and m.weight_scale.dtype == torch.float32


def test_prequantized_hook_and_fused_epilogues_match_module_forward():
    """The fused-producer path (adaLN emits quantized h) gives what the module gives."""
    torch.manual_seed(3)
    block = tiny_dit().transformer.layers[0].to(DEVICE)
    quantize_(block, Float8WeightAndActivationConfig(), filter_fn=lambda m, f: True)
    set_backend(block, "triton")
    B, N, D = 1, 21, CFG.embed_dim
    x, shift, scale = (torch.randn(B, N, D, device=DEVICE) * s for s in (1.0, 0.3, 0.3))
    h = F.layer_norm(x, (D,)) * (1 + scale) + shift
    h_q, h_s = adaln_modulate_quantize(x, shift, scale, "fp8_e4m3")
    with torch.no_grad():
        via_module = block.attn.qkv(h)
        via_hook = block.attn.qkv.forward_prequantized(h_q, h_s, out_dtype=torch.float32)
        torch.testing.assert_close(via_hook, via_module, rtol=1e-3, atol=1e-3 * via_module.abs().max().item())
        # SwiGLU from w1 and w3 in one kernel == silu(w1 r) * w3 r through the modules.
        r = torch.randn(B, N, D, device=DEVICE)
        zeros = torch.zeros(B, 1, D, device=DEVICE)
        r_q, r_s = adaln_modulate_quantize(r, zeros, zeros, "fp8_e4m3")
        r_n = F.layer_norm(r, (D,))
        fused = block.ffn.w1.forward_prequantized(r_q, r_s, out_dtype=torch.float32, epilogue="swiglu",
                                                  partner=block.ffn.w3)
        unfused = F.silu(block.ffn.w1(r_n)) * block.ffn.w3(r_n)
        torch.testing.assert_close(fused, unfused, rtol=1e-3, atol=1e-3 * unfused.abs().max().item())
        with pytest.raises(ValueError, match="partner"):
            block.ffn.w1.forward_prequantized(r_q, r_s, epilogue="swiglu")


def test_bitsandbytes_baseline_is_optional():
    if bitsandbytes_available():
        pytest.skip("bitsandbytes installed: the swap itself is exercised by the GPU benchmark")
    with pytest.raises(ImportError, match="optional"):
        swap_to_bnb_linear8bit(tiny_dit())


def test_dtype_casts_keep_quantized_storage():
    """``model.to(bf16)`` casts the high-precision rest, never the fp8 codes or the scales."""
    model = quantize_(tiny_dit(), Float8WeightAndActivationConfig())
    qkv = model.transformer.layers[0].attn.qkv
    codes, scales = qkv.weight_q.clone(), qkv.weight_scale.clone()
    model.to(torch.bfloat16)
    assert qkv.weight_q.dtype == torch.float8_e4m3fn and qkv.weight_scale.dtype == torch.float32
    assert torch.equal(qkv.weight_q.view(torch.uint8), codes.view(torch.uint8))
    assert torch.equal(qkv.weight_scale, scales)
    assert qkv.bias.dtype == torch.bfloat16
    assert model.transformer.project_in.weight.dtype == torch.bfloat16
    x, t, c = (a[:1] for a in tiny_inputs())
    with torch.no_grad():
        v = set_backend(model, "reference")(x.bfloat16(), t.bfloat16(), c.bfloat16())
    assert v.dtype == torch.bfloat16 and torch.isfinite(v).all()


@pytest.mark.parametrize("config_cls", list(TARGETS), ids=lambda c: c.__name__)
def test_block_branch_quality(config_cls):
    """Per-branch quality: with random weights the velocity is dominated by the time-token
    biases, so this checks the quantized GEMM chains where they are the whole signal."""
    g = torch.Generator().manual_seed(11)
    model = tiny_dit()
    N, D = CFG.latent_seq_len, CFG.embed_dim
    x = torch.randn(1, N, D, generator=g)
    c = torch.randn(1, N, D, generator=g) * 3  # strong modulation: gates of order 1
    rot = model.transformer.latent_rot
    with torch.no_grad():
        want = block_branches(model.transformer.layers[1], x, c, rot)
        set_backend(quantize_(model, config_cls()), "reference")
        got = block_branches(model.transformer.layers[1], x, c, rot)
    for name, w, q in zip(("attention", "ffn"), want, got):
        assert cosine(q, w) >= TARGETS[config_cls], name
        assert (q - w).norm() > 1e-4 * w.norm(), name
