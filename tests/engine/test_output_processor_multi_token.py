"""Several tokens in one EngineCoreOutput (speculative decoding) give exactly what one token per output gives.

With stop strings, the OutputProcessor must end the output at the token whose text completes a stop
string and drop the later tokens from token_ids, logprobs and cumulative_logprob, as non-speculative
decoding (which never generates them) would. Driven directly with EngineCoreOutputs and the session's
byte-level BPE tokenizer: no model.
"""

from __future__ import annotations

import pytest

from pagoda.core.sched_output import EngineCoreOutput
from pagoda.engine.output_processor import OutputProcessor
from pagoda.sampling_params import RequestOutputKind, SamplingParams
from pagoda.tokenizer import get_tokenizer

PROMPT = "import os"
# "def main():\n    return": 'def' ' ma' 'in' '():' '\n' ... with the session tokenizer
TEXT = "def main():\n    return self.value + other"
KINDS = [RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY]
# How the same tokens are split into EngineCoreOutputs; (1,) * 5 is the one-token-per-step reference.
CHUNKINGS = [(5,), (2, 3), (3, 2), (1, 4)]
ONE_BY_ONE = (1,) * 5


@pytest.fixture(scope="module")
def tok(test_tokenizer_dir):
    return get_tokenizer(test_tokenizer_dir)


@pytest.fixture(scope="module")
def tokens(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)[:5]
    assert len(ids) == 5
    return ids


def pieces(tok, ids):
    """The text each token adds (as the detokenizer sees it, one token at a time)."""
    from pagoda.engine.detokenizer import IncrementalDetokenizer

    detok = IncrementalDetokenizer(tok, tok.encode(PROMPT), skip_special_tokens=False)
    return [detok.add_tokens([i]) for i in ids]


def positions(ids):
    """One logprobs position per token: the sampled token first, then an alternative (rank 2)."""
    return [([t, (t + 7) % 100], [-0.125 * (i + 1), -3.0], 1 if i % 2 == 0 else 2) for i, t in enumerate(ids)]


def run(tok, ids, params, chunks, finish_reason=None, stop_reason=None):
    """Feed `ids` in chunks of the given sizes; the last chunk carries the core's finish_reason."""
    proc = OutputProcessor(tok)
    proc.add_request("r", PROMPT, tok.encode(PROMPT), params)
    assert sum(chunks) == len(ids)
    logprobs = positions(ids)
    results, aborts, start = [], [], 0
    for size in chunks:
        end = start + size
        last = end == len(ids)
        out = EngineCoreOutput("r", list(ids[start:end]), new_logprobs=logprobs[start:end],
                               finish_reason=finish_reason if last else None, stop_reason=stop_reason if last else None)
        made, to_abort = proc.process_outputs([out])
        results += made
        aborts += to_abort
        start = end
    assert not proc.has_unfinished()
    return results, aborts


def final(results, kind):
    """The whole completion as (text, token_ids, logprobs, cumulative_logprob, finish_reason, stop_reason)."""
    assert results and results[-1].finished and not any(r.finished for r in results[:-1])
    if kind == RequestOutputKind.FINAL_ONLY:
        assert len(results) == 1
    if kind == RequestOutputKind.DELTA:
        outs = [r.outputs[0] for r in results]
        text = "".join(o.text for o in outs)
        token_ids = sum((o.token_ids for o in outs), [])
        logprobs = None if outs[0].logprobs is None else sum((o.logprobs for o in outs), [])
    else:
        o = results[-1].outputs[0]
        text, token_ids, logprobs = o.text, o.token_ids, o.logprobs
    last = results[-1].outputs[0]
    return text, token_ids, logprobs, last.cumulative_logprob, last.finish_reason, last.stop_reason


# (stop string, the index of the token whose text completes it)
STOPS = [
    ("in", 2),  # inside token 2 ('in')
    ("ain", 2),  # across the boundary of tokens 1 and 2 (' ma' + 'in')
    ("f ma", 1),  # across tokens 0 and 1
    ("ain()", 3),  # across three tokens, completing inside token 3 ('():')
    ("def", 0),  # the first token
    (":\n", 4),  # the last token
]


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stop,at", STOPS)
def test_a_stop_string_inside_a_batch_of_tokens_ends_at_its_token(tok, tokens, stop, at, kind, include):
    text = "".join(pieces(tok, tokens))
    ends = [len("".join(pieces(tok, tokens)[: i + 1])) for i in range(5)]
    found = text.index(stop)
    assert ends[at - 1] < found + len(stop) <= ends[at] if at else found + len(stop) <= ends[0]
    params = SamplingParams(max_tokens=16, stop=[stop], include_stop_str_in_output=include, logprobs=1,
                            output_kind=kind)
    reference, ref_aborts = run(tok, tokens, params, ONE_BY_ONE)
    expected = final(reference, kind)
    # The reference itself is what non-speculative decoding gives: cut at the stop string, tokens to `at`.
    want_text = text[: found + len(stop)] if include else text[:found]
    assert expected[0] == want_text
    assert expected[1] == tokens[: at + 1] and len(expected[2]) == at + 1
    assert expected[3] == pytest.approx(sum(-0.125 * (i + 1) for i in range(at + 1)))
    assert expected[4:] == ("stop", stop) and ref_aborts == ["r"]
    for chunks in CHUNKINGS:
        results, aborts = run(tok, tokens, params, chunks)
        assert final(results, kind) == expected, chunks
        assert aborts == ["r"], chunks  # stopped here: the core must free it


