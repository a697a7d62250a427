"""Speed-of-light model on hand-computed cases."""

import math

import pytest

from pagoda.benchmarks import speed_of_light as sol
from pagoda.benchmarks.make_model import SHAPES

LLAMA3_8B = sol.ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=128256)
H200 = sol.Ceilings(bandwidth=4.25e12, flops=800e12, memory_bytes=141e9)


def test_llama3_8b_sizes():
    # per layer: q,o 4096·4096 each; k,v 4096·1024 each; MLP 3·4096·14336; two norms of 4096
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert LLAMA3_8B.layer_params() == layer == 218_112_000
    assert LLAMA3_8B.params() == 32 * layer + 4096 + 2 * 128256 * 4096 == 8_030_261_248
    assert LLAMA3_8B.weight_bytes() == 2 * 8_030_261_248
    # the input embedding is a gather: a step reads the layers, the final norm and the LM head
    assert LLAMA3_8B.weight_read_bytes() == 2 * (32 * layer + 4096 + 128256 * 4096) == 15_009_849_344
    assert LLAMA3_8B.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131072


def test_tied_embeddings_count_once():
    tied = sol.ModelShape(hidden=8, layers=1, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=100, tied_embeddings=True)
    layer = 8 * 4 * (2 * 2 + 2 * 1) + 3 * 8 * 16 + 2 * 8
    assert tied.params() == layer + 8 + 100 * 8
    assert tied.weight_read_bytes() == 2 * (layer + 8 + 100 * 8)


def test_from_hf_config_dict():
    shape = sol.ModelShape.from_hf_config(SHAPES["llama3-8b"])
    assert shape == LLAMA3_8B
    fp32 = sol.ModelShape.from_hf_config(SHAPES["llama3-8b"], dtype="float32", kv_cache_dtype="fp8")
    assert fp32.dtype_bytes == 4 and fp32.kv_bytes_per_token() == 2 * 32 * 8 * 128


def test_batch1_decode_of_8b_is_bandwidth_bound():
    # 15.01 GB of weights + 128 KiB of KV written, at 4.25 TB/s: about 3.53 ms a token
    t = sol.step_cost(LLAMA3_8B, [sol.Chunk(query=1, context=0)], H200)
    assert t == pytest.approx((15_009_849_344 + 131072) / 4.25e12)
    assert 3.5e-3 < t < 3.6e-3
    nbytes, flops = sol.step_bytes_flops(LLAMA3_8B, [sol.Chunk(1, 0)])
    assert flops / H200.flops < nbytes / H200.bandwidth / 100


def test_decode_reads_the_context():
    nbytes, _ = sol.step_bytes_flops(LLAMA3_8B, [sol.Chunk(1, 1000), sol.Chunk(1, 3000)])
    assert nbytes == 15_009_849_344 + 131072 * (1000 + 3000 + 2)


def test_attention_flops_causal():
    s = sol.ModelShape(hidden=8, layers=2, heads=3, kv_heads=1, head_dim=5, intermediate=8, vocab=10)
    unit = 4 * 2 * 3 * 5
    assert sol.attention_flops(s, 1, 10) == unit * 11  # one decode token sees 10 cached + itself
    assert sol.attention_flops(s, 4, 0) == unit * (1 + 2 + 3 + 4)  # causal prefill
    assert sol.attention_flops(s, 2, 3) == unit * (4 + 5)


def test_prefill_is_compute_bound():
    q = 1024
    nbytes, flops = sol.step_bytes_flops(LLAMA3_8B, [sol.Chunk(q, 0)])
    body = 32 * 218_112_000 + 4096
    attn = 4 * 32 * 32 * 128 * (q * (q + 1) / 2)
    assert flops == pytest.approx(2 * body * q + 2 * 128256 * 4096 + attn)
    assert sol.step_cost(LLAMA3_8B, [sol.Chunk(q, 0)], H200) == pytest.approx(flops / 800e12)


