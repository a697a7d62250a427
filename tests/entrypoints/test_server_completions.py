"""/v1/completions through the official openai client: n, logprobs, echo, stop, seeds, prompt shapes,
streaming, and vLLM's extra parameters."""

import pytest

from openai_server_utils import MODEL_NAME
from pagoda.sampling_params import SamplingParams

PROMPT = "def fibonacci(n):\n    "


def greedy(client, prompt=PROMPT, **kwargs):
    kwargs.setdefault("max_tokens", 12)
    return client.completions.create(model=MODEL_NAME, prompt=prompt, temperature=0, **kwargs)


def test_matches_the_offline_engine(client, model_dir):
    from pagoda import LLM

    llm = LLM(model_dir, max_model_len=512)
    expected = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0].outputs[0]
    out = greedy(client)
    assert out.choices[0].text == expected.text
    assert out.usage.completion_tokens == len(expected.token_ids)


def test_n_and_seed(client):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, n=2, max_tokens=8, temperature=1.0, seed=7)
    assert [c.index for c in out.choices] == [0, 1]
    again = client.completions.create(model=MODEL_NAME, prompt=PROMPT, n=2, max_tokens=8, temperature=1.0, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in out.choices]
    assert 2 <= out.usage.completion_tokens <= 16


def test_seeded_sampling_is_reproducible(client):
    def sample(seed):
        return client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=1.0,
                                         seed=seed).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_logprobs(client):
    out = greedy(client, logprobs=3, max_tokens=6, extra_body={"ignore_eos": True})
    logprobs = out.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert "".join(logprobs.tokens) == out.choices[0].text
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert value <= 0.0
        assert 3 <= len(top) <= 4 and token in top  # top-3 plus the chosen token (OpenAI: up to logprobs+1)
        assert abs(top[token] - value) < 1e-6 and max(top.values()) == pytest.approx(value)  # greedy
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(6)]


def test_echo(client):
    out = greedy(client, echo=True, max_tokens=4)
    plain = greedy(client, max_tokens=4)
    assert out.choices[0].text == PROMPT + plain.choices[0].text
    with_logprobs = greedy(client, echo=True, max_tokens=4, logprobs=1)
    lp = with_logprobs.choices[0].logprobs
    assert lp.token_logprobs[0] is None  # the first prompt token has nothing before it
    assert len(lp.tokens) == with_logprobs.usage.prompt_tokens + with_logprobs.usage.completion_tokens
    assert all(v is not None for v in lp.token_logprobs[1:])


def test_echo_without_generation_scores_the_prompt(client):
    # lm-eval style: max_tokens=0 with echo returns only the prompt and its logprobs.
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    choice = out.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert len(choice.logprobs.tokens) == out.usage.prompt_tokens and out.usage.completion_tokens == 0
    assert choice.logprobs.token_logprobs[0] is None and all(v <= 0 for v in choice.logprobs.token_logprobs[1:])
    streamed = list(client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == PROMPT
    assert [t for c in streamed for t in c.choices[0].logprobs.tokens] == choice.logprobs.tokens


def test_stop_string(client):
    full = greedy(client, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop and stop in full
    out = greedy(client, max_tokens=16, stop=[stop], extra_body={"ignore_eos": True})
    choice = out.choices[0]
    assert choice.text == full[: full.index(stop)]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
    kept = greedy(client, max_tokens=16, stop=stop, extra_body={"ignore_eos": True, "include_stop_str_in_output": True})
    assert kept.choices[0].text == full[: full.index(stop) + len(stop)]


def test_prompt_shapes(client, server):
    ids = server.post("/tokenize", {"prompt": PROMPT}).json()["tokens"]
    by_text = greedy(client, max_tokens=5)
    by_ids = greedy(client, prompt=ids, max_tokens=5)
    assert by_ids.choices[0].text == by_text.choices[0].text
    many = greedy(client, prompt=[PROMPT, "import os"], n=2, max_tokens=5, extra_body={"ignore_eos": True})
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == by_text.choices[0].text
    id_lists = greedy(client, prompt=[ids, ids], max_tokens=5)
    assert [c.text for c in id_lists.choices] == [by_text.choices[0].text] * 2
    assert id_lists.usage.prompt_tokens == 2 * len(ids)


def test_stream_joins_to_the_full_text(client):
    full = greedy(client, max_tokens=20, logprobs=2)
    chunks = list(greedy(client, max_tokens=20, logprobs=2, stream=True, stream_options={"include_usage": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == full.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    tokens = [t for c in text_chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == full.choices[0].logprobs.tokens
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")


def test_stream_with_stop_string_and_n(client):
    full = greedy(client, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    expected = greedy(client, max_tokens=16, n=2, stop=stop, extra_body={"ignore_eos": True})
    texts = {0: "", 1: ""}
    reasons = {}
    for chunk in greedy(client, max_tokens=16, n=2, stop=stop, stream=True, extra_body={"ignore_eos": True}):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [c.text for c in expected.choices]
    assert reasons == {0: "stop", 1: "stop"}


def test_vllm_extra_parameters(client, server):
    ids = server.post("/tokenize", {"prompt": PROMPT}).json()["tokens"]
    out = greedy(client, max_tokens=7, extra_body={"ignore_eos": True, "min_tokens": 7, "top_k": 5, "min_p": 0.05,
                                                  "skip_special_tokens": False, "spaces_between_special_tokens": False,
                                                  "priority": 0, "user": "someone"})
    assert out.usage.completion_tokens == 7
    truncated = greedy(client, max_tokens=2, extra_body={"truncate_prompt_tokens": 3})
    assert truncated.usage.prompt_tokens == 3
    no_bos = greedy(client, max_tokens=2, extra_body={"add_special_tokens": False})
    assert no_bos.usage.prompt_tokens == len(ids) - 1
    as_ids = greedy(client, max_tokens=3, logprobs=1, extra_body={"return_tokens_as_token_ids": True})
    assert all(t.startswith("token_id:") for t in as_ids.choices[0].logprobs.tokens)
    prompt_lp = greedy(client, max_tokens=2, extra_body={"prompt_logprobs": 2})
    positions = prompt_lp.choices[0].model_extra["prompt_logprobs"]
    assert positions[0] is None and len(positions) == len(ids)
    first = greedy(client, max_tokens=1, logprobs=1).choices[0].logprobs
    chosen = server.post("/tokenize", {"prompt": first.tokens[0], "add_special_tokens": False}).json()["tokens"]
    stopped = greedy(client, max_tokens=5, extra_body={"stop_token_ids": chosen[:1]})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1


def test_penalties_and_logit_bias(client, server):
    base = greedy(client, max_tokens=10, extra_body={"ignore_eos": True})
    penalized = greedy(client, max_tokens=10, presence_penalty=2.0, frequency_penalty=2.0,
                       extra_body={"ignore_eos": True, "repetition_penalty": 1.5})
    assert penalized.usage.completion_tokens == base.usage.completion_tokens == 10
    token = server.post("/tokenize", {"prompt": " return", "add_special_tokens": False}).json()["tokens"][0]
    biased = greedy(client, max_tokens=5, logit_bias={str(token): 100}, extra_body={"ignore_eos": True})
    assert biased.choices[0].text == server.post("/detokenize", {"tokens": [token] * 5}).json()["prompt"]


def test_best_of(client):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, n=1, best_of=3, max_tokens=6, temperature=1.0,
                                    seed=3)
    assert len(out.choices) == 1 and out.usage.completion_tokens >= 1
