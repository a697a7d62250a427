"""The n-gram (prompt lookup) proposer: vLLM V1's semantics (longest n in [min, max], the earliest
earlier occurrence of it, the tokens that followed), checked on hand-made cases and against a
brute-force reference on random sequences with a small vocabulary (so that matches happen)."""

import numpy as np
import pytest

from pagoda.spec_decode.ngram_proposer import NgramProposer


def reference(tokens, k, lo, hi, cap=None):
    """Brute force: for n from hi down to lo, the first start whose n tokens equal the last n (ending
    before the last token); the k (or cap) tokens after it."""
    tokens = [int(t) for t in tokens]
    k = k if cap is None else min(k, cap)
    total = len(tokens)
    if k <= 0:
        return []
    for n in range(min(hi, total - 1), lo - 1, -1):
        suffix = tokens[total - n:]
        for start in range(total - n):  # the occurrence ends at start + n - 1 <= total - 2
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + k]
    return []


def propose(tokens, k=3, lo=1, hi=3, cap=None):
    return NgramProposer(k, lo, hi).propose(np.array(tokens, dtype=np.int64), cap)


def test_repeated_pattern_proposes_what_followed():
    assert propose([1, 2, 3, 4, 1, 2, 3], k=3, lo=1, hi=3) == [4, 1, 2]
    assert propose([5, 6, 7, 5, 6, 7, 5, 6], k=4, lo=2, hi=2) == [7, 5, 6, 7]  # the earliest copy of [5, 6]
    # vLLM's docstring example: [4, 2, 3] has no earlier copy, [2, 3] does; only 3 tokens follow it
    assert propose([1, 2, 3, 4, 2, 3], k=4, lo=2, hi=3) == [4, 2, 3]


def test_longest_n_wins_over_an_earlier_shorter_match():
    # [9, 3] occurs first at 0 (followed by 7); [1, 9, 3] occurs only at 4 (followed by 8)
    tokens = [9, 3, 7, 0, 1, 9, 3, 8, 1, 9, 3]
    assert propose(tokens, k=1, lo=1, hi=3) == [8]
    assert propose(tokens, k=1, lo=1, hi=2) == [7]  # capped at n = 2: the earliest [9, 3]
    assert propose(tokens, k=1, lo=1, hi=1) == [7]  # the earliest 3


def test_earliest_occurrence_of_the_longest_n():
    tokens = [1, 2, 10, 1, 2, 20, 1, 2, 30, 1, 2]
    assert propose(tokens, k=1, lo=2, hi=4) == [10]


def test_min_bound_refuses_shorter_matches():
    tokens = [1, 2, 3, 4, 5, 3]  # only the last token repeats
    assert propose(tokens, k=2, lo=1, hi=3) == [4, 5]
    assert propose(tokens, k=2, lo=2, hi=3) == []


def test_max_bound_caps_the_match_length():
    tokens = [0, 2, 3, 4, 8, 1, 2, 3, 4, 9, 1, 2, 3, 4]
    assert propose(tokens, k=1, lo=1, hi=4) == [9]  # [1, 2, 3, 4] at 5
    assert propose(tokens, k=1, lo=1, hi=3) == [8]  # [2, 3, 4]: its earliest copy is at 1
    assert propose(tokens, k=1, lo=4, hi=4) == [9]
    assert propose(tokens, k=1, lo=5, hi=6) == []  # [9, 1, 2, 3, 4] has no earlier copy


def test_overlapping_occurrence_counts():
    assert propose([4, 4, 4, 4], k=3, lo=1, hi=3) == [4]  # [4, 4, 4] at 0: one token follows it
    assert propose([4, 4, 4, 4], k=3, lo=1, hi=1) == [4, 4, 4]


def test_end_of_sequence_truncates_the_draft():
    assert propose([1, 2, 3, 1, 2], k=5, lo=2, hi=2) == [3, 1, 2]
    assert propose([8, 9, 8], k=5, lo=1, hi=1) == [9, 8]


def test_no_match_and_short_sequences_give_nothing():
    assert propose([1, 2, 3, 4, 5], k=3, lo=1, hi=3) == []
    assert propose([], k=3, lo=1, hi=3) == []
    assert propose([1], k=3, lo=1, hi=3) == []
    assert propose([1, 1], k=3, lo=2, hi=3) == []  # shorter than min + 1
    assert propose([1, 1], k=3, lo=1, hi=3) == [1]
    assert propose([1, 1, 1], k=3, lo=2, hi=3) == [1]


def test_max_num_tokens_caps_the_draft():
    tokens = [1, 2, 3, 4, 5, 6, 1, 2]
    assert propose(tokens, k=4, lo=1, hi=2) == [3, 4, 5, 6]
    assert propose(tokens, k=4, lo=1, hi=2, cap=2) == [3, 4]
    assert propose(tokens, k=4, lo=1, hi=2, cap=9) == [3, 4, 5, 6]  # never above num_speculative_tokens
    assert propose(tokens, k=4, lo=1, hi=2, cap=0) == []


def test_result_is_python_ints_and_any_int_dtype_or_list_works():
    proposer = NgramProposer(2, 1, 2)
    for dtype in (np.int32, np.int64):
        out = proposer.propose(np.array([3, 1, 4, 1], dtype=dtype))
        assert out == [4, 1] and all(type(t) is int for t in out)
    assert proposer.propose([3, 1, 4, 1]) == [4, 1]


@pytest.mark.parametrize("k, lo, hi, bad", [(0, 1, 2, "num_speculative_tokens"), (2, 0, 2, "prompt_lookup_min"),
                                            (2, 3, 2, "prompt_lookup_max")])
def test_bad_bounds_are_value_errors(k, lo, hi, bad):
    with pytest.raises(ValueError, match=bad):
        NgramProposer(k, lo, hi)


@pytest.mark.parametrize("vocab", [2, 3, 5, 20])
def test_equals_brute_force_on_random_sequences(vocab):
    rng = np.random.default_rng(vocab)
    for _ in range(400):
        length = int(rng.integers(0, 60))
        tokens = rng.integers(0, vocab, size=length, dtype=np.int64)
        k, lo = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        hi = lo + int(rng.integers(0, 4))
        cap = None if rng.random() < 0.5 else int(rng.integers(0, 7))
        expected = reference(tokens, k, lo, hi, cap)
        assert NgramProposer(k, lo, hi).propose(tokens, cap) == expected, (tokens.tolist(), k, lo, hi, cap)


def test_long_sequences_equal_brute_force():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 50, size=300)
    tokens = np.concatenate([base, rng.integers(0, 50, size=3000), base[:40]])  # the tail repeats the start
    proposer = NgramProposer(5, 2, 8)
    assert proposer.propose(tokens) == reference(tokens, 5, 2, 8) == base[40:45].tolist()
    same = np.full(4096, 11, dtype=np.int64)  # the worst case for candidates: every position matches
    assert proposer.propose(same) == [11] * 5