def test_kv_capacity():
    # (141 GB · 0.9 − 16.06 GB) / 128 KiB
    assert sol.kv_capacity_tokens(LLAMA3_8B, 141e9, 0.9) == int((141e9 * 0.9 - 2 * 8_030_261_248) // 131072)
    with pytest.raises(ValueError):
        sol.kv_capacity_tokens(LLAMA3_8B, 16e9, 0.9)


def test_simulate_single_request_matches_hand_steps():
    c = sol.Ceilings(bandwidth=1e12, flops=1e15)
    work = [sol.Workload(prompt_len=5, output_len=3)]
    s = sol.simulate(LLAMA3_8B, work, c, kv_tokens=100, token_budget=64)
    # step 1: prefill 5 tokens (samples token 1); steps 2-3: decode at context 5 and 6
    expected = [sol.step_cost(LLAMA3_8B, [sol.Chunk(5, 0)], c), sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 5)], c),
                sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 6)], c)]
    assert s.steps == 3
    assert s.step_times == pytest.approx(expected)
    assert s.time_s == pytest.approx(sum(expected))


def test_simulate_chunked_prefill_and_batched_decodes():
    c = sol.Ceilings(bandwidth=1e12, flops=1e15)
    work = [sol.Workload(4, 2), sol.Workload(4, 2)]
    s = sol.simulate(LLAMA3_8B, work, c, kv_tokens=100, token_budget=6)
    # step 1: A prefill 4 + B chunk 2; step 2: A decode (ctx 4) + B rest 2 (ctx 2); step 3: B decode (ctx 4)
    expected = [
        sol.step_cost(LLAMA3_8B, [sol.Chunk(4, 0), sol.Chunk(2, 0, sampled=0)], c),
        sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 4), sol.Chunk(2, 2)], c),
        sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 4)], c),
    ]
    assert s.step_times == pytest.approx(expected)


def test_simulate_memory_limits_requests_in_flight():
    c = sol.Ceilings(bandwidth=1e12, flops=1e15)
    work = [sol.Workload(4, 3), sol.Workload(4, 3)]
    together = sol.simulate(LLAMA3_8B, work, c, kv_tokens=14, token_budget=64)
    serial = sol.simulate(LLAMA3_8B, work, c, kv_tokens=13, token_budget=64)
    assert together.steps == 3  # both prefill in one step, then two shared decode steps
    assert serial.steps == 6  # the second waits until the first frees its 7 tokens
    with pytest.raises(ValueError):
        sol.simulate(LLAMA3_8B, work, c, kv_tokens=6, token_budget=64)


def test_speed_of_light_is_best_budget():
    work = sol.workload_from_lengths([1024] * 20, [128] * 20)
    kv = sol.kv_capacity_tokens(LLAMA3_8B, 141e9)
    best = sol.speed_of_light(LLAMA3_8B, work, H200, kv)
    for budget in (64, 512, 4096, 20480):
        assert best.time_s <= sol.simulate(LLAMA3_8B, work, H200, kv, budget).time_s + 1e-12
    # the bound is at least the pure compute of all prompt tokens and the weight reads of 127 decode steps
    flops = 20 * 1024 * 2 * (32 * 218_112_000 + 4096)
    assert best.time_s >= flops / H200.flops
    assert best.time_s >= 127 * 15_009_849_344 / H200.bandwidth


def test_parallel_samples_share_the_prompt():
    work = sol.workload_from_lengths([10], [4], n=3)
    assert work == [sol.Workload(10, 4), sol.Workload(10, 4, cached=9), sol.Workload(10, 4, cached=9)]


def test_format_line():
    assert sol.format_line(1.0, 4.0) == "Speed-of-light: 1 s; achieved 25.00 %"
    assert math.isnan(sol.achieved_percent(1.0, 0.0))


# ---- the issue-24 workloads (suite W7-W12) ----------------------------------------------------------------

