"""Shared fixtures for the kernel tests (TRITON_INTERPRET is set by ``tests/conftest.py``)."""

import pytest
from kernel_test_utils import DTYPES


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param
