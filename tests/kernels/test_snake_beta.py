"""snake_beta against its reference."""

import pytest
import torch
from kernel_test_utils import DEVICE, assert_close, make_generator, poisoned, randn

from audiox_engine.kernels import snake_beta, snake_beta_reference

SHAPES = [(1, 1, 1), (2, 5, 300), (1, 3, 4097), (1, 64, 485), (1, 2, 20000)]


def _sin_argument_bound(x, alpha):
    """A few roundings (exp, the product, sin) on each side, amplified by the largest
    argument |exp(alpha) x| of sin: the condition number of the op in fp32."""
    return 4 * max(1.0, (alpha.float().exp()[:, None] * x.float()).abs().max().item())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_snake_beta(shape, dtype):
    B, C, T = shape
    gen = make_generator("snake", shape, dtype)
    x = randn(gen, B, C, T, dtype=dtype, scale=3.0)
    alpha = randn(gen, C, dtype=dtype, scale=0.5)
    beta = randn(gen, C, dtype=dtype, scale=0.5)
    out = poisoned(B, C, T, dtype=dtype)
    assert snake_beta(x, alpha, beta, out=out) is out
    assert_close(out, snake_beta_reference(x.float(), alpha.float(), beta.float()), dtype,
                 condition=_sin_argument_bound(x, alpha))


def test_fp32_params_with_half_input_and_strided_x():
    gen = make_generator("snake-mixed")
    x = randn(gen, 2, 6, 100, dtype=torch.bfloat16)[:, ::2]  # channel stride 200
    alpha, beta = randn(gen, 3, scale=0.5), randn(gen, 3, scale=0.5)
    y = snake_beta(x, alpha, beta)
    assert y.shape == (2, 3, 100) and y.dtype == torch.bfloat16
    assert_close(y, snake_beta_reference(x.float(), alpha, beta), torch.bfloat16,
                 condition=_sin_argument_bound(x, alpha))


def test_reference_matches_formula():
    gen = make_generator("snake-formula")
    x = randn(gen, 2, 3, 7, dtype=torch.float64)
    a, b = randn(gen, 3, dtype=torch.float64), randn(gen, 3, dtype=torch.float64)
    expected = x + 1 / (b.exp()[:, None] + 1e-9) * torch.sin(a.exp()[:, None] * x) ** 2
    # The reference computes in fp32 whatever the input dtype.
    assert_close(snake_beta_reference(x, a, b), expected, torch.float32,
                 condition=_sin_argument_bound(x, a), scale=expected.abs().max().item())


def test_bad_inputs_raise():
    x = torch.randn(1, 4, 9, device=DEVICE)
    p = torch.randn(4, device=DEVICE)
    with pytest.raises(ValueError, match="x must be"):
        snake_beta(x[0], p, p)
    with pytest.raises(ValueError, match="alpha must be"):
        snake_beta(x, torch.randn(3, device=DEVICE), p)
    with pytest.raises(ValueError, match="is on"):
        snake_beta(x, p, p.to("meta"))
    with pytest.raises(ValueError, match="dtype"):
        snake_beta(x, p, p.half())
    with pytest.raises(ValueError, match="contiguous last"):
        snake_beta(torch.randn(1, 4, 18, device=DEVICE)[..., ::2], p, p)
