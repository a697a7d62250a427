"""Streaming output kinds (CUMULATIVE, DELTA, FINAL_ONLY), best_of, detokenize=False, truncation."""

import pytest

from pagoda import LLM, RequestOutputKind, SamplingParams
from tests.engine.conftest import PROMPTS

TEXT = "héllo 中文😀 naïve → done. stop here"


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, dtype="float32", max_model_len=256, block_size=8)


def forcing(token_ids):
    """A logits processor that makes the model write exactly `token_ids`, then keep writing the last."""
    def force(output_ids, logits):
        target = token_ids[min(len(output_ids), len(token_ids) - 1)]
        logits.fill_(float("-inf"))
        logits[target] = 0.0
        return logits
    return force


def byte_tokens(tok, text):
    """`text` as one byte-level token per UTF-8 byte: multi-byte characters span several tokens."""
    alphabet = {b: c for b, c in zip(range(256), _bytes_to_unicode())}
    return [tok.convert_tokens_to_ids(alphabet[b]) for b in text.encode("utf-8")]


def _bytes_to_unicode():
    """GPT-2's byte → printable character table, which byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def stream(llm, request_id, prompt, params):
    engine = llm.llm_engine
    engine.add_request(request_id, prompt, params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.request_id == request_id]
    return outputs


@pytest.mark.parametrize("stop", [[], ["stop"], ["中文😀 x", "ve →"]])
def test_delta_texts_join_to_the_cumulative_text(llm, stop):
    tok = llm.get_tokenizer()
    ids = byte_tokens(tok, TEXT)
    assert tok.decode(ids) == TEXT
    base = dict(temperature=0, max_tokens=len(ids) + 3, ignore_eos=True, stop=stop,
                logits_processors=[forcing(ids)])
    cumulative = stream(llm, "c" + str(stop), PROMPTS[0], SamplingParams(**base))
    delta = stream(llm, "d" + str(stop), PROMPTS[0], SamplingParams(output_kind=RequestOutputKind.DELTA, **base))
    final = cumulative[-1].outputs[0]
    expected = TEXT[: TEXT.index("ve →")] if "ve →" in stop else TEXT[: TEXT.index("stop")] if stop else None
    if expected is not None:
        assert final.text == expected and final.finish_reason == "stop"
    assert len(delta) > 3 and delta[-1].finished and not any(o.finished for o in delta[:-1])
    pieces = [o.outputs[0].text for o in delta]
    assert "".join(pieces) == final.text
    assert all("\ufffd" not in p for p in pieces)  # never half a character
    assert sum((o.outputs[0].token_ids for o in delta), []) == final.token_ids
    # Every intermediate cumulative text is a prefix of the final one (stop strings are held back).
    assert all(final.text.startswith(o.outputs[0].text) for o in cumulative)


def test_delta_with_random_bytes_and_n(llm):
    """Random byte tokens make invalid UTF-8 too: the deltas still join up, child by child."""
    tok = llm.get_tokenizer()
    allowed = sorted(set(byte_tokens(tok, "é中😀ab")))
    base = dict(n=2, temperature=1.0, seed=5, max_tokens=24, ignore_eos=True, allowed_token_ids=allowed)
    cumulative = stream(llm, "rc", PROMPTS[1], SamplingParams(**base))[-1]
    delta = stream(llm, "rd", PROMPTS[1], SamplingParams(output_kind=RequestOutputKind.DELTA, **base))
    for index in range(2):
        joined = "".join(c.text for o in delta for c in o.outputs if c.index == index)
        assert joined == cumulative.outputs[index].text
        assert set(cumulative.outputs[index].token_ids) <= set(allowed)


def test_final_only_makes_one_output(llm):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)
    outputs = stream(llm, "final", PROMPTS[2], params)
    assert len(outputs) == 1 and outputs[0].finished and len(outputs[0].outputs[0].token_ids) == 6


def test_best_of_returns_the_n_best_samples(llm):
    common = dict(temperature=1.0, seed=11, max_tokens=8, ignore_eos=True)
    best = llm.generate(PROMPTS[3], SamplingParams(n=2, best_of=5, **common), use_tqdm=False)[0]
    every = llm.generate(PROMPTS[3], SamplingParams(n=5, logprobs=0, **common), use_tqdm=False)[0]
    ranked = sorted(every.outputs, key=lambda c: c.cumulative_logprob, reverse=True)
    assert [c.index for c in best.outputs] == [0, 1]
    assert [c.token_ids for c in best.outputs] == [c.token_ids for c in ranked[:2]]
    assert [c.cumulative_logprob for c in best.outputs] == pytest.approx([c.cumulative_logprob for c in ranked[:2]])
    assert all(c.logprobs is None for c in best.outputs)  # not asked for
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=2, best_of=3, output_kind=RequestOutputKind.DELTA)


def test_detokenize_false_and_skip_special_tokens(llm):
    tok = llm.get_tokenizer()
    params = dict(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
    with_text = llm.generate(PROMPTS[4], SamplingParams(**params), use_tqdm=False)[0].outputs[0]
    ids_only = llm.generate(PROMPTS[4], SamplingParams(detokenize=False, **params), use_tqdm=False)[0].outputs[0]
    assert ids_only.token_ids == with_text.token_ids and ids_only.text == "" and with_text.text
    assert all(lp.decoded_token is None for pos in ids_only.logprobs for lp in pos.values())
    with pytest.raises(ValueError, match="detokenize"):
        SamplingParams(detokenize=False, stop=["x"])
    specials = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|im_start|>")]
    force = dict(temperature=0, max_tokens=3, ignore_eos=True, logits_processors=[forcing(specials)])
    skipped = llm.generate("a", SamplingParams(**force), use_tqdm=False)[0].outputs[0].text
    kept = llm.generate("a", SamplingParams(skip_special_tokens=False, spaces_between_special_tokens=False, **force),
                        use_tqdm=False)[0].outputs[0].text
    assert skipped == "" and kept == "<|im_start|><|im_end|><|im_start|>"


def test_truncate_prompt_tokens(llm):
    tok = llm.get_tokenizer()
    prompt = PROMPTS[7]
    full = tok.encode(prompt)
    greedy = dict(temperature=0, max_tokens=5, ignore_eos=True)
    out = llm.generate(prompt, SamplingParams(truncate_prompt_tokens=6, **greedy), use_tqdm=False)[0]
    assert out.prompt_token_ids == full[:1] + full[-5:]  # BOS stays, the text is cut from the left
    ids = llm.generate({"prompt_token_ids": full}, SamplingParams(truncate_prompt_tokens=6, **greedy),
                       use_tqdm=False)[0]
    assert ids.prompt_token_ids == full[-6:]
    direct = llm.generate({"prompt_token_ids": full[-6:]}, SamplingParams(**greedy), use_tqdm=False)[0]
    assert ids.outputs[0].token_ids == direct.outputs[0].token_ids
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        llm.generate(prompt, SamplingParams(truncate_prompt_tokens=1000), use_tqdm=False)
