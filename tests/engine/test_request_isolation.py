"""One bad request fails alone: a user logits processor that raises (or returns garbage) ends that
request with finish_reason "error" and a reason naming it, while the other requests of the same batch
finish with exactly the tokens they get without it, and the engine keeps serving with every KV block
and runner row given back."""

import pytest
import torch

from pagoda import LLM, SamplingParams
from pagoda.core.sched_output import CachedRequestData, NewRequestData, SchedulerOutput
from pagoda.engine.core import is_fatal, parse_faults
from pagoda.worker.failed_requests import FailedRequests

PROMPTS = ["import os", "def main():\n    return", "x = 1", "class Foo(object):"]
MAX_TOKENS = 8


def boom_after_two(output_ids, logits):
    if len(output_ids) >= 2:
        raise KeyError("boom")
    return logits


def boom_at_once(prompt_ids, output_ids, logits):
    raise ZeroDivisionError("no logits for you")


def wrong_shape(output_ids, logits):
    return logits[:3]


def _params(**extra):
    return SamplingParams(**{"temperature": 0, "max_tokens": MAX_TOKENS, "ignore_eos": True, **extra})


def _engine_is_clean(llm) -> None:
    core = llm.llm_engine.core
    runner = core.executor.worker.runner
    assert not core.scheduler.has_unfinished_requests()
    assert core.scheduler.stats()["kv_cache_usage"] == 0.0
    # One more request: its first step hands every finished (and failed) id to the runner, which drops them;
    # only that request's own row may be left until the next step.
    llm.generate(["x"], _params(max_tokens=1), use_tqdm=False)
    assert len(runner.batch.row_of) <= 1 and not runner.failed
    assert not llm.llm_engine.output_processor.has_unfinished()


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_a_raising_logits_processor_fails_only_its_request(llama_dir, async_scheduling):
    llm = LLM(llama_dir, max_model_len=256, async_scheduling=async_scheduling)
    expected = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, _params(), use_tqdm=False)]

    bad = {1: boom_after_two, 3: boom_at_once}
    params = [_params(logits_processors=[bad[i]]) if i in bad else _params() for i in range(len(PROMPTS))]
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    for i, output in enumerate(outputs):
        completion = output.outputs[0]
        if i not in bad:
            assert completion.finish_reason == "length" and completion.error is None
            assert completion.token_ids == expected[i], i
            continue
        assert output.finished and completion.finish_reason == "error"
        assert bad[i].__name__ in completion.error and output.request_id in completion.error
    assert "KeyError" in outputs[1].outputs[0].error and "ZeroDivisionError" in outputs[3].outputs[0].error
    # Tokens sampled before the failure stay in the output (the processor raised at its third token).
    assert outputs[1].outputs[0].token_ids == expected[1][:2]
    assert outputs[3].outputs[0].token_ids == []

    _engine_is_clean(llm)
    again = llm.generate(PROMPTS, _params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == expected


def test_a_processor_returning_the_wrong_shape_is_named(llama_dir):
    llm = LLM(llama_dir, max_model_len=256)
    good, bad = llm.generate(PROMPTS[:2], [_params(), _params(logits_processors=[wrong_shape])], use_tqdm=False)
    assert good.outputs[0].finish_reason == "length" and len(good.outputs[0].token_ids) == MAX_TOKENS
    error = bad.outputs[0].error
    assert bad.outputs[0].finish_reason == "error" and "wrong_shape" in error and "shape" in error
    # n > 1: every child runs the failing processor, each fails on its own, the request still ends.
    (both,) = llm.generate(["import os"], _params(n=2, logits_processors=[boom_at_once]), use_tqdm=False)
    assert [c.finish_reason for c in both.outputs] == ["error", "error"]
    _engine_is_clean(llm)


def test_only_device_errors_are_fatal():
    assert is_fatal(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_fatal(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_fatal(MemoryError())
    assert not is_fatal(KeyError("boom")) and not is_fatal(ValueError("a logits processor must return a tensor"))
    assert not is_fatal(RuntimeError("index 99999 is out of bounds for dimension 0 with size 512"))


def test_the_fault_hook_spec():
    assert parse_faults("") == {}
    assert parse_faults("raise:7, crash:9,hang:-1") == {7: "raise", 9: "crash", -1: "hang"}
    with pytest.raises(ValueError, match="PAGODA_TEST_FAULT"):
        parse_faults("explode:7")


def test_the_runner_fails_a_request_it_cannot_add_and_whoever_shares_its_unwritten_blocks(llama_dir):
    """Driving the real runner with messages the scheduler never sends (a prompt longer than the runner's
    rows), since the Processor refuses every real input that could fail there."""
    llm = LLM(llama_dir, max_model_len=64, block_size=16)
    runner = llm.llm_engine.core.executor.worker.runner
    params = SamplingParams(temperature=0, max_tokens=4)
    prompt = list(range(5, 37))  # 32 tokens: two full blocks
    bad = NewRequestData("bad", list(range(5, 105)), 100, params, [0, 1, 2, 3, 4, 5, 6], 0)
    sharer = NewRequestData("sharer", prompt, 32, params, [0, 8], 16)  # its cached first block is bad's
    healthy = NewRequestData("ok", prompt, 32, params, [10, 11], 0)
    sched = SchedulerOutput([bad, sharer, healthy], [], {"bad": 100, "sharer": 16, "ok": 32}, 148)
    out = runner.execute_model(sched).get()
    assert set(out.failed) == {"bad", "sharer"}
    assert "adding request bad" in out.failed["bad"] and "request bad" in out.failed["sharer"]
    assert list(out.sampled_token_ids) == ["ok"] and set(runner.batch.row_of) == {"ok"}
    # Until the scheduler drops them, the failed requests are left out of the steps it planned meanwhile.
    later = SchedulerOutput([], [CachedRequestData("bad", [9], 100), CachedRequestData("ok", [], 32)],
                            {"bad": 1, "ok": 1}, 2)
    assert list(runner.execute_model(later).get().sampled_token_ids) == ["ok"]
    assert 9 in runner.failed.unwritten["bad"]
    runner.execute_model(SchedulerOutput([], [], {}, 0, finished_req_ids={"bad", "sharer", "ok"}))
    assert not runner.failed and runner.batch.row_of == {}


def test_failed_requests_bookkeeping():
    failed = FailedRequests(block_size=4)
    assert not failed
    failed.add("r", [3, 4, 5], num_computed_tokens=5)  # block 3 is written, 4 half, 5 not
    assert failed.unwritten == {"r": {4, 5}}
    kept = failed.split_cached([CachedRequestData("r", [6], 12), CachedRequestData("s", [7], 4)])
    assert [c.req_id for c in kept] == ["s"] and failed.unwritten["r"] == {4, 5, 6}
    params = SamplingParams()
    assert failed.shares_unwritten(NewRequestData("a", [1] * 8, 8, params, [3, 9], 4)) is None  # hit on written 3
    assert failed.shares_unwritten(NewRequestData("b", [1] * 12, 12, params, [3, 4, 9], 8)) == "r"
    failed.forget(["r"])
    assert not failed and "r" not in failed
