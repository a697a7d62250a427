"""LLM.beam_search: same beams as transformers' beam search; beams share prefix blocks; EOS handling."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from pagoda import LLM, BeamSearchParams
from pagoda.engine.beam_search import get_beam_search_score
from tests.engine.conftest import PROMPTS


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, dtype="float32", max_model_len=256, block_size=8)


@pytest.mark.parametrize("beam_width, length_penalty", [(2, 1.0), (3, 0.5), (4, 2.0)])
def test_beams_match_transformers(llm, llama_dir, beam_width, length_penalty):
    tok = llm.get_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    prompts = [PROMPTS[1], PROMPTS[4]]
    max_tokens = 7
    # No EOS on either side (ignore_eos / eos_token_id=None): every beam has the same length, so
    # vLLM's and transformers' length normalizations rank the beams alike.
    params = BeamSearchParams(beam_width=beam_width, max_tokens=max_tokens, ignore_eos=True,
                              length_penalty=length_penalty)
    results = llm.beam_search(prompts, params)
    config = GenerationConfig(num_beams=beam_width, num_return_sequences=beam_width, max_new_tokens=max_tokens,
                              do_sample=False, length_penalty=length_penalty, early_stopping=True,
                              eos_token_id=None, bos_token_id=None, pad_token_id=tok.pad_token_id)
    for prompt, result in zip(prompts, results):
        ids = tok.encode(prompt)
        with torch.no_grad():
            hf = model.generate(torch.tensor([ids]), generation_config=config)
        hf_beams = [row[len(ids):].tolist() for row in hf]
        assert len(result.sequences) == beam_width
        assert [s.tokens[len(ids):] for s in result.sequences] == hf_beams
        for seq in result.sequences:
            assert seq.tokens[: len(ids)] == ids and len(seq.logprobs) == max_tokens
            assert seq.cum_logprob == pytest.approx(sum(p[t].logprob for p, t in zip(seq.logprobs, seq.tokens[len(ids):])))
            assert seq.text == tok.decode(seq.tokens[len(ids):])
        scores = [get_beam_search_score(s.tokens, s.cum_logprob, None, length_penalty) for s in result.sequences]
        assert scores == sorted(scores, reverse=True)


def test_beams_share_prefix_blocks(llm):
    """Every step's beam requests find their shared prompt blocks in the prefix cache."""
    kv = llm.llm_engine.core.scheduler.kv
    prompt = PROMPTS[7]
    prompt_len = len(llm.get_tokenizer().encode(prompt))
    width, steps, block = 3, 6, 8
    queries, hits = kv.prefix_queries, kv.prefix_hits
    llm.beam_search([prompt], BeamSearchParams(beam_width=width, max_tokens=steps, ignore_eos=True))
    new_queries, new_hits = kv.prefix_queries - queries, kv.prefix_hits - hits
    # Step t: 1 beam (t = 0) or `width` beams of prompt_len + t tokens; all full blocks but one token's are hits.
    lengths = [prompt_len] + [prompt_len + t for t in range(1, steps) for _ in range(width)]
    assert new_queries == sum(lengths)
    assert new_hits >= sum((n - 1) // block * block for n in lengths[1:])
    assert kv.pool.num_free_blocks == kv.pool.num_blocks  # every beam request returned its blocks


def test_eos_finishes_a_beam(llm, llama_dir, tmp_path):
    """With a token the beams produce declared as EOS, beams that pick it finish and are scored shorter."""
    tok = llm.get_tokenizer()
    prompt = PROMPTS[5]
    ids = tok.encode(prompt)
    free = llm.beam_search([prompt], BeamSearchParams(beam_width=3, max_tokens=6, ignore_eos=True))[0]
    eos = free.sequences[0].tokens[len(ids) + 2]
    folder = tmp_path / "model"
    shutil.copytree(llama_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.eos_token_id, eos]}))
    with_eos = LLM(str(folder), dtype="float32", max_model_len=256, block_size=8)
    result = with_eos.beam_search([prompt], BeamSearchParams(beam_width=3, max_tokens=6, length_penalty=1.0))[0]
    finished = [s for s in result.sequences if s.finish_reason == "stop"]
    assert finished and all(s.tokens[-1] == eos and eos not in s.tokens[len(ids):-1] for s in finished)
    assert all(s.text == tok.decode(s.tokens[len(ids):-1]) for s in finished)
    scores = [get_beam_search_score(s.tokens, s.cum_logprob, {eos}, 1.0) for s in result.sequences]
    assert scores == sorted(scores, reverse=True)
    assert all(math.isfinite(s) for s in scores)


def test_beam_search_validation(llm):
    with pytest.raises(ValueError, match="beam_width"):
        BeamSearchParams(beam_width=0, max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        BeamSearchParams(beam_width=2, max_tokens=0)
    with pytest.raises(ValueError, match="prompts"):
        llm.beam_search([{"prompt_token_ids": [5] * 256}], BeamSearchParams(beam_width=2, max_tokens=2))
    with pytest.raises(ValueError, match="concurrency_limit"):
        llm.beam_search(["a"], BeamSearchParams(beam_width=2, max_tokens=2), concurrency_limit=0)
    params = BeamSearchParams(beam_width=2, max_tokens=3, ignore_eos=True)
    together = llm.beam_search(PROMPTS[:3], params)
    one_by_one = llm.beam_search(PROMPTS[:3], params, concurrency_limit=1)
    assert [[s.tokens for s in r.sequences] for r in together] == [[s.tokens for s in r.sequences] for r in one_by_one]
