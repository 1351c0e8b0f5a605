"""Quantized safetensors checkpoints: round trip, and clear errors for the wrong file."""

import dataclasses
import json

import pytest
import torch
from helpers import randomize_
from safetensors import safe_open

from audiox_engine.audiox.checkpoint import save_safetensors
from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.engine.quant_checkpoint import (
    QUANT_FORMAT_VERSION,
    QuantCheckpointError,
    load_quantized,
    save_quantized,
)
from audiox_engine.engine.quantize import (
    Float8WeightAndActivationConfig,
    Int8WeightAndActivationConfig,
    Int8WeightOnlyConfig,
    quantize_,
    quantized_modules,
    set_backend,
)

CFG = get_preset("tiny").dit


def tiny_dit(seed=1, cfg=CFG):
    return randomize_(MMDiffusionTransformer(cfg), std=0.04, seed=seed).eval()


def inputs():
    g = torch.Generator().manual_seed(5)
    return (torch.randn(1, CFG.io_channels, CFG.latent_frames, generator=g), torch.rand(1, generator=g),
            torch.randn(1, CFG.num_cond_tokens, CFG.cond_token_dim, generator=g))


@pytest.mark.parametrize("config_cls", [Float8WeightAndActivationConfig, Int8WeightAndActivationConfig,
                                        Int8WeightOnlyConfig], ids=lambda c: c.__name__)
def test_round_trip(tmp_path, config_cls):
    src = quantize_(tiny_dit(seed=1), config_cls())
    path = tmp_path / "q.safetensors"
    save_quantized(src, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["quant_format_version"] == QUANT_FORMAT_VERSION
    assert json.loads(meta["quant_recipe"]) == config_cls().recipe()
    assert json.loads(meta["model_config"])["embed_dim"] == CFG.embed_dim

    # Into a fresh unquantized model with other weights (seed 2): structure from the file.
    dst = load_quantized(tiny_dit(seed=2), path)
    assert list(quantized_modules(dst)) == list(quantized_modules(src))
    sd_src, sd_dst = src.state_dict(), dst.state_dict()
    assert sd_src.keys() == sd_dst.keys()
    for k in sd_src:
        assert sd_src[k].dtype == sd_dst[k].dtype, k
        assert torch.equal(sd_src[k].view(torch.uint8) if sd_src[k].element_size() == 1 else sd_src[k],
                           sd_dst[k].view(torch.uint8) if sd_dst[k].element_size() == 1 else sd_dst[k]), k
    with torch.no_grad():
        set_backend(src, "reference")
        set_backend(dst, "reference")
        torch.testing.assert_close(dst(*inputs()), src(*inputs()), rtol=0, atol=0)
    # Into an already-quantized model, with the config named explicitly.
    again = load_quantized(quantize_(tiny_dit(seed=3), config_cls()), path, config=config_cls())
    assert torch.equal(again.transformer.layers[1].ffn.w2.weight_scale, src.transformer.layers[1].ffn.w2.weight_scale)


def test_wrong_recipe_names_the_difference(tmp_path):
    path = tmp_path / "fp8.safetensors"
    save_quantized(quantize_(tiny_dit(), Float8WeightAndActivationConfig()), path)
    target = tiny_dit(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(QuantCheckpointError, match=r"weight_format: file has 'fp8_e4m3', expected 'int8'"):
        load_quantized(target, path, config=Int8WeightAndActivationConfig())
    # Failed load: the model is untouched.
    assert not quantized_modules(target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    with pytest.raises(QuantCheckpointError, match="recipe"):
        load_quantized(quantize_(tiny_dit(), Int8WeightOnlyConfig()), path)


def test_wrong_model_config_and_layers(tmp_path):
    path = tmp_path / "q.safetensors"
    save_quantized(quantize_(tiny_dit(), Int8WeightOnlyConfig()), path)
    wider = dataclasses.replace(CFG, embed_dim=256)
    with pytest.raises(QuantCheckpointError, match=r"another model config:\n  embed_dim: file has 128, expected 256"):
        load_quantized(tiny_dit(cfg=wider), path)
    # A filter that selects other layers than the file holds.
    with pytest.raises(QuantCheckpointError, match=r"only in the file \['transformer.layers.0.adaLN_modulation.1'"):
        load_quantized(tiny_dit(), path, filter_fn=lambda m, fqn: fqn.endswith("qkv"))
    # A model quantized at other layers.
    partial = quantize_(tiny_dit(), Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn.endswith("qkv"))
    with pytest.raises(QuantCheckpointError, match="other layers"):
        load_quantized(partial, path)


def test_shape_mismatch_without_model_config(tmp_path):
    """No ``cfg`` to compare (a bare block): the tensor shapes are checked by name."""
    path = tmp_path / "block.safetensors"
    block = quantize_(tiny_dit().transformer.layers[0], Int8WeightOnlyConfig(), filter_fn=lambda m, f: True)
    save_quantized(block, path)
    other_cfg = dataclasses.replace(CFG, embed_dim=64)
    other = tiny_dit(cfg=other_cfg).transformer.layers[0]
    with pytest.raises(QuantCheckpointError, match=r"attn.qkv.weight_q is \(384, 128\), the model needs \(192, 64\)"):
        load_quantized(other, path)


def test_plain_checkpoint_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_safetensors(tiny_dit().state_dict(), path)
    with pytest.raises(QuantCheckpointError, match="not a quantized checkpoint"):
        load_quantized(tiny_dit(), path)
    with pytest.raises(QuantCheckpointError, match="not found"):
        load_quantized(tiny_dit(), tmp_path / "missing.safetensors")
