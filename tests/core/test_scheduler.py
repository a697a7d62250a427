"""Scheduler behaviour: token budget, chunking, prefix sharing, preemption, policies, abort."""

from pagoda.core.sched_output import ModelRunnerOutput
from tests.core.conftest import FakeAsyncEngine, check_pool_invariants, fake_step, make_request, make_scheduler


def test_mixes_decodes_with_chunked_prefill(rng):
    s = make_scheduler(budget=10, block_size=4)
    s.add_request(make_request("a", range(1, 6)))
    out, _ = fake_step(s, rng)
    assert out.num_scheduled_tokens == {"a": 5}
    s.add_request(make_request("b", range(10, 30)))  # 20 tokens: needs chunking
    out, _ = fake_step(s, rng)
    assert out.num_scheduled_tokens == {"a": 1, "b": 9}  # a decodes, b gets the rest of the budget
    out, _ = fake_step(s, rng)
    assert out.num_scheduled_tokens == {"a": 1, "b": 9}
    out, _ = fake_step(s, rng)
    assert out.num_scheduled_tokens == {"a": 1, "b": 2}
    assert s.requests["b"].num_output_tokens == 1


def test_no_chunking_waits_for_whole_prompt(rng):
    s = make_scheduler(budget=64, block_size=4, chunked=False)
    s.add_request(make_request("a", range(1, 40)))
    out, _ = fake_step(s, rng)
    assert out.num_scheduled_tokens == {"a": 39}


def test_prefix_cache_hit_shares_blocks(rng):
    s = make_scheduler(block_size=4)
    prompt = list(range(1, 14))  # 13 tokens: 3 full blocks
    s.add_request(make_request("a", prompt))
    fake_step(s, rng)
    s.add_request(make_request("b", prompt))
    out, _ = fake_step(s, rng)
    assert out.num_scheduled_tokens["b"] == 1  # 12 of 13 tokens came from the cache
    assert s.requests["b"].num_cached_tokens == 12
    shared = set(s.kv.get_block_ids("a")[:3])
    assert shared == set(s.kv.get_block_ids("b")[:3])
    check_pool_invariants(s)


def test_same_step_requests_share_prefix(rng):
    s = make_scheduler(block_size=4, budget=64)
    prompt = list(range(1, 14))
    s.add_request(make_request("a", prompt))
    s.add_request(make_request("b", prompt))
    out, _ = fake_step(s, rng)
    assert out.num_scheduled_tokens == {"a": 13, "b": 1}
    assert s.kv.get_block_ids("a")[:3] == s.kv.get_block_ids("b")[:3]


def test_full_hit_still_computes_last_token(rng):
    s = make_scheduler(block_size=4)
    prompt = list(range(1, 13))  # exactly 3 blocks
    s.add_request(make_request("a", prompt))
    fake_step(s, rng)
    s.add_request(make_request("b", prompt))
    out, _ = fake_step(s, rng)
    assert out.num_scheduled_tokens["b"] == 4  # hits capped below the last token: last block recomputed


def test_preemption_recomputes_and_loses_nothing(rng):
    s = make_scheduler(num_blocks=16, block_size=4, budget=64, max_model_len=64)
    for i in range(4):
        s.add_request(make_request(f"r{i}", [i + 1] * 10, max_tokens=20))
    finished = {}
    preempted = 0
    for _ in range(500):
        if not s.has_unfinished_requests():
            break
        out, outputs = fake_step(s, rng)
        preempted += len(out.preempted_req_ids)
        for o in outputs:
            finished.setdefault(o.request_id, []).extend(o.new_token_ids)
        check_pool_invariants(s)
    assert preempted > 0
    assert sorted(finished) == ["r0", "r1", "r2", "r3"]
    assert all(len(tokens) == 20 for tokens in finished.values())
    assert s.kv.pool.num_free_blocks == 16


def test_priority_policy_admits_lowest_value_first(rng):
    s = make_scheduler(max_num_seqs=1, policy="priority")
    s.add_request(make_request("late", [1, 2, 3], priority=5, arrival=0.0))
    s.add_request(make_request("urgent", [4, 5, 6], priority=-1, arrival=1.0))
    out, _ = fake_step(s, rng)
    assert list(out.num_scheduled_tokens) == ["urgent"]


def test_abort_frees_blocks_at_once(rng):
    s = make_scheduler()
    s.add_request(make_request("a", range(1, 20)))
    fake_step(s, rng)
    assert s.kv.pool.num_free_blocks < s.kv.pool.num_blocks
    assert s.abort_requests(["a", "unknown"]) == ["a"]
    assert s.kv.pool.num_free_blocks == s.kv.pool.num_blocks
    out = s.schedule()
    assert "a" in out.finished_req_ids


def test_stop_token_and_eos_respect_min_tokens():
    s = make_scheduler()
    s.add_request(make_request("a", [1, 2], max_tokens=10, eos=3, min_tokens=2))
    sched = s.schedule()
    outs = s.update_from_output(sched, ModelRunnerOutput({"a": [3]}))
    assert outs[0].finish_reason is None  # below min_tokens: EOS does not stop
    sched = s.schedule()
    outs = s.update_from_output(sched, ModelRunnerOutput({"a": [3]}))
    assert outs[0].finish_reason == "stop" and outs[0].stop_reason is None


