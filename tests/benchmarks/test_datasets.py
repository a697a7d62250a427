"""Random workload generation."""

import pytest

from pagoda.benchmarks.datasets import UNIQUE_HEAD, random_requests


def test_unique_prompts_and_exact_lengths():
    reqs = random_requests(500, input_len=64, output_len=16, vocab_size=1000, seed=1)
    assert len(reqs) == 500
    assert all(r.prompt_len == 64 and r.expected_output_len == 16 for r in reqs)
    heads = {tuple(r.prompt_token_ids[:UNIQUE_HEAD]) for r in reqs}
    assert len(heads) == 500  # no two prompts share their first block
    assert all(0 <= t < 1000 for r in reqs for t in r.prompt_token_ids)


def test_deterministic_per_seed():
    a = random_requests(5, 32, 8, 500, seed=3)
    b = random_requests(5, 32, 8, 500, seed=3)
    c = random_requests(5, 32, 8, 500, seed=4)
    assert a == b and a != c


def test_lengths_within_range_ratio():
    reqs = random_requests(400, input_len=100, output_len=50, vocab_size=5000, range_ratio=0.5, seed=0)
    ins = [r.prompt_len for r in reqs]
    outs = [r.expected_output_len for r in reqs]
    assert min(ins) >= 50 and max(ins) <= 150
    assert min(outs) >= 25 and max(outs) <= 75
    assert len(set(ins)) > 20  # actually spread out


def test_shared_prefix_only():
    reqs = random_requests(50, input_len=20, output_len=4, vocab_size=300, prefix_len=32, seed=0)
    prefix = reqs[0].prompt_token_ids[:32]
    assert all(r.prompt_token_ids[:32] == prefix and r.prompt_len == 52 for r in reqs)
    assert len({tuple(r.prompt_token_ids[32:32 + UNIQUE_HEAD]) for r in reqs}) == 50


def test_excluded_ids_never_drawn():
    reqs = random_requests(100, 50, 4, vocab_size=10, excluded_ids=[0, 1, 2], seed=0)
    assert all(t >= 3 for r in reqs for t in r.prompt_token_ids)


def test_bad_arguments():
    with pytest.raises(ValueError):
        random_requests(10, 10, 10, 100, range_ratio=1.5)
    with pytest.raises(ValueError):
        random_requests(0, 10, 10, 100)
    with pytest.raises(ValueError):  # 2 ids cannot make 10 distinct one-token prompts
        random_requests(10, 1, 1, 2)
