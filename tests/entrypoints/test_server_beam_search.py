"""use_beam_search on /v1/completions and /v1/chat/completions: the beams LLM.beam_search finds (same token
ids, best first), n choices, streaming as vLLM does it, refused fields, and no request left running."""

import json
import time

import pytest

from openai_server_utils import MAX_MODEL_LEN, MODEL_NAME, httpx
from pagoda import LLM, BeamSearchParams

PROMPT = "def fibonacci(n):\n    if n"
MESSAGES = [{"role": "user", "content": "Sort a list."}]


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(model_dir, max_model_len=MAX_MODEL_LEN)


def offline_beams(llm, prompt_ids, params):
    """(token ids, text) per beam of LLM.beam_search, as the server reports them (a final EOS left out)."""
    result = llm.beam_search([{"prompt_token_ids": prompt_ids}], params)[0]
    beams = []
    for seq in result.sequences:
        ids = seq.tokens[len(prompt_ids):]
        if seq.finish_reason == "stop" and not params.include_stop_str_in_output:
            ids = ids[:-1]
        beams.append((ids, seq.finish_reason))
    return beams


def metric(server, name: str, **labels) -> float:
    """A /metrics sample under either prefix (the names are vLLM's `vllm:*`, formerly `pagoda:*`)."""
    return max(server.metric(f"{prefix}:{name}", model_name=MODEL_NAME, **labels) for prefix in ("vllm", "pagoda"))


def running(server) -> float:
    return metric(server, "num_requests_running")


def wait_idle(server) -> None:
    deadline = time.monotonic() + 15
    while running(server) != 0:
        assert time.monotonic() < deadline, "beam-search requests still running"
        time.sleep(0.05)


def error_of(response, field):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"], error
    return error


@pytest.mark.parametrize("length_penalty, ignore_eos", [(1.0, False), (0.5, True)])
def test_completion_beams_equal_the_offline_beam_search(server, client, llm, length_penalty, ignore_eos):
    prompt_ids = server.post("/tokenize", {"prompt": PROMPT}).json()["tokens"]
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, n=2, max_tokens=6, temperature=0,
                                    extra_body={"use_beam_search": True, "length_penalty": length_penalty,
                                                "ignore_eos": ignore_eos, "return_token_ids": True})
    expected = offline_beams(llm, prompt_ids, BeamSearchParams(beam_width=2, max_tokens=6, temperature=0.0,
                                                               length_penalty=length_penalty, ignore_eos=ignore_eos))
    assert [c.index for c in out.choices] == [0, 1]  # best first
    assert [(c.model_extra["token_ids"], c.finish_reason) for c in out.choices] == expected
    tokenizer = llm.get_tokenizer()
    assert [c.text for c in out.choices] == [tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in expected]
    assert out.usage.completion_tokens == sum(len(ids) for ids, _ in expected)
    assert out.usage.prompt_tokens == len(prompt_ids)
    wait_idle(server)


def test_chat_beams_equal_the_offline_beam_search(server, client, llm):
    prompt_ids = server.post("/tokenize", {"messages": MESSAGES}).json()["tokens"]
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2, max_completion_tokens=5,
                                         temperature=0, extra_body={"use_beam_search": True, "return_token_ids": True})
    expected = offline_beams(llm, prompt_ids, BeamSearchParams(beam_width=2, max_tokens=5, temperature=0.0))
    assert [(c.model_extra["token_ids"], c.finish_reason) for c in out.choices] == expected
    assert out.model_extra["prompt_token_ids"] == prompt_ids
    streamed = list(client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2, max_completion_tokens=5,
                                                   temperature=0, stream=True, extra_body={"use_beam_search": True}))
    content = {0: "", 1: ""}
    finish = {}
    for chunk in streamed:
        for choice in chunk.choices:
            content[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert [content[i] for i in (0, 1)] == [c.message.content for c in out.choices]
    assert [finish[i] for i in (0, 1)] == [c.finish_reason for c in out.choices]
    wait_idle(server)


def test_several_prompts_and_logprobs(server, client):
    out = client.completions.create(model=MODEL_NAME, prompt=[PROMPT, "import os\n"], n=2, max_tokens=4, temperature=0,
                                    logprobs=2, extra_body={"use_beam_search": True, "ignore_eos": True})
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for choice in out.choices:
        assert len(choice.logprobs.tokens) == 4 and "".join(choice.logprobs.tokens) == choice.text
        assert all(1 <= len(top) <= 3 for top in choice.logprobs.top_logprobs)  # top-2 plus the chosen token
    single = client.completions.create(model=MODEL_NAME, prompt="import os\n", n=2, max_tokens=4, temperature=0,
                                       extra_body={"use_beam_search": True, "ignore_eos": True})
    assert [c.text for c in out.choices[2:]] == [c.text for c in single.choices]
    wait_idle(server)


def test_refusals(server):
    body = {"model": MODEL_NAME, "prompt": PROMPT, "n": 2, "max_tokens": 4, "use_beam_search": True}
    error_of(server.post("/v1/completions", {**body, "stream": True}), "stream")
    error_of(server.post("/v1/completions", {**body, "top_p": 0.5}), "top_p")
    error_of(server.post("/v1/completions", {**body, "stop": ["\n"]}), "stop")
    error_of(server.post("/v1/completions", {**body, "logprobs": 5}), "logprobs")  # beams see 2 * n per token
    error = error_of(server.post("/v1/completions", {**body, "n": 3}), "n")  # 2 * 3 logprobs > --max-logprobs 5
    assert "max_logprobs=5" in error["message"]
    chat = {"model": MODEL_NAME, "messages": MESSAGES, "n": 2, "use_beam_search": True, "seed": 3}
    error_of(server.post("/v1/chat/completions", chat), "seed")
    error_of(server.post("/v1/completions", {**body, "priority": 1}), "priority")  # the engine's refusal, as a 400
    assert running(server) == 0


def test_a_departed_client_stops_the_search(server):
    """A 480-step search (seconds here; two step requests a step, each ending with "length") whose client
    leaves after 0.5 s stops: its step request in flight is aborted and no more steps run. On a loaded machine
    the client may leave before the first step was submitted: then nothing is aborted and nothing runs."""
    def finished(reason):
        return metric(server, "request_success_total", finished_reason=reason)

    aborted, stepped = finished("abort"), finished("length")
    body = {"model": MODEL_NAME, "prompt": PROMPT, "n": 2, "max_tokens": 480, "use_beam_search": True,
            "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body, headers=server.headers(), timeout=0.5)
    wait_idle(server)
    time.sleep(0.5)  # a search that went on would start its next step within this
    assert running(server) == 0, "the departed search goes on"
    steps = finished("length") - stepped
    assert steps < 480, f"the departed search ran {steps:g} step requests of its 960"  # stopped early
    assert steps == 0 or finished("abort") > aborted, "steps ran but the one in flight was not aborted"
    assert server.post("/v1/completions", {**body, "max_tokens": 2}).status_code == 200  # the server still serves


def test_beam_search_output_is_one_final_result(server):
    """Non-streamed chat with beam search: one response, n choices, usage over every beam (vLLM's shape)."""
    response = server.post("/v1/chat/completions", {"model": MODEL_NAME, "messages": MESSAGES, "n": 2,
                                                    "max_tokens": 3, "use_beam_search": True, "ignore_eos": True})
    body = response.json()
    assert response.status_code == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 6 and json.dumps(body)
