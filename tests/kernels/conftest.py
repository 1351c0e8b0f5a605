"""Shared helpers for the kernel tests.

Without a GPU the kernels run through the Triton interpreter: TRITON_INTERPRET must be
set before ``kernels`` is imported, because ``triton.jit`` picks the interpreter at
decoration time. With a GPU the same tests run on CUDA.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from kernel_test_utils import DTYPES  # noqa: E402


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param
