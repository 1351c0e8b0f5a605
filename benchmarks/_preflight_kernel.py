"""The trivial Triton kernel the preflight launches: adds one to a float32 tensor in place.

A module of its own: ``triton.jit`` reads the function's source, and ``preflight.py``
must import cleanly on a machine without Triton to report that it is missing.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _add_one_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1.0, mask=mask)


def add_one(x: torch.Tensor) -> None:
    """x += 1, for a contiguous float32 x, on the GPU (or in Triton's interpreter)."""
    n = x.numel()
    _add_one_kernel[(triton.cdiv(n, 256),)](x, n, BLOCK=256)
