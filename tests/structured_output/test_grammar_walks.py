"""Random walks through every backend's masks: whatever a walk that ends produces satisfies its constraint.

A walk fills the grammar's bitmask, picks a random allowed token (seeded), accepts it and goes on until
the grammar terminates (an EOS id accepted) or a step budget runs out. Along the way a token outside the
mask must be refused by accept_tokens and validate_tokens, leaving the state as it was.
"""

import json
import random
import re

import jsonschema
import numpy as np
import pytest

from pagoda.sampling_params import StructuredOutputsParams
from pagoda.structured_output import row_to_ids

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer"},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["cat", "dog", "a \"quoted\" one"]},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
    },
    "required": ["name", "age", "kind"],
}
REGEX = r"(ab|cd)[0-9]{1,3}(x|yz)?-[a-z]+"
CHOICES = ["yes", "no", 'say "hi"', "back\\slash", "multi\nline", "ünïcödé", "a.b*c", "yes!"]
EBNF = 'root ::= expr\nexpr ::= term ("+" term)*\nterm ::= [0-9]+ | "(" expr ")"'
LARK = 'start: expr\nexpr: term ("+" term)*\nterm: /[0-9]+/ | "(" expr ")"'

KINDS = {
    "json": dict(json=SCHEMA, disable_any_whitespace=True),
    "json_ws": dict(json=SCHEMA),
    "regex": dict(regex=REGEX),
    "choice": dict(choice=CHOICES),
    "ebnf": dict(grammar=EBNF),
    "lark": dict(grammar=LARK),
    "json_object": dict(json_object=True, disable_any_whitespace=True),
}
SUPPORTED = {
    "xgrammar": ["json", "json_ws", "regex", "choice", "ebnf", "lark", "json_object"],
    "guidance": ["json", "json_ws", "regex", "choice", "ebnf", "lark", "json_object"],
    "outlines": ["json", "json_ws", "regex", "choice"],
}
CASES = [(backend, kind) for backend, kinds in SUPPORTED.items() for kind in kinds]
WALKS, MAX_STEPS = 6, 120


def _expr_ok(text: str) -> bool:
    """Whether `text` is term ("+" term)* with term = digits | "(" expr ")"."""
    pos = 0

    def term() -> bool:
        nonlocal pos
        if pos < len(text) and text[pos] == "(":
            pos += 1
            if not expr() or pos >= len(text) or text[pos] != ")":
                return False
            pos += 1
            return True
        start = pos
        while pos < len(text) and text[pos].isdigit():
            pos += 1
        return pos > start

    def expr() -> bool:
        nonlocal pos
        if not term():
            return False
        while pos < len(text) and text[pos] == "+":
            pos += 1
            if not term():
                return False
        return True

    return expr() and pos == len(text)


def _check(kind: str, text: str) -> None:
    if kind in ("json", "json_ws"):
        jsonschema.validate(json.loads(text), SCHEMA)
    elif kind == "json_object":
        assert isinstance(json.loads(text), dict), text
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif kind == "choice":
        assert text in CHOICES, text
    else:
        assert _expr_ok(text), text


def _allowed(manager, grammar) -> np.ndarray:
    return row_to_ids(manager.fill_bitmask([grammar])[0])


def _token_classes(tokenizer) -> tuple[set[int], set[int]]:
    """Ids whose text holds a quote or a closing bracket, and ids that are only whitespace: a walk
    favours the first now and then (to end strings) and mostly avoids the second (JSON allows any amount)."""
    texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    closers = {i for i, t in enumerate(texts) if any(c in t for c in '"}])')}
    return closers, {i for i, t in enumerate(texts) if t and not t.strip()}


def _walk(manager, grammar, rng: random.Random, eos_ids, classes) -> list[int]:
    """Accept random allowed tokens until the grammar terminates or MAX_STEPS; the tokens taken."""
    taken, (closers, blanks) = [], classes
    for _ in range(MAX_STEPS):
        allowed = _allowed(manager, grammar)
        assert allowed.size > 0
        assert allowed.max() < manager.vocab_size
        can_end = [t for t in allowed if t in eos_ids]
        if can_end:
            assert sorted(can_end) == sorted(eos_ids)  # every EOS id or none
        if type(grammar._matcher).fill_marks_eos:  # what finish_batch_rows reads instead of asking can_end()
            raw = np.zeros((1, manager._ctx.native_width), dtype=np.int32)
            grammar._matcher.fill(raw, 0)
            marked = {int(t) for t in row_to_ids(raw[0])} & set(eos_ids)
            assert marked in (set(), set(eos_ids)) and bool(marked) == grammar._matcher.can_end(), taken
        closing = [t for t in allowed if t in closers]
        nonblank = [t for t in allowed if t not in blanks]
        if can_end and rng.random() < 0.4:
            token = rng.choice(can_end)
        elif closing and rng.random() < 0.3:
            token = rng.choice(closing)
        elif nonblank and rng.random() < 0.9:
            token = int(rng.choice(nonblank))
        else:
            token = int(rng.choice(allowed))
        _refuses_outside_mask(manager, grammar, allowed, rng, token)
        assert grammar.accept_tokens([token]), (token, taken)
        taken.append(token)
        if grammar.is_terminated():
            break
    return taken


def _refuses_outside_mask(manager, grammar, allowed, rng, good_token) -> None:
    outside = np.setdiff1d(np.arange(manager.vocab_size), allowed)
    bad = int(rng.choice(outside))
    before = manager.fill_bitmask([grammar])[0].copy()
    assert not grammar.accept_tokens([bad])
    assert grammar.validate_tokens([bad]) == 0
    never = [2, 2001, manager.vocab_size - 1]  # <|pad|>, and ids past the tokenizer: allowed nowhere
    assert not grammar.accept_tokens([good_token, rng.choice(never)])  # all or nothing
    assert np.array_equal(manager.fill_bitmask([grammar])[0], before)


@pytest.mark.parametrize("backend,kind", CASES)
def test_random_walks_satisfy_the_constraint(manager, compiled, tokenizer, eos_ids, backend, kind):
    params = StructuredOutputsParams(backend=backend, **KINDS[kind])
    finished, classes = 0, _token_classes(tokenizer)
    for seed in range(WALKS):
        grammar = compiled(params)
        assert grammar.backend == backend
        tokens = _walk(manager, grammar, random.Random(seed), set(eos_ids), classes)
        if grammar.is_terminated():
            finished += 1
            assert tokens[-1] in eos_ids
            _check(kind, tokenizer.decode(tokens[:-1]))
    assert finished >= WALKS // 2, f"only {finished} of {WALKS} walks ended"
