"""One SamplingMetadata builder (worker/sampling_inputs.py): the runner's per-step `SamplingInputs.build`
over persistent InputBatch rows and the one-shot `build_sampling_metadata` over a list of SamplingParams
give equal metadata, and a top_k >= vocab_size means "no top-k" on both, so it keeps a batch eligible
for the fused sampling kernel (the predicate is tested here on CPU; the kernel itself needs CUDA)."""

import numpy as np
import torch

from pagoda.core.sched_output import NewRequestData
from pagoda.kernels import tuning
from pagoda.sample import Sampler
from pagoda.sample.sampler import fused_sampling_eligible
from pagoda.sampling_params import SamplingParams, SamplingType
from pagoda.worker.input_batch import InputBatch
from pagoda.worker.sampling_inputs import SamplingInputs, build_sampling_metadata

V = 48
EOS = 2


def _shift(output_ids, logits):
    return logits + 1.0


def _mix() -> tuple[list[SamplingParams], list[list[int]], list[list[int]]]:
    """(params, prompts, outputs): one row for each kind of setting."""
    bad = SamplingParams(temperature=0.8)
    bad.bad_words_token_ids = [[5, 6], [7]]  # the engine fills this from bad_words
    short = SamplingParams(temperature=1.0, min_tokens=4, stop_token_ids=[9])
    short.all_stop_token_ids.add(EOS)  # the engine adds EOS
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, seed=1234),
        SamplingParams(temperature=1.0, top_k=V),
        SamplingParams(temperature=1.0, top_k=V + 5),
        SamplingParams(temperature=0.9, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.85),
        SamplingParams(temperature=1.0, min_p=0.1, logprobs=3),
        SamplingParams(temperature=1.0, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2),
        SamplingParams(temperature=0.0, logit_bias={11: 3.0, 12: -2.0}),
        SamplingParams(temperature=1.0, allowed_token_ids=[3, 4, 20]),
        bad,
        short,
        SamplingParams(temperature=1.0, seed=7, logits_processors=[_shift]),
    ]
    prompts = [[1 + i, 10, 20 + i] for i in range(len(params))]
    outputs = [[(3 * i + j) % V for j in range(i % 4)] for i in range(len(params))]
    outputs[10] = [5]  # bad words: [5, 6] now bans 6, [7] bans 7
    return params, prompts, outputs


def _runner_build(params, prompts, outputs):
    """The metadata the model runner builds: requests added as ModelRunner._add does, into a batch that
    already has other rows (so the sampling rows are not 0..R-1), then SamplingInputs.build."""
    batch = InputBatch(max_num_reqs=32, max_model_len=64, block_size=8)
    inputs = SamplingInputs(batch, V, torch.device("cpu"))
    generators: dict[str, torch.Generator] = {}

    def add(req_id, p, prompt, output):
        batch.add(NewRequestData(req_id=req_id, token_ids=prompt + output, num_prompt_tokens=len(prompt),
                                 sampling_params=p, block_ids=[0], num_computed_tokens=0))
        inputs.add(req_id, p)
        if p.sampling_type == SamplingType.RANDOM_SEED:
            generators[req_id] = torch.Generator().manual_seed(p.seed)

    for k in range(3):
        add(f"other-{k}", SamplingParams(temperature=0.5, top_k=3, seed=99), [1, 2, 3], [4])
    batch.remove("other-1")
    inputs.remove("other-1")
    generators.pop("other-1")
    req_ids = [f"req-{i}" for i in range(len(params))]
    for req_id, p, prompt, output in zip(reversed(req_ids), reversed(params), reversed(prompts), reversed(outputs)):
        add(req_id, p, prompt, output)
    rows = np.array([batch.row_of[r] for r in req_ids], dtype=np.int64)
    assert not np.array_equal(rows, np.arange(len(params)))
    return inputs.build(rows, req_ids, generators)


