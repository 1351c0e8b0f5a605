"""GEMMs with weights packed once for oneDNN, where that pays on the CPU.

oneDNN's bf16 matmul (AMX or AVX-512 BF16) reorders a plain (Out, In) weight into its
blocked tile layout on every call; for the DiT block's shapes (237 rows, K and N of
1536-12288) that reorder is about a third of the call. ``packed_weight`` does it once
(``torch.ops.mkldnn._reorder_linear_weight``, what inductor's freezing pass does) and
``packed_linear`` runs the matmul on the packed weight, for any number of rows. fp32
weights stay plain: MKL's sgemm reads them in place.

The packed tensor is opaque (``torch._mkldnn`` layout: no storage, cannot be deep-copied
or cast), so callers keep their plain weight as the module state and treat the packed
one as a cache. The ops are private ATen ops: ``packing_available`` checks once, on a
small matmul against ``F.linear``, that they exist and agree; otherwise everything runs
``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["packing_available", "packed_weight", "packed_linear"]

_PACKED_DTYPES = (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def packing_available(dtype: torch.dtype) -> bool:
    """True when oneDNN weight packing exists here and matches ``F.linear`` for ``dtype``."""
    if dtype not in _PACKED_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=g).to(dtype)
    x = torch.randn(7, 40, generator=g).to(dtype)
    b = torch.randn(24, generator=g).to(dtype)
    try:
        got = packed_linear(x, torch.ops.mkldnn._reorder_linear_weight(w, 7), b)
    except Exception:  # op missing from this build, or refusing this dtype on this CPU
        return False
    want = F.linear(x.float(), w.float(), b.float())
    return got.shape == want.shape and bool(torch.allclose(got.float(), want, rtol=2e-2, atol=2e-2))


def packed_weight(weight: torch.Tensor, rows_hint: int) -> torch.Tensor | None:
    """(Out, In) weight -> oneDNN-packed copy for ~``rows_hint`` rows, or None where it does not pay."""
    if weight.device.type != "cpu" or not packing_available(weight.dtype):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, int(rows_hint)))


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with W from ``packed_weight``; x (..., In) contiguous."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
