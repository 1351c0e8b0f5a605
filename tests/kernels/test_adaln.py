"""adaln_modulate, gated_residual_adaln and adaln_modulate_quantize (one kernel) against
their fp32 references."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_test_utils import (
    DEVICE,
    DTYPES,
    assert_close,
    make_generator,
    poisoned,
    randn,
    roundtrip_bound,
    tolerance,
)

from audiox_engine.kernels import (
    adaln_modulate,
    adaln_modulate_quantize,
    adaln_modulate_quantize_reference,
    adaln_modulate_reference,
    dequantize_rows,
    gated_residual_adaln,
    gated_residual_adaln_reference,
)
from audiox_engine.kernels.quant_rows import FORMATS

SHAPES = [(1, 1, 1), (1, 1, 1536), (2, 37, 100), (3, 5, 7), (2, 19, 1000)]
REAL_SHAPE = (1, 237, 1536)  # one DiT block's tokens at B=1


def _mods(gen, B, N, D, dtype, per_token, n_chunks):
    """Chunks of one (B, N or 1, n_chunks*D) tensor, as the engine passes them."""
    packed = randn(gen, B, N if per_token else 1, n_chunks * D, dtype=dtype, scale=0.5)
    return packed.chunk(n_chunks, dim=-1)


def _x(gen, B, N, D, dtype, strided):
    if strided:  # a view into a wider tensor: row stride 2*D, last dim contiguous
        return randn(gen, B, N, 2 * D, dtype=dtype, offset=0.3)[..., :D]
    return randn(gen, B, N, D, dtype=dtype, offset=0.3)


def _f32(*ts):
    return [None if t is None else t.float() for t in ts]


def _check_modulate(B, N, D, dtype, per_token, strided):
    gen = make_generator("adaln", B, N, D, dtype, per_token, strided)
    x = _x(gen, B, N, D, dtype, strided)
    shift, scale = _mods(gen, B, N, D, dtype, per_token, 6)[:2]
    out = poisoned(B, N, D, dtype=dtype)
    h = adaln_modulate(x, shift, scale, out=out)
    assert h is out
    assert_close(h, adaln_modulate_reference(*_f32(x, shift, scale)), dtype, reduction=D)


def _check_gated(B, N, D, dtype, per_token, with_bias, strided):
    gen = make_generator("gated", B, N, D, dtype, per_token, with_bias, strided)
    x = _x(gen, B, N, D, dtype, strided)
    y = randn(gen, B, N, D, dtype=dtype)
    gate, shift, scale = _mods(gen, B, N, D, dtype, per_token, 3)
    bias = randn(gen, B, D, dtype=dtype) if with_bias else None
    out = (poisoned(B, N, D, dtype=dtype), poisoned(B, N, D, dtype=dtype))
    x2, h = gated_residual_adaln(x, y, gate, shift, scale, bias, out=out)
    assert x2 is out[0] and h is out[1]
    ref_x2, ref_h = gated_residual_adaln_reference(*_f32(x, y, gate, shift, scale, bias))
    assert_close(x2, ref_x2, dtype, reduction=3)  # x + y * gate + bias
    assert_close(h, ref_h, dtype, reduction=D)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("per_token", [True, False], ids=["per_token", "per_sample"])
def test_adaln_modulate(shape, per_token, dtype):
    _check_modulate(*shape, dtype, per_token, strided=False)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("per_token, with_bias", [(True, True), (False, False), (False, True)],
                         ids=["per_token-bias", "per_sample-no_bias", "per_sample-bias"])
def test_gated_residual_adaln(shape, per_token, with_bias, dtype):
    _check_gated(*shape, dtype, per_token, with_bias, strided=False)


def test_real_size(dtype):
    _check_modulate(*REAL_SHAPE, dtype, per_token=True, strided=False)
    _check_gated(*REAL_SHAPE, dtype, per_token=True, with_bias=True, strided=False)


def test_strided_x_and_default_out(dtype):
    gen = make_generator("strided", dtype)
    x = _x(gen, 2, 9, 48, dtype, strided=True)
    shift, scale = _mods(gen, 2, 9, 48, dtype, True, 2)
    h = adaln_modulate(x, shift, scale)
    assert h.shape == (2, 9, 48) and h.dtype == dtype and h.is_contiguous()
    assert_close(h, adaln_modulate_reference(*_f32(x, shift, scale)), dtype, reduction=48)
    _check_gated(2, 9, 48, dtype, per_token=False, with_bias=True, strided=True)


def test_large_offset_is_stable():
    """A large common offset must not destroy the variance (two-pass statistics): the
    error stays within what fp32 sums of 256 terms allow with an offset 1000x the spread
    (a one-pass E[x^2] - E[x]^2 would lose everything)."""
    gen = make_generator("offset")
    x = randn(gen, 1, 4, 256, offset=1000.0)
    shift, scale = _mods(gen, 1, 4, 256, torch.float32, True, 2)
    assert_close(adaln_modulate(x, shift, scale),
                 adaln_modulate_reference(x.double(), shift.double(), scale.double()),
                 torch.float32, reduction=256, condition=1000.0)


_dims = dict(B=st.integers(1, 3), N=st.integers(1, 40), D=st.integers(1, 700),
             dtype=st.sampled_from(DTYPES), per_token=st.booleans(), strided=st.booleans())


@settings(max_examples=12, deadline=None)
@given(**_dims)
def test_adaln_modulate_property(B, N, D, dtype, per_token, strided):
    _check_modulate(B, N, D, dtype, per_token, strided)


@settings(max_examples=12, deadline=None)
@given(**_dims, with_bias=st.booleans())
def test_gated_residual_adaln_property(B, N, D, dtype, per_token, strided, with_bias):
    _check_gated(B, N, D, dtype, per_token, with_bias, strided)


def test_reference_matches_formula():
    gen = make_generator("formula")
    x, y, gate, shift, scale = (randn(gen, 2, 3, 8, dtype=torch.float64) for _ in range(5))
    bias = randn(gen, 2, 8, dtype=torch.float64)
    x2 = x + y * gate + bias[:, None]
    mean = x2.mean(-1, keepdim=True)
    var = ((x2 - mean) ** 2).mean(-1, keepdim=True)
    h = (x2 - mean) / torch.sqrt(var + 1e-5) * (1 + scale) + shift
    ref_x2, ref_h = gated_residual_adaln_reference(x, y, gate, shift, scale, bias)
    # The reference computes in fp32 whatever the input dtype.
    assert_close(ref_x2, x2, torch.float32, reduction=3, scale=x2.abs().max().item())
    assert_close(ref_h, h, torch.float32, reduction=8, scale=h.abs().max().item())


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("per_token", [True, False], ids=["per_token", "per_sample"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_adaln_modulate_quantize(fmt, per_token, dtype):
    gen = make_generator("adaln-q", fmt, per_token, dtype)
    B, N, D = 2, 37, 100
    x = randn(gen, B, N, D, dtype=dtype, offset=0.3)
    shift, scale = _mods(gen, B, N, D, dtype, per_token, 6)[:2]  # strided chunks
    h_q, s = adaln_modulate_quantize(x, shift, scale, fmt)
    r_q, r_s = adaln_modulate_quantize_reference(x, shift, scale, fmt)
    assert h_q.dtype == FORMATS[fmt][0] and h_q.shape == (B, N, D) and s.shape == (B, N)
    # The scale is absmax(h) / QMAX: h's fp32 error (a D-term LayerNorm) plus one division.
    torch.testing.assert_close(s, r_s, rtol=tolerance(torch.float32, D), atol=0)
    h = adaln_modulate_reference(*(t.double() for t in (x, shift, scale)))
    err = (dequantize_rows(h_q, s).double() - h).abs()
    # One round trip, plus the codes moving by one step where h lands near a rounding edge.
    assert (err <= roundtrip_bound(h, s, fmt) * (1 + tolerance(torch.float32, D))
            + tolerance(torch.float32, D) * h.abs().amax(-1, keepdim=True)).all()


def test_bad_inputs_raise():
    x = torch.randn(2, 3, 8, device=DEVICE)
    s = torch.randn(2, 3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="x must be"):
        adaln_modulate(x[0], s, s)
    with pytest.raises(ValueError, match="shift must be"):
        adaln_modulate(x, torch.randn(2, 3, 9, device=DEVICE), s)
    with pytest.raises(ValueError, match="scale must be"):
        adaln_modulate(x, s, torch.randn(2, 2, 8, device=DEVICE))
    with pytest.raises(ValueError, match="dtype"):
        adaln_modulate(x, s.half(), s)
    with pytest.raises(ValueError, match="is on"):
        adaln_modulate(x, torch.empty(2, 3, 8, device="meta"), s)
    with pytest.raises(ValueError, match="contiguous last"):
        adaln_modulate(x, torch.randn(2, 3, 16, device=DEVICE)[..., ::2], s)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        adaln_modulate(x.double(), s.double(), s.double())
    with pytest.raises(ValueError, match="out has shape"):
        adaln_modulate(x, s, s, out=torch.empty(2, 3, 9, device=DEVICE))
    with pytest.raises(ValueError, match="y must have"):
        gated_residual_adaln(x, x[:, :2], s, s, s)
    with pytest.raises(ValueError, match="bias must be"):
        gated_residual_adaln(x, x, s, s, s, bias=torch.randn(2, 3, 8, device=DEVICE))
    with pytest.raises(ValueError, match="out must be"):
        gated_residual_adaln(x, x, s, s, s, out=torch.empty_like(x))
    with pytest.raises(ValueError, match="unknown quantization format"):
        adaln_modulate_quantize(x, s, s, "int4")
    with pytest.raises(ValueError, match="scale must be"):
        adaln_modulate_quantize(x, s, torch.randn(2, 2, 8, device=DEVICE), "int8")