def _assert_same(a, b):
    for name in ("temperature", "top_p", "top_k", "min_p"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    for name in ("all_greedy", "all_random", "no_top_p", "no_top_k", "no_min_p", "max_num_logprobs",
                 "min_tokens_masks", "bad_words_masks", "logits_processors", "row_errors"):
        assert getattr(a, name) == getattr(b, name), name
    assert set(a.generators) == set(b.generators)
    for row in a.generators:
        assert torch.equal(a.generators[row].get_state(), b.generators[row].get_state())
    assert torch.equal(a.bias_rows, b.bias_rows) and torch.equal(a.bias, b.bias)
    for name in ("rows", "token_ids", "num_prompt", "num_tokens", "presence", "frequency", "repetition"):
        assert torch.equal(getattr(a.penalties, name), getattr(b.penalties, name)), name


def test_both_entry_points_give_equal_metadata():
    params, prompts, outputs = _mix()
    one_shot = build_sampling_metadata(params, V, prompt_token_ids=prompts, output_token_ids=outputs)
    _assert_same(_runner_build(params, prompts, outputs), one_shot)
    # The encodings themselves (sample/metadata.py): -1 and any k >= V are 0, i.e. "no top-k".
    assert one_shot.top_k.tolist() == [0, 0, 0, 0, 5] + [0] * 8
    assert one_shot.temperature[0] == 0.0 and one_shot.temperature[8] == 0.0
    assert set(one_shot.generators) == {1, 12} and one_shot.max_num_logprobs == 3
    assert one_shot.min_tokens_masks == {11: [EOS, 9]}
    assert one_shot.bad_words_masks == {10: [6, 7]}
    assert one_shot.bias_rows.tolist() == [8, 9] and one_shot.penalties.rows.tolist() == [7]
    # Both sample the same tokens, seeded and unseeded rows alike.
    logits = torch.randn(len(params), V, generator=torch.Generator().manual_seed(0)) * 3
    torch.manual_seed(5)
    first = Sampler()(logits, one_shot).sampled_token_ids
    torch.manual_seed(5)
    again = Sampler()(logits, _runner_build(params, prompts, outputs)).sampled_token_ids
    assert torch.equal(first, again)


def test_top_k_at_or_past_vocab_keeps_the_fused_path():
    plain = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.0), SamplingParams(temperature=0.7, seed=3)]
    wide = [SamplingParams(temperature=1.0, top_k=V), SamplingParams(temperature=0.0),
            SamplingParams(temperature=0.7, seed=3, top_k=V + 5)]
    prompts, outputs = [[1, 2]] * 3, [[3]] * 3
    for build in (lambda p: build_sampling_metadata(p, V, prompt_token_ids=prompts, output_token_ids=outputs),
                  lambda p: _runner_build(p, prompts, outputs)):
        meta = build(wide)
        assert meta.no_top_k and meta.top_k.tolist() == [0, 0, 0]
        assert fused_sampling_eligible(meta) == fused_sampling_eligible(build(plain)) == tuning.FUSED_SAMPLING
        assert not fused_sampling_eligible(build([SamplingParams(temperature=1.0, top_k=V - 1)] + plain[1:]))
        top_p = build([SamplingParams(temperature=1.0, top_p=0.9, min_p=0.1)] + plain[1:])
        assert fused_sampling_eligible(top_p) == tuning.FUSED_SAMPLING  # top-p/min-p: a threshold, still fused
    # top_k >= V is exactly "no top-k": the seeded row draws the same tokens as without it (CPU path).
    tokens = []
    for batch in (plain, wide):
        meta = build_sampling_metadata(batch, V)
        gens = meta.generators
        logits = torch.randn(3, V, generator=torch.Generator().manual_seed(1))
        tokens.append([Sampler()(logits, build_sampling_metadata(batch, V, generators=gens)).sampled_token_ids[2].item()
                       for _ in range(5)])
    assert tokens[0] == tokens[1]


def test_a_penalty_rows_newest_placeholder_is_read_on_the_device():
    """While the step that samples a row's newest token is in flight, its history holds a placeholder: the
    penalty tokens take that token from the step's device ids (no wait for the host copy)."""
    import pytest

    from pagoda.worker.step_output import PLACEHOLDER

    batch = InputBatch(4, 16, block_size=16)
    inputs = SamplingInputs(batch, V, torch.device("cpu"))
    params = SamplingParams(temperature=1.0, repetition_penalty=1.2)
    for req_id, prompt in (("a", [3, 4]), ("b", [5])):
        batch.add(NewRequestData(req_id=req_id, token_ids=prompt, num_prompt_tokens=len(prompt),
                                 sampling_params=params, block_ids=[], num_computed_tokens=0))
        inputs.add(req_id, params)
    rows = np.array([batch.row_of["a"], batch.row_of["b"]])
    batch.append_tokens(rows, PLACEHOLDER)  # the step in flight samples one token for each
    pending_src = np.full(4, -1, dtype=np.int64)
    pending_src[rows] = [1, 0]  # their places in that step's ids
    in_flight = torch.tensor([17, 29])
    meta = inputs.build(rows, ["a", "b"], {}, newest=(in_flight, pending_src))
    got = meta.penalties
    assert got.token_ids[0, :3].tolist() == [3, 4, 29] and got.token_ids[1, :2].tolist() == [5, 17]
    with pytest.raises(RuntimeError, match="placeholder"):
        inputs.build(rows, ["a", "b"], {})  # nothing in flight to read it from: a bug, said loudly
