"""Prompts the tensor-parallel tests share (a module of its own: `conftest` names clash across test folders)."""

PROMPTS = [
    "import os",
    "def main():\n    return",
    "class Foo(object):\n    def __init__(self, x):\n        self.x = x\n",
    "x = 1",
    "for i in range(10):\n    print(i)\n",
]

import time

from pagoda import LLM, SamplingParams

ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "OPTForCausalLM",
         "GPT2LMHeadModel"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def generate(folder, prompts, params, **kwargs):
    """(outputs, engine) of one LLM on the CPU, shut down before it returns; no output may be an error."""
    llm = LLM(folder, device="cpu", enforce_eager=True, **kwargs)
    try:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        assert all(o.outputs[0].finish_reason != "error" for o in outputs), [o.outputs[0] for o in outputs]
        return outputs, llm.llm_engine
    finally:
        llm.llm_engine.shutdown()


def tokens(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


def kill_mid_run_fails_every_request(engine, kill) -> None:
    """Start PROMPTS, run 3 steps, `kill()` a worker: every request must end with an error within 10 s, the core is
    dead and refuses new requests."""
    import pytest

    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    ids = [str(i) for i in range(len(PROMPTS))]
    for request_id, prompt in zip(ids, PROMPTS):
        engine.add_request(request_id, prompt, params)
    for _ in range(3):
        engine.step()
    kill()
    killed = time.monotonic()
    finished = {}
    while engine.has_unfinished_requests() and time.monotonic() - killed < 60:
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    elapsed = time.monotonic() - killed
    assert elapsed < 10, elapsed
    assert sorted(finished) == ids
    for output in finished.values():
        assert output.outputs[0].finish_reason == "error", output
    assert "died" in engine.core.dead
    with pytest.raises(RuntimeError, match="died"):
        engine.add_request("late", "x = 1", params)
