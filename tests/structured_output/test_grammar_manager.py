"""StructuredOutputManager and RequestGrammar on real tokenizers and grammars: background compiles and
their cache, token acceptance, rollback and validation, draft rows, EOS, vocabulary edges, and the
whitespace / additional-properties options."""

import json
import threading

import numpy as np
import pytest

from pagoda.config import StructuredOutputsConfig
from pagoda.sampling_params import StructuredOutputsParams as P
from pagoda.structured_output import StructuredOutputManager, row_to_ids

BACKENDS = ["xgrammar", "guidance", "outlines"]
OBJ = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _mask(manager, grammar) -> np.ndarray:
    return manager.fill_bitmask([grammar])[0].copy()


def _ids(manager, grammar) -> set[int]:
    return set(row_to_ids(_mask(manager, grammar)).tolist())


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def _text(tokenizer, ids):
    return {i: tokenizer.decode([i]) for i in ids}


# -- compiling --------------------------------------------------------------------------------------
def test_add_request_returns_at_once_and_compiles_in_the_background(tokenizer, eos_ids):
    manager = StructuredOutputManager(StructuredOutputsConfig(), tokenizer, 2048, eos_ids, max_workers=1)
    try:
        gate = threading.Event()
        manager._pool.submit(gate.wait)  # the only compile thread is busy until the gate opens
        grammar = manager.add_request("r1", P(regex="[0-9]+", backend="xgrammar"))
        assert not grammar.is_ready() and grammar.error is None
        gate.set()
        assert grammar.wait(60) and grammar.is_ready() and grammar.error is None
        assert grammar.backend == "xgrammar"
    finally:
        manager.shutdown()


def test_equal_specs_share_one_compile(manager):
    schema = {"type": "object", "properties": {"share_me": {"type": "boolean"}}}
    before = manager.num_compiles
    grammars = [manager.add_request(f"s{i}", P(json=schema, backend="xgrammar")) for i in range(3)]
    grammars.append(manager.add_request("s-text", P(json='{"type": "object", "properties": {"share_me": '
                                                         '{"type": "boolean"}}}', backend="xgrammar")))
    grammars.append(manager.add_request("s-auto", P(json=schema)))  # auto resolves to the same backend
    assert all(g.wait(60) and g.error is None for g in grammars)
    assert manager.num_compiles == before + 1
    again = manager.add_request("s-again", P(json=schema, backend="xgrammar"))
    assert again.is_ready()  # served from the cache at once
    manager.add_request("s-compact", P(json=schema, backend="xgrammar", disable_any_whitespace=True)).wait(60)
    assert manager.num_compiles == before + 2  # another option, another grammar
    # Each request still has its own state.
    assert grammars[0].accept_tokens([_first_allowed(manager, grammars[0])])
    assert grammars[0].num_accepted_tokens == 1 and grammars[1].num_accepted_tokens == 0


def _first_allowed(manager, grammar) -> int:
    return int(row_to_ids(_mask(manager, grammar))[0])


def test_options_that_cannot_matter_do_not_split_the_cache(manager):
    before = manager.num_compiles
    for flags in ({}, {"disable_any_whitespace": True}, {"whitespace_pattern": " *"}):
        manager.add_request("o", P(regex="[xyz]{3}", backend="guidance", **flags)).wait(60)
    assert manager.num_compiles == before + 1


@pytest.mark.parametrize("params,field", [
    (P(regex="(a", backend="xgrammar"), "regex"),
    (P(grammar='start: "a" | nope', backend="guidance"), "grammar"),
    (P(regex="[a-", backend="outlines"), "regex"),
    (P(json='{"type": ', backend="auto"), "json"),
    (P(grammar='start: "a"', backend="outlines"), "grammar"),
    (P(regex="a", backend="lm-format-enforcer"), "backend"),
])
def test_a_failed_compile_is_the_grammars_error(manager, eos_ids, params, field):
    grammar = manager.add_request("bad", params)
    assert grammar.wait(60)
    assert grammar.error is not None and grammar.error.startswith(f"structured_outputs.{field}: "), grammar.error
    assert not grammar.accept_tokens([10])
    assert grammar.validate_tokens([10]) == 0
    assert _ids(manager, grammar) == set(eos_ids)  # a row that ends the request, never an empty one


