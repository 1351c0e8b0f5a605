"""scaled_mm and scaled_conv1d_k3 (FP8/INT8, W8A8 and weight-only, every epilogue) against
float64 math on the dequantized operands, under TRITON_INTERPRET=1 on CPU.

Every case draws fresh random inputs, writes into a NaN-poisoned ``out`` buffer, and
checks the plain-PyTorch reference of each op against the same float64 formula.
"""

import pytest
import torch
import torch.nn.functional as F
from kernel_test_utils import DEVICE, assert_close, make_generator, poisoned, randn

from audiox_engine.kernels import (
    dequantize_per_channel,
    dequantize_rows,
    pack_quant_conv_weight,
    quantize_per_channel,
    quantize_rows_reference,
    scaled_conv1d_k3,
    scaled_conv1d_k3_reference,
    scaled_mm,
    scaled_mm_reference,
    unpack_quant_conv_weight,
)

# (weight format, activations quantized?): W8A8-FP8, W8A8-INT8, INT8 weight-only.
MODES = [("fp8_e4m3", True), ("int8", True), ("int8", False)]
MODE_IDS = ["w8a8_fp8", "w8a8_int8", "int8_weight_only"]
EPILOGUES = ["none", "swiglu", "gated_residual"]


def assert_matches(actual, expected64, reduction, magnitude, dtype=torch.float32):
    """Within the tolerance of ``dtype`` and the reduction, absolute errors relative to
    ``magnitude``: the largest intermediate (sums of |a||w|, |bias|, ...; per-token scales
    make rows differ by orders, and a bias may cancel the product)."""
    scale = max(magnitude.max().item(), expected64.abs().max().item())
    assert_close(actual, expected64, dtype, reduction=reduction, scale=scale)


def _activation(g, x, fmt, quantized):
    """(a, a_scale, a as float64): x itself (weight-only) or its per-token quantization."""
    if not quantized:
        return x, None, x.double()
    a, a_s = quantize_rows_reference(x, fmt)
    return a, a_s, dequantize_rows(a, a_s).double()


def _weight(g, fmt, *shape):
    w_q, w_s = quantize_per_channel(randn(g, *shape, scale=0.05), fmt)
    return w_q, w_s, dequantize_per_channel(w_q, w_s).double()


MM_SHAPES = [((1, 1), 1), ((7, 33), 19), ((2, 37, 100), 70), ((3, 5, 130), 260)]


