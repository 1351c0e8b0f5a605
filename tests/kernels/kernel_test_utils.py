"""Helpers shared by the kernel tests (device, seeded inputs, poisoned outputs, tolerances)."""

import zlib

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (atol, rtol) against an fp32 reference on the same (rounded) inputs. bf16 is loose:
# one bf16 ulp is 2^-8 relative, and the interpreter truncates fp32->bf16 stores.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2.5e-2, 2.5e-2),
}


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


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert torch.isfinite(actual).all(), "output has unwritten (NaN) or non-finite elements"
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)
