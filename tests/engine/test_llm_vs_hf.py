"""Greedy outputs and logprobs of every supported architecture equal transformers'."""

import math

import pytest

from pagoda import LLM, SamplingParams
from tests.engine.conftest import ARCHS, PROMPTS, hf_greedy

MAX_TOKENS = 12


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers(arch, checkpoint):
    folder = checkpoint(arch)
    llm = LLM(folder, dtype="float32", max_model_len=256)
    tokenizer = llm.get_tokenizer()
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    expected = hf_greedy(folder, prompt_ids, MAX_TOKENS)
    for out, (ref_tokens, ref_logprobs) in zip(outputs, expected):
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, f"{arch}: prompt {out.prompt_token_ids[:8]}..."
        for position, token, ref in zip(got.logprobs, got.token_ids, ref_logprobs):
            assert abs(position[token].logprob - ref) < 1e-3
            assert position[token].rank == 1  # greedy picks the most likely token
        assert math.isclose(got.cumulative_logprob, sum(ref_logprobs), abs_tol=1e-2)
        assert got.finish_reason == "length"
    # Outputs are varied, so the comparison means something.
    assert len({tuple(o.outputs[0].token_ids) for o in outputs}) > 4


def test_text_prompts_and_detokenized_text(llama_dir):
    llm = LLM(llama_dir, max_model_len=256)
    outs = llm.generate(PROMPTS[:3], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    tok = llm.get_tokenizer()
    for prompt, out in zip(PROMPTS, outs):
        assert out.prompt == prompt
        assert out.prompt_token_ids == tok.encode(prompt)
        assert out.outputs[0].text == tok.decode(out.outputs[0].token_ids, skip_special_tokens=True)
