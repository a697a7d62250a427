"""Session-wide test set-up.

Without a GPU, Triton kernels run through Triton's interpreter: TRITON_INTERPRET must be set before
triton is first imported, so it is set here, before any test module loads.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def test_tokenizer_dir(tmp_path_factory) -> str:
    """The session's byte-level BPE tokenizer (pagoda.tiny_models.train_tokenizer), trained once."""
    from pagoda.tiny_models import train_tokenizer

    return train_tokenizer(str(tmp_path_factory.mktemp("test-tokenizer")))