def test_max_model_len_caps_output():
    s = make_scheduler(max_model_len=8)
    s.add_request(make_request("a", [1] * 6, max_tokens=100))
    reasons = []
    for _ in range(5):
        sched = s.schedule()
        outs = s.update_from_output(sched, ModelRunnerOutput({"a": [5]}))
        reasons += [o.finish_reason for o in outs]
        if not s.has_unfinished_requests():
            break
    assert reasons == [None, "length"]


def test_async_schedules_pending_token_and_stops_at_max_tokens(rng):
    s = make_scheduler(budget=64)
    s.add_request(make_request("a", range(1, 6), max_tokens=3))
    engine = FakeAsyncEngine(s, rng)
    scheduled, tokens = [], []
    while engine.busy():
        before = s.requests.get("a")
        for out in engine.step():
            tokens += out.new_token_ids
        if engine.in_flight is not None:
            scheduled.append(engine.in_flight[0].num_scheduled_tokens.get("a", 0))
    # prompt, then the two pending tokens are computed before they are known; no 4th token is scheduled
    assert scheduled[:3] == [5, 1, 1]
    assert len(tokens) == 3
    assert s.kv.pool.num_free_blocks == s.kv.pool.num_blocks


def test_async_token_of_preempted_request_is_kept(rng):
    s = make_scheduler(num_blocks=16, block_size=4, budget=64, max_model_len=64)
    for i in range(4):
        s.add_request(make_request(f"r{i}", [i + 1] * 10, max_tokens=20))
    engine = FakeAsyncEngine(s, rng)
    finished, preempted = {}, 0
    for _ in range(1000):
        if not engine.busy():
            break
        for o in engine.step():
            finished.setdefault(o.request_id, []).extend(o.new_token_ids)
        if engine.in_flight is not None:
            preempted += len(engine.in_flight[0].preempted_req_ids)
        check_pool_invariants(s)
    assert preempted > 0
    assert sorted(finished) == ["r0", "r1", "r2", "r3"]
    assert all(len(t) == 20 for t in finished.values())
    assert s.kv.pool.num_free_blocks == 16


def _run_batch_queue(s, rng, depth, steps=2000):
    """Drive `s` like EngineCore's pipelined loop: launch while fewer than `depth` steps are in flight, resolve the
    oldest when full or when a step came out empty. Returns (tokens per request, most non-empty steps in flight)."""
    import collections

    queue, finished, most = collections.deque(), {}, 0
    for _ in range(steps):
        if not s.has_unfinished_requests() and not queue:
            break
        if len(queue) < depth and s.has_unfinished_requests():
            pending = {r.request_id: r.num_pending_steps for r in s.requests.values()}
            sched = s.schedule()
            samples = [r for r in sched.num_scheduled_tokens if s.requests[r].num_pending_steps > pending[r]]
            for _, earlier in queue:  # a request never rides two steps in flight
                assert not set(samples) & set(earlier), (samples, earlier)
            queue.append((sched, samples))
            most = max(most, sum(1 for q, _ in queue if q.total_num_scheduled_tokens))
            check_pool_invariants(s)
            if sched.total_num_scheduled_tokens and len(queue) < depth:
                continue
        sched, samples = queue.popleft()
        result = ModelRunnerOutput(sampled_token_ids={r: [rng.randrange(50)] for r in samples})
        for out in s.update_from_output(sched, result):
            finished.setdefault(out.request_id, []).extend(out.new_token_ids)
    return finished, most


def test_batch_queue_keeps_disjoint_steps_in_flight(rng):
    """Pipeline parallelism (depth 2): lock-step decodes split over two steps in flight, none twice; all tokens
    arrive, with preemption too."""
    from pagoda.config import CacheConfig, SchedulerConfig
    from pagoda.core.scheduler import Scheduler

    def scheduler(num_blocks):
        return Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64),
                         CacheConfig(block_size=4, enable_prefix_caching=True, num_blocks=num_blocks),
                         batch_queue_depth=2)

    s = scheduler(64)
    for i in range(6):
        s.add_request(make_request(f"r{i}", [i + 1] * 5, max_tokens=12))
    first = s.schedule()
    assert len(first.num_scheduled_tokens) == 6  # new requests are admitted together
    second = s.schedule()  # all six wait for their first step's tokens
    assert second.total_num_scheduled_tokens == 0
    s.update_from_output(first, ModelRunnerOutput(sampled_token_ids={r: [7] for r in first.num_scheduled_tokens}))
    third = s.schedule()
    assert len(third.num_scheduled_tokens) == 3  # ceil(6 running / 2 steps in flight)
    fourth = s.schedule()
    assert set(fourth.num_scheduled_tokens) == {f"r{i}" for i in range(6)} - set(third.num_scheduled_tokens)

    for num_blocks in (64, 18):  # 18: preemption
        s = scheduler(num_blocks)
        for i in range(6):
            s.add_request(make_request(f"r{i}", [i + 1] * 9, max_tokens=20))
        finished, most = _run_batch_queue(s, rng, depth=2)
        assert sorted(finished) == [f"r{i}" for i in range(6)]
        assert all(len(t) == 20 for t in finished.values())
        assert most == 2
        assert s.kv.pool.num_free_blocks == num_blocks
    assert s.num_preemptions_total > 0
