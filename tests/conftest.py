"""Test configuration.

TRITON_INTERPRET must be set before Triton is first imported (``triton.jit`` picks the
interpreter at decoration time), so that without a GPU every kernel runs, slowly, on
the CPU through Triton's interpreter. With a GPU the same tests run the compiled
kernels on CUDA.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
