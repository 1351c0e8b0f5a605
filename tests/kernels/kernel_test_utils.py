"""Helpers shared by the kernel tests (device, seeded inputs, poisoned outputs, tolerances)."""

import zlib

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FP32_EPS = torch.finfo(torch.float32).eps


def tolerance(dtype: torch.dtype, reduction: int = 1, condition: float = 1.0) -> float:
    """Relative tolerance (and absolute, for O(1) results) of a kernel result in ``dtype``
    against an fp32 reference computed from the same inputs.

    Two error sources, each bounded from the arithmetic alone (no CPU-specific slack):
    - the result's rounding to ``dtype``: one ulp, as the interpreter truncates fp32
      stores, is at most eps(dtype) relative; counted twice for one intermediate rounding;
    - fp32 arithmetic done in another order or by other library functions: a sum of
      ``reduction`` terms reassociated moves by at most ~reduction * eps(fp32) of its
      magnitude; ``condition`` multiplies that where the computation amplifies relative
      errors of its inputs (e.g. the largest argument of a periodic function).
    """
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else FP32_EPS
    return 2 * eps + reduction * condition * FP32_EPS


def make_generator(*key) -> torch.Generator:
    """A CPU generator seeded from the test's parameters, so each case is reproducible."""
    seed = zlib.crc32(repr(key).encode())
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape, dtype=torch.float32, scale: float = 1.0,
          offset: float = 0.0) -> torch.Tensor:
    """Random normal values (never all zeros) on the test device."""
    t = torch.randn(*shape, generator=gen) * scale + offset
    return t.to(device=DEVICE, dtype=dtype)


def poisoned(*shape, dtype) -> torch.Tensor:
    """An output buffer full of NaN: any element the kernel fails to write stays NaN."""
    return torch.full(shape, float("nan"), device=DEVICE, dtype=dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 reduction: int = 1, condition: float = 1.0, scale: float = 1.0) -> None:
    """``actual`` finite (no unwritten NaN) and within ``tolerance(dtype, reduction,
    condition)`` of ``expected``: relative, and absolute times ``scale`` (the magnitude of
    the results, 1 for O(1) values)."""
    assert torch.isfinite(actual).all(), "output has unwritten (NaN) or non-finite elements"
    tol = tolerance(dtype, reduction, condition)
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol * scale, rtol=tol)


def roundtrip_bound(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """Per-element error bound of one per-row quantize/dequantize round trip of x (..., K)
    with row scales (...): half a step for INT8; for FP8 e4m3 half an ulp (2^-4 relative,
    3 mantissa bits) above 2^-6 * scale and half the subnormal spacing 2^-9 below."""
    s = scale.double()[..., None]
    if fmt == "int8":
        return 0.5 * s * (1 + 1e-5) + 1e-12
    return torch.maximum(x.double().abs() * 2.0**-4, s * 2.0**-10) * (1 + 1e-5) + 1e-12
