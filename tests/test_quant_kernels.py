"""FP8/INT8 kernels (quantize_rows, scaled_mm, scaled_conv1d_k3, adaln_modulate_quantize)
against float64 references on dequantized operands, under TRITON_INTERPRET=1 on CPU.

Every case draws fresh random inputs, writes into a NaN-poisoned ``out`` buffer, and
checks the plain-PyTorch CPU reference of each op against the same float64 formula.
"""

import zlib

import pytest
import torch
import torch.nn.functional as F

from audiox_engine.kernels.quant_adaln import adaln_modulate_quantize, adaln_modulate_quantize_reference
from audiox_engine.kernels.quant_gemm import (
    pack_quant_conv_weight,
    scaled_conv1d_k3,
    scaled_conv1d_k3_reference,
    scaled_mm,
    scaled_mm_reference,
    unpack_quant_conv_weight,
)
from audiox_engine.kernels.quant_rows import (
    FORMATS,
    dequantize_per_channel,
    dequantize_rows,
    quantize_per_channel,
    quantize_rows,
    quantize_rows_reference,
)
from audiox_engine.benchmarks.quant_baselines import torch_int_mm_int8, torch_scaled_mm_fp8

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (weight format, activations quantized?): W8A8-FP8, W8A8-INT8, INT8 weight-only.
MODES = [("fp8_e4m3", True), ("int8", True), ("int8", False)]
MODE_IDS = ["w8a8_fp8", "w8a8_int8", "int8_weight_only"]


def gen(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(g, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def poisoned(*shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), device=DEVICE, dtype=dtype)


def assert_matches(actual, expected, rel=2e-5):
    """``actual`` finite (no unwritten NaN) and within ``rel`` of expected's scale."""
    assert torch.isfinite(actual).all(), "unwritten (NaN) or non-finite output elements"
    err = (actual.double() - expected.double()).abs().max().item()
    tol = rel * expected.double().abs().max().item() + 1e-6
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


def _activation(g, shape, fmt, quantized, dtype=torch.float32):
    x = randn(g, *shape, dtype=dtype)
    if not quantized:
        return x, None, x.double()
    x_q, s = quantize_rows_reference(x, fmt)
    return x_q, s, dequantize_rows(x_q, s).double()


# ---------------------------------------------------------------------------------------
# quantize_rows and weight quantization
# ---------------------------------------------------------------------------------------

def _roundtrip_bound(x, scale, fmt):
    """Per-element error bound of one quantize/dequantize round trip."""
    s = scale.double()[..., None]
    if fmt == "int8":
        return 0.5 * s * (1 + 1e-5) + 1e-12
    # e4m3: 3 mantissa bits -> half-ulp relative 2^-4 for normals; subnormal spacing 2^-9.
    return torch.maximum(x.double().abs() * 2.0**-4, s * 2.0**-10) * (1 + 1e-5) + 1e-12


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 37, 100), (5, 1536), (4, 5000)], ids=str)
def test_quantize_rows_matches_reference_and_bounds(fmt, shape):
    g = gen("rows", fmt, shape)
    # Rows of very different magnitudes (per-token scales must follow them).
    x = randn(g, *shape) * torch.exp(randn(g, *shape[:-1], 1) * 2)
    x_q, s = quantize_rows(x, fmt)
    r_q, r_s = quantize_rows_reference(x, fmt)
    assert x_q.dtype == FORMATS[fmt][0] and x_q.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == x.shape[:-1]
    torch.testing.assert_close(s, r_s, rtol=1e-6, atol=0)
    # Bit-identical codes, except at most a rare fp32 division tie.
    mismatch = (x_q.float() != r_q.float()).float().mean().item()
    assert mismatch <= 1e-3, f"{mismatch:.2%} of codes differ from the reference"
    err = (dequantize_rows(x_q, s).double() - x.double()).abs()
    assert (err <= _roundtrip_bound(x, s, fmt)).all(), f"round trip error {err.max():.3g} over bound"
    # The row's absmax hits the top code exactly.
    qmax = FORMATS[fmt][1]
    assert torch.allclose(x_q.float().abs().amax(-1), torch.full_like(s, qmax))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_quantize_rows_zero_row_and_strided_input(fmt):
    g = gen("zero", fmt)
    wide = randn(g, 6, 64)
    wide[2] = 0.0
    x = wide[:, :40]  # strided rows, contiguous last dim
    x_q, s = quantize_rows(x, fmt)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert (x_q[2].float() == 0).all()
    torch.testing.assert_close(dequantize_rows(x_q, s), x, atol=s.max().item(), rtol=0.07)