@pytest.mark.parametrize("core_reason", ["length", "stop"])
def test_a_stop_string_before_the_cores_own_finish_wins(tok, tokens, core_reason):
    """The core finished the request at its last token (max_tokens / EOS), but a stop string came first."""
    params = SamplingParams(max_tokens=5, stop=["ain"], logprobs=0)
    reference, _ = run(tok, tokens, params, ONE_BY_ONE, finish_reason=core_reason)
    results, aborts = run(tok, tokens, params, (5,), finish_reason=core_reason)
    assert final(results, RequestOutputKind.CUMULATIVE) == final(reference, RequestOutputKind.CUMULATIVE)
    assert final(results, RequestOutputKind.CUMULATIVE)[4:] == ("stop", "ain")
    assert aborts == []  # the core finished it already


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("with_stop_strings", [False, True])
def test_eos_is_left_out_of_the_text_only_as_the_last_token(tok, tokens, include, with_stop_strings):
    """finish_reason 'stop' (EOS) drops the last token's text unless include_stop_str_in_output; only the last's."""
    eos = tok.eos_token_id
    ids = tokens[:4] + [eos]
    params = SamplingParams(max_tokens=16, stop=["zzz"] if with_stop_strings else None, skip_special_tokens=False,
                            include_stop_str_in_output=include, logprobs=0)
    reference, _ = run(tok, ids, params, ONE_BY_ONE, finish_reason="stop")
    expected = final(reference, RequestOutputKind.CUMULATIVE)
    text = "".join(pieces(tok, tokens[:4]))
    assert expected[0] == (text + tok.eos_token if include else text)
    assert expected[1] == ids and expected[4:] == ("stop", None)
    for chunks in CHUNKINGS:
        results, aborts = run(tok, ids, params, chunks, finish_reason="stop")
        assert final(results, RequestOutputKind.CUMULATIVE) == expected, chunks
        assert aborts == []


@pytest.mark.parametrize("stop", [None, ["zzz"]])
def test_no_stop_string_hit_keeps_every_token(tok, tokens, stop):
    params = SamplingParams(max_tokens=16, stop=stop, logprobs=0, output_kind=RequestOutputKind.DELTA)
    reference, _ = run(tok, tokens, params, ONE_BY_ONE, finish_reason="length")
    for chunks in CHUNKINGS:
        results, _ = run(tok, tokens, params, chunks, finish_reason="length")
        assert final(results, RequestOutputKind.DELTA) == final(reference, RequestOutputKind.DELTA)
        assert final(results, RequestOutputKind.DELTA)[1] == tokens


def test_streamed_deltas_never_show_a_stop_strings_start(tok, tokens):
    """DELTA: text held back for a possible stop string is the same however the tokens are batched."""
    params = SamplingParams(max_tokens=16, stop=["():\nX"], output_kind=RequestOutputKind.DELTA)
    for chunks in [ONE_BY_ONE] + CHUNKINGS:
        results, _ = run(tok, tokens, params, chunks, finish_reason="length")
        shown = ""
        for r in results[:-1]:
            shown += r.outputs[0].text
            assert "(" not in shown  # '():\n' could still become the stop string
        assert final(results, RequestOutputKind.DELTA)[0] == "".join(pieces(tok, tokens))


def test_a_multibyte_character_split_over_tokens(tok):
    """Byte tokens: the stop string completes at the token that completes its character."""
    table = _bytes_to_unicode()
    ids = [tok.convert_tokens_to_ids(table[b]) for b in "a中b".encode("utf-8")]  # 5 byte tokens
    assert len(ids) == 5
    params = SamplingParams(max_tokens=16, stop=["中"], logprobs=0, include_stop_str_in_output=True)
    reference, _ = run(tok, ids, params, ONE_BY_ONE)
    expected = final(reference, RequestOutputKind.CUMULATIVE)
    assert expected[0] == "a中" and expected[1] == ids[:4]
    for chunks in CHUNKINGS:
        results, _ = run(tok, ids, params, chunks)
        assert final(results, RequestOutputKind.CUMULATIVE) == expected, chunks


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (byte-level BPE vocabularies are written in it)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]
