"""Which speculative methods keep async scheduling on: the draft model and ngram_gpu draft on the device; ngram looks
its drafts up in host tokens and turns it off (as vLLM's ngram)."""

import logging
import shlex

import pytest

from pagoda.engine_args import EngineArgs
from tests.engine.test_speculative_config import SEED_FLAGS, ngram, serve_args


def test_ngram_turns_async_scheduling_off_a_draft_model_keeps_it(llama_dir, caplog):
    plain = EngineArgs(model=llama_dir).create_config()
    assert plain.speculative is None and plain.scheduler.async_scheduling is True
    with caplog.at_level(logging.INFO, logger="pagoda.engine_args"):
        config = EngineArgs(model=llama_dir, speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                                                 "prompt_lookup_max": 3}).create_config()
    assert config.speculative == ngram(3, 3, 3)
    assert config.scheduler.async_scheduling is False
    lines = [r.getMessage() for r in caplog.records if "async scheduling" in r.getMessage()]
    assert lines == ["async scheduling is off: the n-gram proposer drafts from the tokens on the host, which each "
                     "step then waits for"]
    seed = serve_args(shlex.split(SEED_FLAGS), model=llama_dir).create_config()
    assert seed.speculative == ngram(5, 1, 4) and seed.scheduler.async_scheduling is False
    draft = EngineArgs(model=llama_dir, speculative_config={"model": llama_dir, "num_speculative_tokens": 2})
    assert draft.create_config().scheduler.async_scheduling is True  # drafts on the device
    assert EngineArgs(model=llama_dir, speculative_config={"model": llama_dir, "num_speculative_tokens": 2},
                      async_scheduling=False).create_config().scheduler.async_scheduling is False


def test_ngram_gpu_is_the_lookup_on_the_device_and_keeps_async_scheduling(llama_dir):
    config = EngineArgs(model=llama_dir, speculative_config={"method": "ngram_gpu", "num_speculative_tokens": 3,
                                                             "prompt_lookup_max": 4}).create_config()
    spec = config.speculative
    assert (spec.method, spec.num_speculative_tokens, spec.prompt_lookup_min, spec.prompt_lookup_max) == (
        "ngram_gpu", 3, 4, 4)
    assert config.scheduler.async_scheduling is True
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        EngineArgs(model=llama_dir, speculative_config={"method": "ngram_gpu", "num_speculative_tokens": 3,
                                                        "prompt_lookup_min": 5, "prompt_lookup_max": 2}).create_config()
