"""conv1d_k3 and its fused epilogues (float operands) against F.conv1d references."""

import pytest
import torch
import torch.nn.functional as F
from kernel_test_utils import DEVICE, assert_close, make_generator, poisoned, randn

from audiox_engine.kernels import (
    conv1d_k3,
    conv1d_k3_gated_residual,
    conv1d_k3_gated_residual_reference,
    conv1d_k3_reference,
    conv1d_k3_swiglu,
    conv1d_k3_swiglu_reference,
    pack_conv_weight,
    unpack_conv_weight,
)

# (B, T, Cin, Cout): T=1, odd sizes, rows spanning several batches per block, and
# Cin/Cout not multiples of the block sizes.
SHAPES = [(1, 1, 16, 16), (2, 17, 24, 40), (3, 29, 100, 33), (1, 70, 72, 130)]


def _weight(gen, cout, cin, dtype):
    w = randn(gen, cout, cin, 3, scale=1.0 / (3 * cin) ** 0.5)
    return pack_conv_weight(w).to(dtype)


def _f32(*ts):
    return [None if t is None else t.float() for t in ts]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_conv1d_k3(shape, with_bias, dtype):
    B, T, cin, cout = shape
    gen = make_generator("conv", shape, with_bias, dtype)
    x = randn(gen, B, T, cin, dtype=dtype)
    w = _weight(gen, cout, cin, dtype)
    bias = randn(gen, cout, dtype=dtype) if with_bias else None
    out = poisoned(B, T, cout, dtype=dtype)
    assert conv1d_k3(x, w, bias, out=out) is out
    assert_close(out, conv1d_k3_reference(*_f32(x, w, bias)), dtype, reduction=3 * cin)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_conv1d_k3_swiglu(shape, dtype):
    B, T, cin, cout = shape
    gen = make_generator("swiglu", shape, dtype)
    x = randn(gen, B, T, cin, dtype=dtype)
    w1, w3 = _weight(gen, cout, cin, dtype), _weight(gen, cout, cin, dtype)
    out = poisoned(B, T, cout, dtype=dtype)
    assert conv1d_k3_swiglu(x, w1, w3, out=out) is out
    assert_close(out, conv1d_k3_swiglu_reference(*_f32(x, w1, w3)), dtype, reduction=3 * cin)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("per_token", [True, False], ids=["gate_per_token", "gate_per_sample"])
def test_conv1d_k3_gated_residual(shape, per_token, dtype):
    B, T, cin, cout = shape
    gen = make_generator("gated", shape, per_token, dtype)
    x = randn(gen, B, T, cin, dtype=dtype)
    w = _weight(gen, cout, cin, dtype)
    bias = randn(gen, cout, dtype=dtype)
    # Strided views, as chunks of a wider modulation / activation tensor.
    residual = randn(gen, B, T, 2 * cout, dtype=dtype)[..., cout:]
    gate = randn(gen, B, T if per_token else 1, 3 * cout, dtype=dtype)[..., cout:2 * cout]
    out = poisoned(B, T, cout, dtype=dtype)
    assert conv1d_k3_gated_residual(x, w, residual, gate, bias, out=out) is out
    expected = conv1d_k3_gated_residual_reference(*_f32(x, w, residual, gate, bias))
    assert_close(out, expected, dtype, reduction=3 * cin)


def test_strided_x_and_default_out():
    gen = make_generator("conv-strided")
    x = randn(gen, 2, 13, 64)[..., 8:40]  # row stride 64, Cin 32
    w = _weight(gen, 24, 32, torch.float32)
    y = conv1d_k3(x, w)
    assert y.shape == (2, 13, 24) and y.is_contiguous()
    assert_close(y, conv1d_k3_reference(x, w), torch.float32, reduction=3 * 32)


def test_reference_matches_formula():
    """The reference (fp32 math whatever the input dtype) against the definition in fp64."""
    gen = make_generator("conv-formula")
    B, T, cin, cout = 2, 6, 3, 4
    x = randn(gen, B, T, cin, dtype=torch.float64)
    w = randn(gen, cout, cin, 3, dtype=torch.float64)
    bias = randn(gen, cout, dtype=torch.float64)
    expected = bias.expand(B, T, cout).clone()
    for t in range(T):
        for k in range(3):
            s = t + k - 1
            if 0 <= s < T:
                expected[:, t] += x[:, s] @ w[:, :, k].T
    got = conv1d_k3_reference(x, pack_conv_weight(w), bias)
    # fp32 inputs (the reference's rounding of x, w) and a 3*cin(+bias)-term fp32 sum.
    assert_close(got, expected, torch.float32, reduction=3 * cin + 1, scale=expected.abs().max().item())
    assert torch.equal(unpack_conv_weight(pack_conv_weight(w)), w)
    assert pack_conv_weight(w).shape == (3, cout, cin) and pack_conv_weight(w).is_contiguous()
    h = F.silu(conv1d_k3_reference(x, pack_conv_weight(w))) * conv1d_k3_reference(
        x, pack_conv_weight(2 * w))
    assert_close(conv1d_k3_swiglu_reference(x, pack_conv_weight(w), pack_conv_weight(2 * w)), h,
                 torch.float32, reduction=3 * cin, scale=h.abs().max().item())


def test_bad_inputs_raise():
    x = torch.randn(2, 5, 8, device=DEVICE)
    w = pack_conv_weight(torch.randn(6, 8, 3, device=DEVICE))
    with pytest.raises(ValueError, match="packed"):
        conv1d_k3(x, torch.randn(6, 8, 3, device=DEVICE))  # unpacked weight
    with pytest.raises(ValueError, match="packed"):
        conv1d_k3(x, torch.randn(3, 8, 6, device=DEVICE))  # (3, Cin, Cout): the wrong packing
    with pytest.raises(ValueError, match="x must be"):
        conv1d_k3(x[0], w)
    with pytest.raises(ValueError, match="dtype"):
        conv1d_k3(x, w.half())
    with pytest.raises(ValueError, match="is on"):
        conv1d_k3(x, w.to("meta"))
    with pytest.raises(ValueError, match="bias must be"):
        conv1d_k3(x, w, torch.randn(5, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous"):
        conv1d_k3(x, w.transpose(0, 1).contiguous().transpose(0, 1))
    with pytest.raises(ValueError, match="disagree"):
        conv1d_k3_swiglu(x, w, pack_conv_weight(torch.randn(7, 8, 3, device=DEVICE)))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        conv1d_k3(x.to(torch.int8), w.to(torch.int8))
    with pytest.raises(ValueError, match="out must be"):
        conv1d_k3(x, w, out=torch.empty(2, 5, 6, device=DEVICE, dtype=torch.float16))
    with pytest.raises(ValueError, match="residual must be"):
        conv1d_k3_gated_residual(x, w, torch.randn(2, 5, 7, device=DEVICE),
                                 torch.randn(2, 1, 6, device=DEVICE))
    with pytest.raises(ValueError, match="gate must be"):
        conv1d_k3_gated_residual(x, w, torch.randn(2, 5, 6, device=DEVICE),
                                 torch.randn(2, 3, 6, device=DEVICE))
    with pytest.raises(ValueError, match="weight must be"):
        pack_conv_weight(torch.randn(6, 8, 5))
