"""Named ranges for profilers: NVTX on CUDA (Nsight Systems), ``record_function`` always.

``with annotate("turbo/step0"): ...`` shows up in both ``nsys`` timelines and
``torch.profiler`` traces; on a CPU-only machine it costs one ``record_function``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["annotate"]


@contextlib.contextmanager
def annotate(name: str) -> Iterator[None]:
    """NVTX range (only when CUDA is available) plus a ``torch.profiler.record_function``."""
    nvtx = torch.cuda.is_available()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()