# -- tokens -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_accept_validate_rollback(manager, compiled, tokenizer, eos_ids, backend):
    grammar = compiled(P(regex="ab[0-9]{2,4}", backend=backend))
    ids = _encode(tokenizer, "ab123")
    start = _mask(manager, grammar)
    eos = eos_ids[0]

    assert grammar.validate_tokens(ids + [eos]) == len(ids) + 1
    assert grammar.validate_tokens(ids + [2]) == len(ids)  # <|pad|> is never allowed
    assert grammar.validate_tokens([eos]) == 0  # the regex needs text first
    assert np.array_equal(_mask(manager, grammar), start)  # validation changes nothing

    assert not grammar.accept_tokens(ids + [2])  # all or nothing
    assert grammar.num_accepted_tokens == 0 and np.array_equal(_mask(manager, grammar), start)

    assert grammar.accept_tokens(ids)
    middle = _mask(manager, grammar)
    assert set(eos_ids) <= set(row_to_ids(middle).tolist())  # "ab123" is complete: EOS allowed, digits too
    assert grammar.accept_tokens([eos]) and grammar.is_terminated()
    assert _ids(manager, grammar) == set(eos_ids)
    assert grammar.accept_tokens([eos_ids[1]])  # more EOS after the end: no-ops (ignore_eos)
    assert not grammar.accept_tokens([ids[-1]])  # text after the end: refused
    assert grammar.validate_tokens([eos, ids[0]]) == 1

    grammar.rollback(2)  # the no-op EOS and the EOS that ended it
    assert not grammar.is_terminated() and np.array_equal(_mask(manager, grammar), middle)
    grammar.rollback(len(ids))
    assert grammar.num_accepted_tokens == 0 and np.array_equal(_mask(manager, grammar), start)
    with pytest.raises(ValueError, match="rollback"):
        grammar.rollback(1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_draft_rows(manager, compiled, tokenizer, eos_ids, backend):
    text = '{"a":1234}' if backend != "xgrammar" else '{"a": 1234}'
    grammars = [compiled(P(json=OBJ, backend=backend, disable_any_whitespace=True)) for _ in range(3)]
    draft = _encode(tokenizer, text)
    bad_at = 2
    rejected = draft[:bad_at] + [2] + draft[bad_at:]  # <|pad|> can never be accepted
    ended = draft + [eos_ids[1], eos_ids[0]]
    drafts = [draft, rejected, ended]
    states = [[_mask(manager, grammars[0])] for _ in drafts]
    # The reference: accept the drafts one token at a time, then roll back.
    for i, d in enumerate(drafts):
        accepted = 0
        for token in d:
            if not grammars[i].accept_tokens([token]):
                break
            accepted += 1
            states[i].append(_mask(manager, grammars[i]))
        grammars[i].rollback(accepted)

    bitmask = manager.fill_bitmask(grammars, drafts)
    assert bitmask.shape == (sum(1 + len(d) for d in drafts), manager.bitmask_width())
    rows = np.split(bitmask, np.cumsum([1 + len(d) for d in drafts])[:-1])
    for j in range(len(draft) + 1):
        assert np.array_equal(rows[0][j], states[0][j])
    for j in range(bad_at + 1):
        assert np.array_equal(rows[1][j], states[1][j])
    allow_all = set(row_to_ids(rows[1][bad_at + 1]).tolist())  # after the refused token: every text token
    assert allow_all == set(range(5, len(tokenizer))) | set(eos_ids)
    for j in range(bad_at + 1, len(rejected) + 1):
        assert set(row_to_ids(rows[1][j]).tolist()) == allow_all
    assert set(row_to_ids(rows[2][len(draft) + 1]).tolist()) == set(eos_ids)  # after the EOS: EOS only
    assert all(g.num_accepted_tokens == 0 for g in grammars)  # filling left every state as it was
    empty = manager.fill_bitmask(grammars[:1], [[]])
    assert np.array_equal(empty[0], states[0][0])


def test_fill_bitmask_checks_its_arguments(manager, compiled):
    grammar = compiled(P(regex="[0-9]", backend="xgrammar"))
    with pytest.raises(ValueError, match="drafts"):
        manager.fill_bitmask([grammar], [[], []])
    with pytest.raises(ValueError, match="words per row"):
        manager.fill_bitmask([grammar], out=np.zeros((1, 3), dtype=np.int32))
    out = np.full((2, manager.bitmask_width()), -1, dtype=np.int32)
    assert manager.fill_bitmask([grammar], out=out) is out


def _whole_text_ids(tokenizer, limit) -> set[int]:
    """Non-special ids below `limit` whose text is whole characters (a lone byte of a UTF-8 sequence
    cannot start every text, and outlines never allows one)."""
    return {i for i in range(5, limit) if "\ufffd" not in tokenizer.decode([i])}


# -- EOS and the vocabulary -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_eos_only_where_the_grammar_can_end(manager, compiled, tokenizer, eos_ids, backend):
    grammar = compiled(P(choice=["no", "yes", "yes!"], backend=backend))
    assert not set(eos_ids) & _ids(manager, grammar)
    assert grammar.accept_tokens(_encode(tokenizer, "yes"))
    after_yes = _ids(manager, grammar)
    assert set(eos_ids) <= after_yes and tokenizer.convert_tokens_to_ids("!") in after_yes  # "yes" or "yes!"
    assert grammar.accept_tokens(_encode(tokenizer, "!"))
    assert _ids(manager, grammar) == set(eos_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_past_the_tokenizer_and_special_tokens_are_never_allowed(manager, compiled, tokenizer, eos_ids,
                                                                     backend):
    grammar = compiled(P(regex=r"[\s\S]*", backend=backend))  # any text
    assert manager.bitmask_width() == 2048 // 32
    allowed = _ids(manager, grammar)
    assert allowed <= set(range(5, len(tokenizer))) | set(eos_ids)  # 0..4 special, 2000..2047 padding
    assert allowed >= _whole_text_ids(tokenizer, len(tokenizer)) | set(eos_ids)
    for token in (0, 2, 3, len(tokenizer), 2047):
        assert not grammar.accept_tokens([token])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_vocab_smaller_than_the_tokenizer(tokenizer, eos_ids, backend):
    manager = StructuredOutputManager(StructuredOutputsConfig(), tokenizer, 1950, eos_ids)
    try:
        grammar = manager.add_request("small", P(regex=r"[\s\S]*", backend=backend))
        assert grammar.wait(60) and grammar.error is None, grammar.error
        mask = manager.fill_bitmask([grammar])
        assert mask.shape == (1, 61)
        allowed = set(row_to_ids(mask[0]).tolist())
        assert allowed <= set(range(5, 1950)) | set(eos_ids)
        assert allowed >= _whole_text_ids(tokenizer, 1950) | set(eos_ids)
    finally:
        manager.shutdown()


# -- JSON options -----------------------------------------------------------------------------------
def _whitespace_after_brace(manager, tokenizer, grammar) -> set[str]:
    assert grammar.accept_tokens(_encode(tokenizer, "{"))
    texts = _text(tokenizer, _ids(manager, grammar))
    return {t for t in texts.values() if t and not t.strip()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_disable_any_whitespace(manager, compiled, tokenizer, eos_ids, backend):
    loose = _whitespace_after_brace(manager, tokenizer, compiled(P(json=OBJ, backend=backend)))
    assert " " in loose
    compact = _whitespace_after_brace(manager, tokenizer,
                                      compiled(P(json=OBJ, backend=backend, disable_any_whitespace=True)))
    assert compact == set()
    engine = StructuredOutputManager(StructuredOutputsConfig(disable_any_whitespace=True), tokenizer, 2048, eos_ids)
    try:  # the engine's flag has the same effect
        grammar = engine.add_request("e", P(json=OBJ, backend=backend))
        assert grammar.wait(60) and grammar.error is None
        assert _whitespace_after_brace(engine, tokenizer, grammar) == set()
    finally:
        engine.shutdown()


@pytest.mark.parametrize("backend", ["guidance", "outlines"])
def test_whitespace_pattern(manager, compiled, tokenizer, backend):
    newline_only = _whitespace_after_brace(manager, tokenizer,
                                           compiled(P(json=OBJ, backend=backend, whitespace_pattern=r"\n?")))
    assert newline_only and all(set(t) == {"\n"} for t in newline_only), newline_only


def test_disable_additional_properties(manager, compiled, tokenizer, eos_ids):
    def after_value(grammar) -> set[str]:
        assert grammar.accept_tokens(_encode(tokenizer, '{"a":1'))
        return set(_text(tokenizer, _ids(manager, grammar)).values())

    loose = after_value(compiled(P(json=OBJ, backend="guidance", disable_any_whitespace=True)))
    assert "," in loose and "}" in loose  # another property may follow
    strict = after_value(compiled(P(json=OBJ, backend="guidance", disable_any_whitespace=True,
                                    disable_additional_properties=True)))
    assert "}" in strict and not any("," in t for t in strict)
    engine = StructuredOutputManager(StructuredOutputsConfig(disable_additional_properties=True), tokenizer, 2048,
                                     eos_ids)
    try:
        grammar = engine.add_request("e", P(json=OBJ, backend="guidance", disable_any_whitespace=True))
        assert grammar.wait(60) and grammar.error is None
        assert grammar.accept_tokens(_encode(tokenizer, '{"a":1'))
        assert not any("," in t for t in _text(tokenizer, _ids(engine, grammar)).values())
    finally:
        engine.shutdown()


@pytest.mark.parametrize("backend", ["xgrammar", "guidance"])
def test_structural_tag(manager, compiled, tokenizer, eos_ids, backend):
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    tag = json.dumps({"structures": [{"begin": "<f>", "schema": schema, "end": "</f>"}], "triggers": ["<f"]})
    grammar = compiled(P(structural_tag=tag, backend=backend, disable_any_whitespace=True))
    assert set(eos_ids) <= _ids(manager, grammar)  # free text may end at once
    assert grammar.accept_tokens(_encode(tokenizer, "see <f>"))
    assert set(_text(tokenizer, _ids(manager, grammar)).values()) == {"{"}  # inside the tag: the schema
    assert not grammar.accept_tokens(_encode(tokenizer, '{"y":'))
    body = '{"x": 5}</f>' if backend == "xgrammar" else '{"x":5}</f>'
    assert grammar.accept_tokens(_encode(tokenizer, body))
    assert set(eos_ids) <= _ids(manager, grammar)


# -- batched fills ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["xgrammar", "guidance"])  # guidance fills row by row: the reference check
def test_batched_fill_equals_row_by_row(tokenizer, eos_ids, backend):
    """Backends with a multi-threaded batch fill write the same rows as filling each grammar alone, for a mix
    of states (fresh, inside strings, complete, ended, with drafts), over a random walk."""
    manager = StructuredOutputManager(StructuredOutputsConfig(backend=backend), tokenizer, len(tokenizer), eos_ids)
    schema = {"type": "object", "properties": {"s": {"type": "string"}, "n": {"type": "integer"}}, "required": ["s"]}
    try:
        grammars = [manager.add_request(str(i), P(json=schema)) for i in range(12)]
        grammars += [manager.add_request("c", P(choice=["ab", "abc"])), manager.add_request("r", P(regex="x+y"))]
        rng = np.random.default_rng(1)
        assert grammars[0].batch_matcher() is None or type(grammars[0].batch_matcher()).batch_fill is not None
        for step in range(25):
            batched = manager.fill_bitmask(grammars)
            rows = np.zeros_like(batched)
            for i, grammar in enumerate(grammars):
                grammar.fill_bitmask(rows, i)
            assert (batched == rows).all(), step
            drafts = [[] if i % 3 else row_to_ids(batched[i])[:1].tolist() for i in range(len(grammars))]
            with_drafts = manager.fill_bitmask(grammars, drafts)
            assert (with_drafts[[i + sum(len(d) for d in drafts[:i]) for i in range(len(grammars))]] == batched).all()
            for i, grammar in enumerate(grammars):
                allowed = row_to_ids(batched[i])
                assert grammar.accept_tokens([int(rng.choice(allowed))])
        assert any(g.is_terminated() for g in grammars)  # ended rows were part of the mix
    finally:
        manager.shutdown()


@pytest.mark.parametrize("backend", ["xgrammar", "guidance"])
def test_accept_batch_equals_one_by_one(tokenizer, eos_ids, backend):
    """RequestGrammar.accept_batch gives the results and states of accept_tokens([t]) per grammar: allowed,
    refused, EOS at an end and before it, special ids."""
    manager = StructuredOutputManager(StructuredOutputsConfig(backend=backend), tokenizer, len(tokenizer), eos_ids)
    try:
        make = lambda: [manager.add_request(str(i), P(regex="ab+c")) for i in range(6)]  # noqa: E731
        batched, single = make(), make()
        rng = np.random.default_rng(2)
        vocab = len(tokenizer)
        for step in range(12):
            rows = manager.fill_bitmask(batched)
            tokens = []
            for i in range(len(batched)):
                allowed = row_to_ids(rows[i])
                pick = rng.random()  # mostly allowed tokens, sometimes any id (refused unless allowed)
                tokens.append(int(rng.choice(allowed)) if pick < 0.8 else int(rng.integers(0, vocab)))
            from pagoda.structured_output.request_grammar import RequestGrammar

            got = RequestGrammar.accept_batch(batched, tokens)
            want = [g.accept_tokens([t]) for g, t in zip(single, tokens)]
            assert got == want, step
            assert [g.num_accepted_tokens for g in batched] == [g.num_accepted_tokens for g in single]
            assert (manager.fill_bitmask(batched) == manager.fill_bitmask(single)).all()
    finally:
        manager.shutdown()


def test_xgrammar_batch_accept_is_one_call_read_only_on_a_refusal(tokenizer, eos_ids, monkeypatch):
    """A batch accept is one call into xgrammar, whose result array is read element by element only when it holds a
    refusal: the same results and states as accepting row by row, in order, on steps with and without a refusal."""
    import xgrammar

    from pagoda.structured_output.request_grammar import RequestGrammar

    core = xgrammar.matcher._core.BatchGrammarMatcher
    calls, reads, original = [], [], core.batch_accept_token

    class Result:  # the tvm-ffi array, with its element reads counted
        def __init__(self, inner):
            self.inner = inner

        def __contains__(self, value):
            return value in self.inner

        def __iter__(self):
            reads.append(1)
            return iter(self.inner)

    def accept(handles, tokens, debug):
        calls.append(len(handles))
        return Result(original(handles, tokens, debug))

    monkeypatch.setattr(core, "batch_accept_token", accept)
    manager = StructuredOutputManager(StructuredOutputsConfig(backend="xgrammar"), tokenizer, len(tokenizer), eos_ids)
    schema = {"type": "object", "properties": {"s": {"type": "string"}, "n": {"type": "integer"}}, "required": ["s"]}
    try:
        make = lambda: [manager.add_request(str(i), P(json=schema)) for i in range(9)]  # noqa: E731
        batched, single = make(), make()
        rng = np.random.default_rng(3)
        for step in range(10):
            rows = manager.fill_bitmask(batched)
            bad = step % 9 if step % 2 else None  # odd steps: one text token its grammar refuses
            refused = [t for t in np.flatnonzero(manager._ctx.valid_ids[:len(tokenizer)])
                       if bad is not None and t not in set(row_to_ids(rows[bad]).tolist())]
            tokens = [int(rng.choice(row_to_ids(rows[i]))) if i != bad else int(rng.choice(refused))
                      for i in range(9)]
            text = [t for t in tokens if t not in manager.eos_token_ids]
            calls.clear(), reads.clear()
            got = RequestGrammar.accept_batch(batched, tokens)
            assert got == [g.accept_tokens([t]) for g, t in zip(single, tokens)], step
            assert got.count(False) == (bad is not None)
            assert calls == ([len(text)] if text else []), step
            assert len(reads) == (bad is not None), step
            assert (manager.fill_bitmask(batched) == manager.fill_bitmask(single)).all()
    finally:
        manager.shutdown()


def test_grammar_threads_follow_the_environment(monkeypatch):
    """PAGODA_GRAMMAR_THREADS sets the batch fill's threads (an A/B knob); unset, every core but one."""
    from pagoda.structured_output import xgrammar_backend

    monkeypatch.setattr(xgrammar_backend.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("PAGODA_GRAMMAR_THREADS", raising=False)
    assert xgrammar_backend.fill_threads() == 15
    monkeypatch.setenv("PAGODA_GRAMMAR_THREADS", "7")
    assert xgrammar_backend.fill_threads() == 7
    for bad in ("-1", "four"):
        monkeypatch.setenv("PAGODA_GRAMMAR_THREADS", bad)
        with pytest.raises(ValueError, match="PAGODA_GRAMMAR_THREADS"):
            xgrammar_backend.fill_threads()