def test_quantize_rows_bad_input():
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="unknown quantization format"):
        quantize_rows(x, "int4")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        quantize_rows(x.to(torch.int32), "int8")
    with pytest.raises(ValueError, match="K > 0"):
        quantize_rows(torch.randn(4, 0, device=DEVICE), "int8")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_quantize_per_channel_roundtrip(fmt):
    g = gen("wq", fmt)
    w = randn(g, 48, 20, 3) * torch.exp(randn(g, 48, 1, 1))
    w_q, s = quantize_per_channel(w, fmt)
    assert w_q.shape == w.shape and s.shape == (48,)
    deq = dequantize_per_channel(w_q, s)
    bound = _roundtrip_bound(w.reshape(48, -1), s, fmt).expand(48, 60).reshape(w.shape)
    assert ((deq.double() - w.double()).abs() <= bound).all()


# ---------------------------------------------------------------------------------------
# scaled_mm
# ---------------------------------------------------------------------------------------

MM_SHAPES = [((1, 1), 1), ((7, 33), 19), ((2, 37, 100), 70), ((3, 5, 130), 260)]


@pytest.mark.parametrize("fmt,quant_a", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("a_shape,N", MM_SHAPES, ids=str)
@pytest.mark.parametrize("epilogue", ["none", "swiglu", "gated_residual"])
def test_scaled_mm_epilogues(fmt, quant_a, a_shape, N, epilogue):
    g = gen("mm", fmt, quant_a, a_shape, N, epilogue)
    K = a_shape[-1]
    a, a_s, a64 = _activation(g, a_shape, fmt, quant_a)
    w_q, w_s = quantize_per_channel(randn(g, N, K, scale=0.05), fmt)
    w64 = dequantize_per_channel(w_q, w_s).double()
    kwargs, bias = {}, None
    y64 = a64 @ w64.T
    if epilogue == "swiglu":
        w3_q, w3_s = quantize_per_channel(randn(g, N, K, scale=0.05), fmt)
        kwargs = dict(w3_q=w3_q, w3_scale=w3_s)
        y64 = F.silu(y64) * (a64 @ dequantize_per_channel(w3_q, w3_s).double().T)
    else:
        bias = randn(g, N)
        y64 = y64 + bias.double()
    out_shape = tuple(a_shape[:-1]) + (N,)
    if epilogue == "gated_residual":
        per_sample = len(a_shape) == 3
        residual = randn(g, *out_shape)
        gate = randn(g, a_shape[0], 1, N) if per_sample else randn(g, *out_shape)
        kwargs = dict(residual=residual, gate=gate)
        y64 = residual.double() + y64 * gate.double()
    out = poisoned(*out_shape)
    y = scaled_mm(a, a_s, w_q, w_s, bias, epilogue=epilogue, out_dtype=torch.float32, out=out, **kwargs)
    assert y is out
    assert_matches(y, y64)
    ref = scaled_mm_reference(a, a_s, w_q, w_s, bias, epilogue=epilogue, out_dtype=torch.float32, **kwargs)
    assert_matches(ref, y64)


@pytest.mark.parametrize("fmt,quant_a", MODES, ids=MODE_IDS)
def test_scaled_mm_bf16_output_and_strided_input(fmt, quant_a):
    g = gen("mm-bf16", fmt, quant_a)
    if quant_a:
        wide = randn(g, 45, 160)
        a_q, a_s = quantize_rows_reference(wide, fmt)
        a = a_q[:, :96]  # strided view of codes: only a prefix of each row
        a64 = dequantize_rows(a, a_s).double()
        s = a_s
    else:
        a = randn(g, 45, 160, dtype=torch.bfloat16)[:, :96]
        a64, s = a.double(), None
    w_q, w_s = quantize_per_channel(randn(g, 50, 96, scale=0.05), fmt)
    out = poisoned(45, 50, dtype=torch.bfloat16)
    y = scaled_mm(a, s, w_q, w_s, out=out, out_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert_matches(y, a64 @ dequantize_per_channel(w_q, w_s).double().T, rel=1.6e-2)


def test_scaled_mm_bad_inputs():
    g = gen("mm-bad")
    a_q, a_s = quantize_rows_reference(randn(g, 4, 16), "int8")
    w_q, w_s = quantize_per_channel(randn(g, 8, 16), "int8")
    w8, w8s = quantize_per_channel(randn(g, 8, 16), "fp8_e4m3")
    with pytest.raises(ValueError, match="same format"):
        scaled_mm(a_q, a_s, w8, w8s)
    with pytest.raises(ValueError, match="needs its per-token a_scale"):
        scaled_mm(a_q, None, w_q, w_s)
    with pytest.raises(ValueError, match="one scale per token"):
        scaled_mm(a_q, a_s[:2], w_q, w_s)
    with pytest.raises(ValueError, match="K dim"):
        scaled_mm(a_q[:, :8], a_s, w_q, w_s)
    with pytest.raises(ValueError, match="needs w3_q"):
        scaled_mm(a_q, a_s, w_q, w_s, epilogue="swiglu")
    with pytest.raises(ValueError, match="needs residual"):
        scaled_mm(a_q, a_s, w_q, w_s, epilogue="gated_residual", gate=randn(g, 4, 8))
    with pytest.raises(ValueError, match="unknown epilogue"):
        scaled_mm(a_q, a_s, w_q, w_s, epilogue="gelu")
    with pytest.raises(ValueError, match="not a quantized storage dtype"):
        scaled_mm(a_q, a_s, w_q.float(), w_s)


# ---------------------------------------------------------------------------------------
# scaled_conv1d_k3
# ---------------------------------------------------------------------------------------

CONV_SHAPES = [(1, 1, 5, 3), (3, 2, 17, 9), (2, 37, 40, 70)]  # (B, T, Cin, Cout)


def _conv64(a64, w_q_packed, w_s):
    w = dequantize_per_channel(unpack_quant_conv_weight(w_q_packed), w_s).double()
    return F.conv1d(a64.transpose(1, 2), w, padding=1).transpose(1, 2)


@pytest.mark.parametrize("fmt,quant_a", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("epilogue", ["none", "swiglu", "gated_residual"])
def test_scaled_conv1d_k3_epilogues(fmt, quant_a, shape, epilogue):
    B, T, cin, cout = shape
    g = gen("conv", fmt, quant_a, shape, epilogue)
    # Per-token scales differ wildly, so a tap using its neighbour's scale would show.
    x = randn(g, B, T, cin) * torch.exp(randn(g, B, T, 1) * 1.5)
    if quant_a:
        a, a_s = quantize_rows_reference(x, fmt)
        a64 = dequantize_rows(a, a_s).double()
    else:
        a, a_s, a64 = x, None, x.double()
    w_q, w_s = quantize_per_channel(randn(g, cout, cin, 3, scale=0.05), fmt)
    wp = pack_quant_conv_weight(w_q)
    y64 = _conv64(a64, wp, w_s)
    kwargs, bias = {}, None
    if epilogue == "swiglu":
        w3_q, w3_s = quantize_per_channel(randn(g, cout, cin, 3, scale=0.05), fmt)
        w3p = pack_quant_conv_weight(w3_q)
        kwargs = dict(w3_packed=w3p, w3_scale=w3_s)
        y64 = F.silu(y64) * _conv64(a64, w3p, w3_s)
    else:
        bias = randn(g, cout)
        y64 = y64 + bias.double()
    if epilogue == "gated_residual":
        residual = randn(g, B, T, 2 * cout)[..., :cout]  # strided residual view
        gate = randn(g, B, 1, cout)
        kwargs = dict(residual=residual, gate=gate)
        y64 = residual.double() + y64 * gate.double()
    out = poisoned(B, T, cout)
    y = scaled_conv1d_k3(a, a_s, wp, w_s, bias, epilogue=epilogue, out_dtype=torch.float32, out=out, **kwargs)
    assert y is out
    assert_matches(y, y64)
    ref = scaled_conv1d_k3_reference(a, a_s, wp, w_s, bias, epilogue=epilogue, out_dtype=torch.float32, **kwargs)
    assert_matches(ref, y64)


def test_pack_quant_conv_weight_roundtrip_and_errors():
    g = gen("pack")
    w_q, w_s = quantize_per_channel(randn(g, 6, 4, 3), "int8")
    wp = pack_quant_conv_weight(w_q)
    assert wp.shape == (3, 6, 4) and wp.is_contiguous()
    assert torch.equal(unpack_quant_conv_weight(wp), w_q)
    with pytest.raises(ValueError, match=r"\(Cout, Cin, 3\)"):
        pack_quant_conv_weight(w_q[..., :2])
    a_q, a_s = quantize_rows_reference(randn(g, 2, 5, 4), "int8")
    with pytest.raises(ValueError, match=r"\(3, Cout, Cin\)"):
        scaled_conv1d_k3(a_q, a_s, w_q, w_s)
    with pytest.raises(ValueError, match=r"\(B, T, Cin\)"):
        scaled_conv1d_k3(a_q[0], a_s[0], wp, w_s)


# ---------------------------------------------------------------------------------------
# Producer-fused quantization and PyTorch's own scaled GEMMs
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("per_token", [True, False])
def test_adaln_modulate_quantize(fmt, per_token):
    g = gen("adaln-q", fmt, per_token)
    B, N, D = 2, 37, 100
    x = randn(g, B, N, D) + 0.3
    mods = randn(g, B, N if per_token else 1, 6 * D, scale=0.5)
    shift, scale = mods[..., :D], mods[..., D:2 * D]  # strided chunks, as the engine passes
    h_q, s = adaln_modulate_quantize(x, shift, scale, fmt)
    r_q, r_s = adaln_modulate_quantize_reference(x, shift, scale, fmt)
    assert h_q.dtype == FORMATS[fmt][0] and s.shape == (B, N)
    torch.testing.assert_close(s, r_s, rtol=1e-5, atol=0)
    h = F.layer_norm(x.double(), (D,), eps=1e-5) * (1 + scale.double()) + shift.double()
    err = (dequantize_rows(h_q, s).double() - h).abs()
    assert (err <= _roundtrip_bound(h, s, fmt) * 1.01 + 1e-5 * s.double()[..., None]).all()


@pytest.mark.parametrize("shape", [((3, 40, 64), 48), ((20, 32), 32)], ids=str)
def test_torch_baselines_match_scaled_mm(shape):
    a_shape, N = shape
    g = gen("torch-mm", shape)
    x = randn(g, *a_shape)
    w = randn(g, N, a_shape[-1], scale=0.05)
    bias = randn(g, N)
    for fmt, fn in (("int8", torch_int_mm_int8), ("fp8_e4m3", torch_scaled_mm_fp8)):
        a_q, a_s = quantize_rows_reference(x, fmt)
        w_q, w_s = quantize_per_channel(w, fmt)
        expected = scaled_mm_reference(a_q, a_s, w_q, w_s, bias, out_dtype=torch.float32)
        try:
            got = fn(a_q, a_s, w_q, w_s, bias, out_dtype=torch.bfloat16)
        except (RuntimeError, NotImplementedError) as e:  # e.g. no CPU kernel in this torch build
            pytest.skip(f"{fn.__name__} unavailable here: {e}")
        assert got.shape == expected.shape
        assert_matches(got, expected, rel=1.6e-2)
    with pytest.raises(ValueError, match="int8 operands"):
        torch_int_mm_int8(a_q, a_s, w_q, w_s)
