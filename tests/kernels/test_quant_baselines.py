"""PyTorch's own scaled GEMMs (the benchmark baselines) against scaled_mm's reference."""

import pytest
import torch
from kernel_test_utils import assert_close, make_generator, randn

from audiox_engine.kernels import quantize_per_channel, quantize_rows_reference, scaled_mm_reference
from audiox_engine.benchmarks.quant_baselines import torch_int_mm_int8, torch_scaled_mm_fp8


@pytest.mark.parametrize("shape", [((3, 40, 64), 48), ((20, 32), 32)], ids=str)
def test_torch_baselines_match_scaled_mm(shape):
    a_shape, N = shape
    g = make_generator("torch-mm", shape)
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
        assert_close(got, expected, torch.bfloat16, reduction=a_shape[-1],
                     scale=expected.abs().max().item())
    with pytest.raises(ValueError, match="int8 operands"):
        torch_int_mm_int8(a_q, a_s, w_q, w_s)