def test_shared_prefix_workload_computes_the_prefix_once():
    work = sol.workload_from_lengths([12, 12, 8], [2, 2, 2], shared_prefix=8)
    # the first request computes the prefix; the others find it cached (a prompt that is only the
    # prefix recomputes its last token)
    assert [w.cached for w in work] == [0, 8, 7]
    with_n = sol.workload_from_lengths([12, 12], [2, 2], n=2, shared_prefix=8)
    assert [w.cached for w in with_n] == [0, 11, 8, 11]
    with pytest.raises(ValueError, match="shorter than the shared prefix"):
        sol.simulate(LLAMA3_8B, sol.workload_from_lengths([6], [2]), H200, kv_tokens=100, token_budget=64, shared_prefix=8)


def test_shared_prefix_is_read_once_per_step_by_hand():
    c = sol.Ceilings(bandwidth=1e12, flops=1e18)  # every step bandwidth-bound: time = bytes / bandwidth
    kv = LLAMA3_8B.kv_bytes_per_token()
    w = LLAMA3_8B.weight_read_bytes()
    work = sol.workload_from_lengths([10, 10], [2, 2], shared_prefix=8)
    once = sol.simulate(LLAMA3_8B, work, c, kv_tokens=100, token_budget=64, shared_prefix=8)
    # step 1: A prefills 10 (computes the prefix), B its last 2 after the cached 8: the prefix's 8 tokens
    # are read once, 12 new tokens written; step 2: both decode at context 10: the prefix once + 2 own each
    assert once.step_times == pytest.approx([(w + kv * (8 + 12)) / 1e12, (w + kv * (8 + 2 * 2 + 2)) / 1e12])
    paged = sol.simulate(LLAMA3_8B, work, c, kv_tokens=100, token_budget=64, shared_prefix=8, read_prefix_once=False)
    # paged attention without cascade: every request reads the whole context
    assert paged.step_times == pytest.approx([(w + kv * (8 + 12)) / 1e12, (w + kv * (2 * 10 + 2)) / 1e12])
    # no prefix at all: the same as the plain step cost of the chunks
    plain = sol.simulate(LLAMA3_8B, sol.workload_from_lengths([10, 10], [2, 2]), c, kv_tokens=100, token_budget=64)
    assert plain.step_times == pytest.approx([sol.step_cost(LLAMA3_8B, [sol.Chunk(10, 0), sol.Chunk(10, 0)], c),
                                              sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 10), sol.Chunk(1, 10)], c)])


def test_shared_prefix_is_held_once():
    c = sol.Ceilings(bandwidth=1e12, flops=1e15)
    work = sol.workload_from_lengths([10, 10], [2, 2], shared_prefix=8)
    # 8 prefix tokens + 2 × (10 + 2 − 8) = 16 fit both requests at once; without sharing they need 24
    assert sol.simulate(LLAMA3_8B, work, c, kv_tokens=16, token_budget=64, shared_prefix=8).steps == 2
    assert sol.simulate(LLAMA3_8B, work, c, kv_tokens=15, token_budget=64, shared_prefix=8).steps == 4
    assert sol.simulate(LLAMA3_8B, work, c, kv_tokens=16, token_budget=64).steps == 4


def test_w8_shared_prefix_bound_orders():
    """W8's shape: 1000 × (1000 shared + 128)/128. Cascade < paged < computing the prefix per request."""
    kv = sol.kv_capacity_tokens(LLAMA3_8B, 141e9)
    lens, outs = [1128] * 1000, [128] * 1000
    shared = sol.workload_from_lengths(lens, outs, shared_prefix=1000)
    once = sol.speed_of_light(LLAMA3_8B, shared, H200, kv, shared_prefix=1000).time_s
    paged = sol.speed_of_light(LLAMA3_8B, shared, H200, kv, shared_prefix=1000, read_prefix_once=False).time_s
    recompute = sol.speed_of_light(LLAMA3_8B, sol.workload_from_lengths(lens, outs), H200, kv).time_s
    w2 = sol.speed_of_light(LLAMA3_8B, sol.workload_from_lengths([128] * 1000, outs), H200, kv).time_s
    assert w2 < once < paged < recompute
    assert once < 1.1 * w2  # read once, the prefix adds its attention FLOPs and little traffic to W2's bound


