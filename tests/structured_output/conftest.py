"""Fixtures of the structured-output tests: the session's real BPE tokenizer and one manager over it.

The model vocabulary (2048) is wider than the tokenizer's (2000 ids), as with padded embeddings, and
two ids end generation (<|eos|> and <|im_end|>), as with a generation_config listing several.
"""

import pytest

from pagoda.config import StructuredOutputsConfig

MODEL_VOCAB = 2048


@pytest.fixture(scope="session")
def tokenizer(test_tokenizer_dir):
    from pagoda.tokenizer import get_tokenizer

    return get_tokenizer(test_tokenizer_dir)


@pytest.fixture(scope="session")
def eos_ids(tokenizer):
    return [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]


@pytest.fixture(scope="session")
def manager(tokenizer, eos_ids):
    from pagoda.structured_output import StructuredOutputManager

    mgr = StructuredOutputManager(StructuredOutputsConfig(), tokenizer, MODEL_VOCAB, eos_ids)
    yield mgr
    mgr.shutdown()


@pytest.fixture(scope="session")
def compiled(manager):
    """compiled(params) -> the manager's RequestGrammar for `params`, compiled (a compile error fails)."""
    counter = iter(range(1 << 30))

    def compile_params(params, timeout=60.0):
        grammar = manager.add_request(f"req-{next(counter)}", params)
        assert grammar.wait(timeout), "grammar did not compile in time"
        assert grammar.error is None, grammar.error
        return grammar

    return compile_params
