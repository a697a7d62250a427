"""Fixtures for kernel tests: run on CUDA when present, else on CPU through Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported)."""

import pytest
import torch


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
