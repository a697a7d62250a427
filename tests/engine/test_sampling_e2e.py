"""Sampling through the whole engine: seeds, n, stop conditions, logprobs, chat."""

import pytest

from pagoda import LLM, SamplingParams
from tests.engine.conftest import PROMPTS


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, dtype="float32", max_model_len=256, block_size=8)


def test_seeded_sampling_independent_of_batch(llm):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate(PROMPTS[0], seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.2, max_tokens=20, ignore_eos=True)
    mixed = llm.generate(PROMPTS[1:4] + [PROMPTS[0]] + PROMPTS[4:], [others] * 3 + [seeded] + [others] * 4, use_tqdm=False)
    assert mixed[3].outputs[0].token_ids == alone
    different = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=16, ignore_eos=True)
    assert llm.generate(PROMPTS[0], different, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_n_samples_share_prompt_blocks(llm):
    prompt = PROMPTS[7]
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    engine = llm.llm_engine
    engine.add_request("fan", prompt, params)
    engine.step()
    kv = engine.core.scheduler.kv
    tables = [kv.get_block_ids(f"{i}_fan") for i in range(4)]
    num_full = len(llm.get_tokenizer().encode(prompt)) // 8
    assert num_full >= 2
    assert all(t[:num_full] == tables[0][:num_full] for t in tables)
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.finished]
    (result,) = outs
    assert [c.index for c in result.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in result.outputs}) > 1


def test_stop_strings_and_stop_tokens(llm):
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    full = llm.generate(PROMPTS[1], greedy, use_tqdm=False)[0].outputs[0]
    text = full.text
    assert len(text) > 6
    stop = text[3:6]
    cut = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert cut.text == text[: text.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    kept = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop],
                                                   include_stop_str_in_output=True), use_tqdm=False)[0].outputs[0]
    assert kept.text == text[: text.index(stop) + len(stop)]
    token = full.token_ids[4]
    by_token = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                                       stop_token_ids=[token]), use_tqdm=False)[0].outputs[0]
    assert by_token.token_ids == full.token_ids[: full.token_ids.index(token) + 1]
    assert by_token.stop_reason == token and by_token.finish_reason == "stop"
    # min_tokens holds the stop token back until enough tokens exist.
    first = full.token_ids.index(token)
    held = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                                   stop_token_ids=[token], min_tokens=first + 2), use_tqdm=False)[0]
    assert len(held.outputs[0].token_ids) >= first + 2


def test_eos_ends_generation_unless_ignored(llm):
    tok = llm.get_tokenizer()
    greedy = llm.generate(PROMPTS[5], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)
    first = greedy[0].outputs[0].token_ids[2]
    # Make that token the EOS by naming it a stop token id: the engine's EOS path is the same set.
    out = llm.generate(PROMPTS[5], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[first]),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids[-1] == first and out.finish_reason == "stop"
    assert tok.eos_token_id is not None


def test_logprobs_and_prompt_logprobs_shape(llm):
    params = SamplingParams(temperature=0.7, seed=3, max_tokens=5, logprobs=3, prompt_logprobs=2, ignore_eos=True)
    out = llm.generate(PROMPTS[2], params, use_tqdm=False)[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == 5
    for token, position in zip(completion.token_ids, completion.logprobs):
        assert token in position and 3 <= len(position) <= 4
        # The top-3 hold ranks 1..3; the sampled token adds its own rank when it is outside them.
        assert sorted(lp.rank for lp in position.values()) == sorted({1, 2, 3} | {position[token].rank})
        assert all(isinstance(lp.decoded_token, str) for lp in position.values())
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    for token, position in zip(out.prompt_token_ids[1:], out.prompt_logprobs[1:]):
        assert token in position and 2 <= len(position) <= 3


def test_prompt_logprobs_match_across_chunking(llama_dir):
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=1)
    whole = LLM(llama_dir, max_model_len=256).generate(PROMPTS[7], params, use_tqdm=False)[0]
    chunked = LLM(llama_dir, max_model_len=256, max_num_batched_tokens=8).generate(PROMPTS[7], params, use_tqdm=False)[0]
    for a, b in zip(whole.prompt_logprobs[1:], chunked.prompt_logprobs[1:]):
        for token in a:
            assert abs(a[token].logprob - b[token].logprob) < 1e-4


def test_chat_renders_template(llm):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi"}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)[0]
    assert "Say hi" in out.prompt and "<|im_start|>" in out.prompt
    many = llm.chat([messages, messages[1:]], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len(many) == 2
