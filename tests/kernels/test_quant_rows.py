"""quantize_rows (per-token activations) and per-channel weight quantization against their
references and against the round-trip error bounds of each format."""

import pytest
import torch
from kernel_test_utils import DEVICE, make_generator, randn, roundtrip_bound

from audiox_engine.kernels.quant_rows import (
    FORMATS,
    dequantize_per_channel,
    dequantize_rows,
    quantize_per_channel,
    quantize_rows,
    quantize_rows_reference,
)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 37, 100), (5, 1536), (4, 5000)], ids=str)
def test_quantize_rows_matches_reference_and_bounds(fmt, shape):
    g = make_generator("rows", fmt, shape)
    # Rows of very different magnitudes (per-token scales must follow them).
    x = randn(g, *shape) * torch.exp(randn(g, *shape[:-1], 1) * 2)
    x_q, s = quantize_rows(x, fmt)
    r_q, r_s = quantize_rows_reference(x, fmt)
    assert x_q.dtype == FORMATS[fmt][0] and x_q.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == x.shape[:-1]
    # absmax is exact; the division by QMAX is one fp32 rounding on each side.
    torch.testing.assert_close(s, r_s, rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    # Bit-identical codes, except at most a rare fp32 division tie.
    mismatch = (x_q.float() != r_q.float()).float().mean().item()
    assert mismatch <= 1e-3, f"{mismatch:.2%} of codes differ from the reference"
    err = (dequantize_rows(x_q, s).double() - x.double()).abs()
    assert (err <= roundtrip_bound(x, s, fmt)).all(), f"round trip error {err.max():.3g} over bound"
    # The row's absmax hits the top code exactly.
    qmax = FORMATS[fmt][1]
    assert torch.allclose(x_q.float().abs().amax(-1), torch.full_like(s, qmax))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_quantize_rows_zero_row_and_strided_input(fmt):
    g = make_generator("zero", fmt)
    wide = randn(g, 6, 64)
    wide[2] = 0.0
    x = wide[:, :40]  # strided rows, contiguous last dim
    x_q, s = quantize_rows(x, fmt)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert (x_q[2].float() == 0).all()
    err = (dequantize_rows(x_q, s).double() - x.double()).abs()
    assert (err <= roundtrip_bound(x, s, fmt)).all()


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
    g = make_generator("wq", fmt)
    w = randn(g, 48, 20, 3) * torch.exp(randn(g, 48, 1, 1))
    w_q, s = quantize_per_channel(w, fmt)
    assert w_q.shape == w.shape and s.shape == (48,)
    deq = dequantize_per_channel(w_q, s)
    bound = roundtrip_bound(w.reshape(48, -1), s, fmt).expand(48, 60).reshape(w.shape)
    assert ((deq.double() - w.double()).abs() <= bound).all()
    with pytest.raises(ValueError, match="output-channel dim"):
        quantize_per_channel(w[0, 0], fmt)