@pytest.mark.parametrize("fmt,quant_a", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("a_shape,N", MM_SHAPES, ids=str)
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_scaled_mm_epilogues(fmt, quant_a, a_shape, N, epilogue):
    g = make_generator("mm", fmt, quant_a, a_shape, N, epilogue)
    K = a_shape[-1]
    a, a_s, a64 = _activation(g, randn(g, *a_shape), fmt, quant_a)
    w_q, w_s, w64 = _weight(g, fmt, N, K)
    kwargs, bias = {}, None
    y64, mag = a64 @ w64.T, a64.abs() @ w64.abs().T
    if epilogue == "swiglu":
        w3_q, w3_s, w3_64 = _weight(g, fmt, N, K)
        kwargs = dict(w3_q=w3_q, w3_scale=w3_s)
        y64, mag = F.silu(y64) * (a64 @ w3_64.T), mag * (1 + a64.abs() @ w3_64.abs().T)
    else:
        bias = randn(g, N)
        y64, mag = y64 + bias.double(), mag + bias.double().abs()
    out_shape = tuple(a_shape[:-1]) + (N,)
    if epilogue == "gated_residual":
        per_sample = len(a_shape) == 3
        residual = randn(g, *out_shape)
        gate = randn(g, a_shape[0], 1, N) if per_sample else randn(g, *out_shape)
        kwargs.update(residual=residual, gate=gate)
        y64 = residual.double() + y64 * gate.double()
        mag = residual.double().abs() + mag * gate.double().abs()
    out = poisoned(*out_shape, dtype=torch.float32)
    y = scaled_mm(a, a_s, w_q, w_s, bias, epilogue=epilogue, out_dtype=torch.float32, out=out, **kwargs)
    assert y is out
    assert_matches(y, y64, K, mag)
    ref = scaled_mm_reference(a, a_s, w_q, w_s, bias, epilogue=epilogue, out_dtype=torch.float32, **kwargs)
    assert_matches(ref, y64, K, mag)


@pytest.mark.parametrize("fmt,quant_a", MODES, ids=MODE_IDS)
def test_scaled_mm_bf16_output_and_strided_input(fmt, quant_a):
    g = make_generator("mm-bf16", fmt, quant_a)
    if quant_a:
        a_q, a_s = quantize_rows_reference(randn(g, 45, 160), fmt)
        a = a_q[:, :96]  # strided view of codes: only a prefix of each row
        a64, s = dequantize_rows(a, a_s).double(), a_s
    else:
        a = randn(g, 45, 160, dtype=torch.bfloat16)[:, :96]
        a64, s = a.double(), None
    w_q, w_s, w64 = _weight(g, fmt, 50, 96)
    out = poisoned(45, 50, dtype=torch.bfloat16)
    y = scaled_mm(a, s, w_q, w_s, out=out, out_dtype=torch.bfloat16)
    assert y is out and y.dtype == torch.bfloat16
    assert_matches(y, a64 @ w64.T, 96, a64.abs() @ w64.abs().T, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_weight_only_float_activations_default_out_dtype(dtype):
    g = make_generator("wo-dtype", dtype)
    a = randn(g, 2, 9, 40, dtype=dtype)
    w_q, w_s, w64 = _weight(g, "int8", 24, 40)
    y = scaled_mm(a, None, w_q, w_s)
    assert y.dtype == dtype and y.shape == (2, 9, 24)
    assert_matches(y, a.double() @ w64.T, 40, a.double().abs() @ w64.abs().T, dtype)


def test_scaled_mm_bad_inputs():
    g = make_generator("mm-bad")
    a_q, a_s = quantize_rows_reference(randn(g, 4, 16), "int8")
    w_q, w_s = quantize_per_channel(randn(g, 8, 16), "int8")
    w8, w8s = quantize_per_channel(randn(g, 8, 16), "fp8_e4m3")
    with pytest.raises(ValueError, match="same format"):
        scaled_mm(a_q, a_s, w8, w8s)
    with pytest.raises(ValueError, match="needs its per-token a_scale"):
        scaled_mm(a_q, None, w_q, w_s)
    with pytest.raises(ValueError, match="one scale per token"):
        scaled_mm(a_q, a_s[:2], w_q, w_s)
    with pytest.raises(ValueError, match=r"\(N, K\) with K"):
        scaled_mm(a_q[:, :8], a_s, w_q, w_s)
    with pytest.raises(ValueError, match=r"w_q must be \(N, K\)"):
        scaled_mm(a_q, a_s, w_q[None], w_s)
    with pytest.raises(ValueError, match="needs w3_q"):
        scaled_mm(a_q, a_s, w_q, w_s, epilogue="swiglu")
    with pytest.raises(ValueError, match="takes no bias"):
        scaled_mm(a_q, a_s, w_q, w_s, w_s, epilogue="swiglu", w3_q=w_q, w3_scale=w_s)
    with pytest.raises(ValueError, match="needs residual"):
        scaled_mm(a_q, a_s, w_q, w_s, epilogue="gated_residual", gate=randn(g, 4, 8))
    with pytest.raises(ValueError, match="unknown epilogue"):
        scaled_mm(a_q, a_s, w_q, w_s, epilogue="gelu")
    with pytest.raises(ValueError, match="not a quantized storage dtype"):
        scaled_mm(a_q, a_s, w_q.float(), w_s)
    with pytest.raises(ValueError, match="scale must be float32"):
        scaled_mm(a_q, a_s, w_q, w_s[:4])
    with pytest.raises(ValueError, match="is on"):
        scaled_mm(a_q, a_s, w_q.to("meta"), w_s)
    with pytest.raises(ValueError, match="out must be"):
        scaled_mm(a_q, a_s, w_q, w_s, out=torch.empty(4, 8, device=DEVICE))  # bf16 by default


# (B, T, Cin, Cout)
CONV_SHAPES = [(1, 1, 5, 3), (3, 2, 17, 9), (2, 37, 40, 70)]


def _conv64(a64, w_packed, w_s, absolute=False):
    """The conv in float64 on dequantized operands (of |w| when ``absolute``)."""
    w = dequantize_per_channel(unpack_quant_conv_weight(w_packed), w_s).double()
    return F.conv1d(a64.transpose(1, 2), w.abs() if absolute else w, padding=1).transpose(1, 2)


@pytest.mark.parametrize("fmt,quant_a", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_scaled_conv1d_k3_epilogues(fmt, quant_a, shape, epilogue):
    B, T, cin, cout = shape
    g = make_generator("conv", fmt, quant_a, shape, epilogue)
    # Per-token scales differ wildly, so a tap using its neighbour's scale would show.
    x = randn(g, B, T, cin) * torch.exp(randn(g, B, T, 1) * 1.5)
    a, a_s, a64 = _activation(g, x, fmt, quant_a)
    w_q, w_s = quantize_per_channel(randn(g, cout, cin, 3, scale=0.05), fmt)
    wp = pack_quant_conv_weight(w_q)
    y64, mag = _conv64(a64, wp, w_s), _conv64(a64.abs(), wp, w_s, absolute=True)
    kwargs, bias = {}, None
    if epilogue == "swiglu":
        w3_q, w3_s = quantize_per_channel(randn(g, cout, cin, 3, scale=0.05), fmt)
        w3p = pack_quant_conv_weight(w3_q)
        kwargs = dict(w3_packed=w3p, w3_scale=w3_s)
        y64 = F.silu(y64) * _conv64(a64, w3p, w3_s)
        mag = mag * (1 + _conv64(a64.abs(), w3p, w3_s, absolute=True))
    else:
        bias = randn(g, cout)
        y64, mag = y64 + bias.double(), mag + bias.double().abs()
    if epilogue == "gated_residual":
        residual = randn(g, B, T, 2 * cout)[..., :cout]  # strided residual view
        gate = randn(g, B, 1, cout)
        kwargs.update(residual=residual, gate=gate)
        y64 = residual.double() + y64 * gate.double()
        mag = residual.double().abs() + mag * gate.double().abs()
    out = poisoned(B, T, cout, dtype=torch.float32)
    y = scaled_conv1d_k3(a, a_s, wp, w_s, bias, epilogue=epilogue, out_dtype=torch.float32, out=out, **kwargs)
    assert y is out
    assert_matches(y, y64, 3 * cin, mag)
    ref = scaled_conv1d_k3_reference(a, a_s, wp, w_s, bias, epilogue=epilogue, out_dtype=torch.float32,
                                     **kwargs)
    assert_matches(ref, y64, 3 * cin, mag)


def test_pack_quant_conv_weight_is_the_float_packing_and_errors():
    g = make_generator("pack")
    w_q, w_s = quantize_per_channel(randn(g, 6, 4, 3), "int8")
    wp = pack_quant_conv_weight(w_q)
    assert wp.shape == (3, 6, 4) and wp.is_contiguous()
    assert torch.equal(unpack_quant_conv_weight(wp), w_q)
    with pytest.raises(ValueError, match=r"\(Cout, Cin, 3\)"):
        pack_quant_conv_weight(w_q[..., :2])
    a_q, a_s = quantize_rows_reference(randn(g, 2, 5, 4), "int8")
    with pytest.raises(ValueError, match=r"packed \(3, Cout, Cin\)"):
        scaled_conv1d_k3(a_q, a_s, w_q, w_s)
    with pytest.raises(ValueError, match=r"\(B, T, Cin\)"):
        scaled_conv1d_k3(a_q[0], a_s[0], wp, w_s)
