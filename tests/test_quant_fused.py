"""quantize_accelerated_: the accelerated (fused-block) DiT with FP8/INT8 GEMMs."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_

from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.engine.accelerated_dit import AcceleratedDiT
from audiox_engine.engine.fused_block import op_set
from audiox_engine.engine.quant_fused_block import QuantizedFusedDiTBlock, quantize_accelerated_
from audiox_engine.engine.quant_checkpoint import (
    weight_memory_report,
)
from audiox_engine.engine.quantize import (
    Float8WeightAndActivationConfig,
    Int8WeightAndActivationConfig,
    Int8WeightOnlyConfig,
    set_backend,
)

TARGETS = {Float8WeightAndActivationConfig: 0.995, Int8WeightAndActivationConfig: 0.99,
           Int8WeightOnlyConfig: 0.998}
CFG = get_preset("tiny").dit
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def eager(depth=None):
    cfg = CFG if depth is None else dataclasses.replace(CFG, depth=depth)
    return randomize_(MMDiffusionTransformer(cfg), std=0.04, seed=1).eval()


def inputs(batch=2):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, CFG.io_channels, CFG.latent_frames, generator=g), torch.rand(batch, generator=g),
            torch.randn(batch, CFG.num_cond_tokens, CFG.cond_token_dim, generator=g))


def cosine(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("config_cls", list(TARGETS), ids=lambda c: c.__name__)
def test_quantized_accelerated_reference_backend(config_cls):
    with torch.no_grad():
        ref = eager()(*inputs(batch=1))
        acc = AcceleratedDiT(eager(), backend="reference", attention="sdpa", cuda_graphs=False)
        before = weight_memory_report(acc)
        quantize_accelerated_(acc, config_cls())
        assert all(isinstance(b, QuantizedFusedDiTBlock) for b in acc.transformer.layers)
        v = acc(*inputs(batch=1))
    assert cosine(v, ref) >= TARGETS[config_cls]
    assert (v - ref).norm() > 1e-4 * ref.norm()  # the quantization really happened
    after = weight_memory_report(acc)
    assert after.quantized_ratio <= 0.52 and after.total_bytes < 0.75 * before.total_bytes


def test_quantized_accelerated_triton_end_to_end():
    """The whole accelerated DiT on the Triton kernels (interpreter on CPU), FP8; one block
    and one sample to stay fast. Every config's block is checked in the test below."""
    config_cls = Float8WeightAndActivationConfig
    x, t, c = (a[:1] for a in inputs())
    with torch.no_grad():
        ref = eager(depth=1)(x, t, c)
        outs = {}
        for backend, attention in (("triton", "triton"), ("reference", "sdpa")):
            acc = AcceleratedDiT(eager(depth=1), backend=backend, attention=attention, cuda_graphs=False)
            quantize_accelerated_(acc.to(DEVICE), config_cls())
            outs[backend] = acc(x.to(DEVICE), t.to(DEVICE), c.to(DEVICE)).cpu()
    assert torch.isfinite(outs["triton"]).all()
    assert cosine(outs["triton"], ref) >= TARGETS[config_cls]
    assert cosine(outs["triton"], outs["reference"]) >= 0.99999


def test_needs_an_accelerated_model():
    with pytest.raises(ValueError, match="engine.accelerate first"):
        quantize_accelerated_(eager(), Int8WeightOnlyConfig())


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("config_cls", list(TARGETS), ids=lambda c: c.__name__)
def test_block_increment_quality(config_cls, backend):
    """What one block adds to the residual stream, quantized vs not.

    With random weights the DiT's velocity is dominated by the (unquantized) time-token
    biases, so the velocity cosine barely sees the block GEMMs; here strong random gates
    (mod ~ N(0, 0.5)) make the attention and FFN branches the whole signal.
    """
    g = torch.Generator().manual_seed(7)
    attention = "triton" if backend == "triton" else "sdpa"
    acc = AcceleratedDiT(eager(depth=1), backend=backend, attention=attention, cuda_graphs=False).to(DEVICE)
    B, N, D = 1, CFG.latent_seq_len, CFG.embed_dim
    x = torch.randn(B, N, D, generator=g).to(DEVICE)
    mod = (torch.randn(B, N, 6 * D, generator=g) * 0.5).to(DEVICE)
    time_bias = torch.randn(B, D, generator=g).to(DEVICE)
    cos, sin = acc.rope(N)
    with torch.no_grad():
        fused = acc.transformer.layers[0]
        want = fused(x, mod, time_bias, cos, sin) - x
        qblock = QuantizedFusedDiTBlock(fused, config_cls())
        got = qblock(x, mod, time_bias, cos, sin) - x
        if backend == "triton":  # kernels and reference quantize identically
            qblock.backend, qblock._ops = "reference", op_set("reference")
            qblock.attention = "sdpa"
            set_backend(qblock, "reference")
            ref_backend = qblock(x, mod, time_bias, cos, sin) - x
            assert cosine(got, ref_backend) >= 0.99999
    assert torch.isfinite(got).all()
    assert cosine(got, want) >= TARGETS[config_cls]