def test_parallel_sampling_bound_by_hand():
    c = sol.Ceilings(bandwidth=1e12, flops=1e15)
    s = sol.simulate(LLAMA3_8B, sol.workload_from_lengths([10], [3], n=2), c, kv_tokens=100, token_budget=64)
    # step 1: sample 1 prefills the prompt, sample 2 only its last token; then both decode at 10 and 11
    assert s.step_times == pytest.approx([
        sol.step_cost(LLAMA3_8B, [sol.Chunk(10, 0), sol.Chunk(1, 9)], c),
        sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 10), sol.Chunk(1, 10)], c),
        sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 11), sol.Chunk(1, 11)], c)])


def test_w10_n4_bound_is_below_w2():
    """250 prompts × n=4 decode the same 1000 sequences as W2 but prefill a quarter of the prompts."""
    kv = sol.kv_capacity_tokens(LLAMA3_8B, 141e9)
    n4 = sol.speed_of_light(LLAMA3_8B, sol.workload_from_lengths([128] * 250, [128] * 250, n=4), H200, kv)
    w2 = sol.speed_of_light(LLAMA3_8B, sol.workload_from_lengths([128] * 1000, [128] * 1000), H200, kv)
    assert n4.time_s < w2.time_s
    assert n4.time_s >= 127 * LLAMA3_8B.weight_read_bytes() / H200.bandwidth  # 127 decode steps at least


@pytest.mark.parametrize("prompt", [128, 2048])
def test_ttft_bound_is_one_prefill_step(prompt):
    kv = sol.kv_capacity_tokens(LLAMA3_8B, 141e9)
    best = sol.speed_of_light(LLAMA3_8B, sol.workload_from_lengths([prompt], [1]), H200, kv)
    assert best.time_s == pytest.approx(sol.step_cost(LLAMA3_8B, [sol.Chunk(prompt, 0)], H200))
    if prompt == 128:
        assert best.steps == 1 and 3.5e-3 < best.time_s < 3.6e-3  # bandwidth-bound: the weights once


def test_llama3_70b_shape_does_not_fit_one_h200():
    shape = sol.ModelShape.from_hf_config(SHAPES["llama3-70b"])
    # per layer: q,o 8192·8192; k,v 8192·1024; MLP 3·8192·28672; two norms
    layer = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    assert shape.params() == 80 * layer + 8192 + 2 * 128256 * 8192 == 70_553_706_496
    assert shape.weight_bytes() > H200.memory_bytes
    four = sol.parallel_ceilings(H200, tensor_parallel=4)
    assert sol.kv_capacity_tokens(shape, four.memory_bytes) > 1_000_000  # ~1.3M tokens of 320 KiB beside 141 GB
    with pytest.raises(ValueError, match="do not fit"):
        sol.kv_capacity_tokens(shape, H200.memory_bytes)


def test_parallel_ceilings_add_up_over_the_gpus_that_work_at_once():
    tp4 = sol.parallel_ceilings(H200, tensor_parallel=4)
    assert (tp4.bandwidth, tp4.flops, tp4.memory_bytes) == (4 * 4.25e12, 4 * 800e12, 4 * 141e9)
    tp2pp2 = sol.parallel_ceilings(H200, 2, 2)
    assert (tp2pp2.bandwidth, tp2pp2.memory_bytes) == (4 * 4.25e12, 4 * 141e9)
    turns = sol.parallel_ceilings(H200, 2, 2, stages_overlap=False)  # batch-1 latency: stages one after another
    assert (turns.bandwidth, turns.flops, turns.memory_bytes) == (2 * 4.25e12, 2 * 800e12, 4 * 141e9)
    assert sol.parallel_ceilings(H200) == H200
    # batch-1 decode of the 8B at tp 2: half the time of one GPU
    one = sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 0)], H200)
    assert sol.step_cost(LLAMA3_8B, [sol.Chunk(1, 0)], sol.parallel_ceilings(H200, 2)) == pytest.approx(one / 2)
    with pytest.raises(ValueError, match="parallel sizes"):
        sol.parallel_ceilings(H200, 0)
