"""Penalties, logit_bias, allowed_token_ids, bad_words, min_tokens and logits_processors through the
whole engine give the same greedy tokens as transformers' logits processors on the same weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

from pagoda import LLM, SamplingParams
from tests.engine.conftest import PROMPTS

MAX_NEW = 20


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's frequency/presence penalties over the generated tokens (no transformers built-in)."""

    def __init__(self, prompt_len, frequency=0.0, presence=0.0):
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids, scores):
        counts = torch.zeros_like(scores)
        for token in input_ids[0, self.prompt_len:].tolist():
            counts[0, token] += 1
        return scores - self.frequency * counts - self.presence * (counts > 0).float()


class Wrapped(LogitsProcessor):
    """A Pagoda-style (prompt_ids, output_ids, logits) callable as a transformers processor."""

    def __init__(self, fn, prompt_len):
        self.fn, self.prompt_len = fn, prompt_len

    def __call__(self, input_ids, scores):
        ids = input_ids[0].tolist()
        return self.fn(ids[: self.prompt_len], ids[self.prompt_len:], scores[0].clone())[None]


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, dtype="float32", max_model_len=256, block_size=8)


@pytest.fixture(scope="module")
def hf_model(llama_dir):
    return AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()


def hf_greedy(model, prompt_ids, processors, max_new=MAX_NEW):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(max_new):
            scores = model(ids).logits[:, -1].float()
            for processor in processors:
                scores = processor(ids, scores)
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt_ids):].tolist()


def _cases(tok, llm):
    """(prompt, SamplingParams, transformers processors) per knob, built from plain greedy outputs."""
    greedy = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3], PROMPTS[5]]
    plain = {p: o.outputs[0].token_ids for p, o in zip(prompts, llm.generate(prompts, greedy, use_tqdm=False))}
    ids = {p: tok.encode(p) for p in prompts}
    vocab = llm.llm_engine.config.model.vocab_size
    eos_ids = sorted(llm.llm_engine.processor.stop_token_ids)

    def params(**kw):
        return SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True, **kw)

    # Prompts where the tiny model's greedy output changes under each penalty (its logit gaps are wide).
    p0, p1, p2, p5 = PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[5]
    cases = [
        (p5, params(repetition_penalty=1.8), [RepetitionPenaltyLogitsProcessor(1.8)]),
        (p1, params(repetition_penalty=0.7), [RepetitionPenaltyLogitsProcessor(0.7)]),
        (p0, params(frequency_penalty=1.5), [OpenAIPenalties(len(ids[p0]), frequency=1.5)]),
        (p0, params(presence_penalty=2.0), [OpenAIPenalties(len(ids[p0]), presence=2.0)]),
        (p2, params(presence_penalty=-1.0, frequency_penalty=0.5, repetition_penalty=1.3),
         [RepetitionPenaltyLogitsProcessor(1.3), OpenAIPenalties(len(ids[p2]), 0.5, -1.0)]),
    ]
    # logit_bias: push a token the plain run never picks, and pull down its first token.
    q = PROMPTS[0]
    boosted = next(t for t in range(100, vocab) if t not in plain[q])
    bias = {boosted: 6.0, plain[q][0]: -50.0}
    cases.append((q, params(logit_bias=bias),
                  [SequenceBiasLogitsProcessor([[[t], b] for t, b in bias.items()])]))
    # allowed_token_ids: a random subset of the vocabulary.
    allowed = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:40].tolist()
    cases.append((q, params(allowed_token_ids=allowed),
                  [SuppressTokensLogitsProcessor([t for t in range(vocab) if t not in allowed])]))
    # bad_words: a one-token word of the plain output, and a two-token word made of a later pair.
    r = PROMPTS[5]
    out = plain[r]
    single = next(t for t in out[1:] if tok.decode([t]).strip() and not tok.decode([t]).startswith(" "))
    i = next(i for i in range(2, len(out) - 1) if out[i] != ids[r][-1] and out[i] != single
             and out[i + 1] != single and tok.decode(out[i:i + 2]).strip() == tok.decode(out[i:i + 2])
             and len(tok.encode(tok.decode(out[i:i + 2]), add_special_tokens=False)) == 2)
    words = [tok.decode([single]), tok.decode(out[i:i + 2])]
    bad_ids = []
    for word in words:  # vLLM's rule: the word alone, and after a space when that is a different word
        alone = tok.encode(word.lstrip(), add_special_tokens=False)
        spaced = tok.encode(" " + word.lstrip(), add_special_tokens=False)
        bad_ids.append(alone)
        if spaced[0] != alone[0] and len(spaced) == len(alone):
            bad_ids.append(spaced)
    cases.append((r, params(bad_words=words), [NoBadWordsLogitsProcessor(bad_ids)]))
    # min_tokens: a stop token that the plain run makes early is held back until min_tokens.
    s = PROMPTS[3]
    stop = plain[s][2]
    cases.append((s, SamplingParams(temperature=0, max_tokens=MAX_NEW, stop_token_ids=[stop], min_tokens=9),
                  [MinNewTokensLengthLogitsProcessor(len(ids[s]), 9, eos_ids + [stop])]))
    return cases, ids, plain


def test_each_knob_matches_transformers_in_one_batch(llm, hf_model):
    tok = llm.get_tokenizer()
    cases, ids, plain = _cases(tok, llm)
    prompts = [c[0] for c in cases] + [PROMPTS[2]]
    params = [c[1] for c in cases] + [SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    changed = 0
    for (prompt, sp, processors), out in zip(cases, outs):
        got = out.outputs[0].token_ids
        want = hf_greedy(hf_model, ids[prompt], processors)
        if sp.min_tokens:
            stop = sp.stop_token_ids[0]
            assert len(got) >= sp.min_tokens and stop not in got[: sp.min_tokens - 1]
            assert got[-1] == stop or len(got) == MAX_NEW
            want = want[: len(got)]
        assert got == want, sp
        changed += got != plain[prompt][: len(got)]
    # The cases were chosen so that each knob changes the tiny model's greedy tokens (on CPU all do;
    # another device's rounding may move one trajectory), else the comparison would test nothing.
    assert changed >= len(cases) - 1
    # Run again: the prompts now come from the prefix cache, the penalties must still see them.
    again = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs]


def test_logits_processors_see_the_right_ids(llm, hf_model):
    tok = llm.get_tokenizer()
    prompt = PROMPTS[4]
    prompt_ids = tok.encode(prompt)
    seen = []

    def ban_previous_argmax(prompt_ids, output_ids, logits):
        seen.append((list(prompt_ids), list(output_ids)))
        if output_ids:
            logits[output_ids[-1]] = float("-inf")  # never repeat the previous token
        logits[(len(output_ids) * 7) % logits.shape[0]] += 3.0
        return logits

    def two_args(output_ids, logits):
        seen.append((None, list(output_ids)))
        return logits

    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                            logits_processors=[ban_previous_argmax, two_args])
    out = llm.generate([prompt, PROMPTS[1]], [params, SamplingParams(temperature=0, max_tokens=12)],
                       use_tqdm=False)[0].outputs[0].token_ids
    assert len(out) == 12
    calls3 = [s for s in seen if s[0] is not None]
    calls2 = [s for s in seen if s[0] is None]
    assert [c[0] for c in calls3] == [prompt_ids] * 12
    assert [c[1] for c in calls3] == [out[:k] for k in range(12)]
    assert [c[1] for c in calls2] == [out[:k] for k in range(12)]
    seen.clear()
    want = hf_greedy(hf_model, prompt_ids, [Wrapped(ban_previous_argmax, len(prompt_ids))], max_new=12)
    assert out == want
    assert all(a != b for a, b in zip(out, out[1:]))
