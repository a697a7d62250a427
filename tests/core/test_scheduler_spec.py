"""The scheduler under speculative decoding: drafts scheduled, capped, rejected positions taken back."""

import random
from types import SimpleNamespace

from pagoda.config import CacheConfig, SchedulerConfig
from pagoda.core.sched_output import ModelRunnerOutput
from pagoda.core.scheduler import Scheduler
from tests.core.conftest import check_pool_invariants, make_request


def spec_scheduler(k=4, budget=32, max_model_len=64, disable_by_batch_size=None, spec_max_len=None, method="ngram",
                   **cache):
    config = SimpleNamespace(method=method, num_speculative_tokens=k, disable_by_batch_size=disable_by_batch_size,
                             max_model_len=spec_max_len)
    cache_config = CacheConfig(block_size=cache.get("block_size", 4), enable_prefix_caching=True,
                               num_blocks=cache.get("num_blocks", 64))
    sched = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=max_model_len,
                            enable_chunked_prefill=True, policy="fcfs", async_scheduling=False)
    return Scheduler(sched, cache_config, config)


def step(s, accept: dict[str, int] | None = None, propose: dict[str, list[int]] | None = None):
    """One step: a request that samples gets its accepted drafts plus one new token (7)."""
    out = s.schedule()
    sampled = {}
    for req_id, count in out.num_scheduled_tokens.items():
        req = s.requests[req_id]
        drafts = out.scheduled_spec_decode_tokens.get(req_id, [])
        if req.num_computed_tokens == req.num_tokens + len(drafts):
            n = (accept or {}).get(req_id, 0)
            sampled[req_id] = drafts[:n] + [7]
    result = ModelRunnerOutput(sampled_token_ids=sampled, draft_token_ids=dict(propose or {}))
    return out, s.update_from_output(out, result)


def test_drafts_are_scheduled_and_rejected_positions_taken_back():
    s = spec_scheduler(k=4)
    s.add_request(make_request("a", range(1, 6), max_tokens=20))
    out, _ = step(s, propose={"a": [11, 12, 13, 14]})
    assert out.num_scheduled_tokens == {"a": 5}
    req = s.requests["a"]
    assert req.spec_token_ids == [11, 12, 13, 14] and req.num_computed_tokens == 5 and req.num_tokens == 6
    out, _ = step(s, accept={"a": 2}, propose={"a": [21, 22]})
    assert out.num_scheduled_tokens == {"a": 5} and out.scheduled_spec_decode_tokens == {"a": [11, 12, 13, 14]}
    assert req.output_token_ids == [7, 11, 12, 7]
    assert req.num_computed_tokens == req.num_tokens - 1 == 8  # the last token's KV is not computed yet
    assert req.num_pending_tokens == 0
    out, _ = step(s, accept={"a": 2})
    assert out.num_scheduled_tokens == {"a": 3}
    assert req.num_computed_tokens == req.num_tokens - 1
    stats = s.stats()
    assert stats["spec_decode_num_drafts"] == 2
    assert stats["spec_decode_num_draft_tokens"] == 6
    assert stats["spec_decode_num_accepted_tokens"] == 4
    assert stats["spec_decode_num_accepted_tokens_per_pos"] == [2, 2, 0, 0]
    check_pool_invariants(s)


def test_drafts_capped_by_max_tokens_budget_and_spec_max_len():
    s = spec_scheduler(k=4)
    s.add_request(make_request("a", range(1, 6), max_tokens=3))
    step(s, propose={"a": [1, 2, 3, 4]})
    out, outputs = step(s, accept={"a": 1})
    assert out.scheduled_spec_decode_tokens == {"a": [1]}  # 1 output so far: at most 2 more, 1 + 1 draft
    assert outputs[0].finish_reason == "length" and outputs[0].new_token_ids == [1, 7]

    s = spec_scheduler(k=4, budget=3)
    s.add_request(make_request("a", range(1, 3), max_tokens=20))
    step(s, propose={"a": [1, 2, 3, 4]})
    out, _ = step(s)
    assert out.scheduled_spec_decode_tokens == {"a": [1, 2]} and out.num_scheduled_tokens == {"a": 3}

    s = spec_scheduler(k=4, spec_max_len=8)
    s.add_request(make_request("a", range(1, 6), max_tokens=20))  # 6 tokens after the first step
    step(s, propose={"a": [1, 2, 3, 4]})
    out, _ = step(s, propose={"a": [1, 2, 3, 4]})
    assert out.scheduled_spec_decode_tokens == {"a": [1, 2]}
    out, _ = step(s)  # 7 tokens now: one more draft would pass the draft length limit
    assert out.scheduled_spec_decode_tokens == {"a": [1]}


def test_no_drafts_while_the_batch_is_large():
    s = spec_scheduler(k=2, disable_by_batch_size=2)
    for name in "ab":
        s.add_request(make_request(name, range(1, 6), max_tokens=20))
    step(s, propose={"a": [1, 2], "b": [1, 2]})
    out, _ = step(s, propose={"a": [1, 2], "b": [1, 2]})
    assert out.scheduled_spec_decode_tokens == {} and not out.propose_drafts  # the runner need not propose
    s.abort_requests(["b"])
    out, _ = step(s)
    assert out.scheduled_spec_decode_tokens == {"a": [1, 2]} and out.propose_drafts


def test_stop_token_inside_an_accepted_run_finishes_there():
    s = spec_scheduler(k=4)
    s.add_request(make_request("a", range(1, 6), max_tokens=20, eos=12))
    step(s, propose={"a": [11, 12, 13, 14]})
    _, outputs = step(s, accept={"a": 4})
    assert outputs[0].new_token_ids == [11, 12] and outputs[0].finish_reason == "stop"
    assert not s.requests and s.kv.pool.num_free_blocks == s.kv.pool.num_blocks


def test_preemption_drops_drafts_and_random_runs_keep_the_pool_consistent():
    rng = random.Random(0)
    s = spec_scheduler(k=3, budget=16, num_blocks=14)
    for i in range(5):
        s.add_request(make_request(str(i), range(1, 8 + i), max_tokens=12))
    for _ in range(200):
        if not s.has_unfinished_requests():
            break
        accept = {r: rng.randrange(4) for r in s.requests}
        propose = {r: [rng.randrange(50) for _ in range(rng.randrange(4))] for r in s.requests}
        step(s, accept, propose)
        check_pool_invariants(s)
        for req in s.requests.values():
            assert req.num_computed_tokens <= req.num_tokens
            if req.status.name == "WAITING" or req.status.name == "PREEMPTED":
                assert req.spec_token_ids == []
    assert not s.has_unfinished_requests()
    assert s.num_preemptions_total > 0
    assert s.kv.pool.num_free_blocks == s.kv.pool.num_blocks


def test_draft_model_reserves_lookahead_slots_capped_at_max_model_len():
    s = spec_scheduler(k=4, max_model_len=12, method="draft_model")
    s.add_request(make_request("a", range(1, 6), max_tokens=6))
    step(s)
    assert len(s.kv.req_to_blocks["a"]) == 3  # 5 prompt tokens + 4 lookahead slots, blocks of 4
    step(s, propose={"a": [1, 2, 3]})  # 6 known tokens; verify 3 drafts: 9 tokens + 4 lookahead, capped at 12
    assert len(s.kv.req_to_blocks["a"]) == 3
    check_pool_invariants(s)


def async_spec_scheduler(k=3, budget=32, max_model_len=48, num_blocks=64, method="draft_model"):
    config = SimpleNamespace(method=method, num_speculative_tokens=k, disable_by_batch_size=None, max_model_len=None)
    cache_config = CacheConfig(block_size=4, enable_prefix_caching=True, num_blocks=num_blocks)
    sched = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=max_model_len,
                            enable_chunked_prefill=True, policy="fcfs", async_scheduling=True)
    return Scheduler(sched, cache_config, config)


class FakeAsyncSpecRunner:
    """Drives the scheduler like EngineCore with async scheduling and drafts on the device: step n+1 is scheduled
    before step n's output is applied. Keeps each request's true position (what the runner computes after its
    device-side correction) and checks the scheduler's optimistic counts against it."""

    def __init__(self, s, rng, k):
        self.s, self.rng, self.k = s, rng, k
        self.in_flight = None
        self.true_computed = {}  # request id -> positions really computed (the runner's corrected view)
        self.known = {}  # request id -> tokens the runner knows (prompt + every token sampled so far)
        self.max_position = 0

    def step(self):
        s, launched = self.s, None
        if s.has_unfinished_requests():
            pending_before = {r.request_id: r.num_pending_tokens for r in s.requests.values()}
            sched = s.schedule()
            for new in sched.new_reqs:  # new, or resumed after preemption (never with tokens in flight)
                assert pending_before[new.req_id] == 0
                self.known[new.req_id] = len(new.token_ids)
                self.true_computed[new.req_id] = new.num_computed_tokens
            sampled, drafts = {}, {}
            for req_id, count in sched.num_scheduled_tokens.items():
                draft = sched.scheduled_spec_decode_tokens.get(req_id, [])
                assert all(t == -1 for t in draft)  # device drafts: placeholders only
                start = self.true_computed[req_id]
                end = start + count
                self.max_position = max(self.max_position, end)
                # The runner samples when the step reaches the end of the tokens it knows plus the drafts.
                if end == self.known[req_id] + len(draft):
                    accepted = self.rng.randrange(len(draft) + 1)
                    sampled[req_id] = [self.rng.randrange(50) for _ in range(accepted + 1)]
                    drafts[req_id] = [-1] * self.k
                    self.known[req_id] += accepted + 1
                    end -= len(draft) - accepted
                self.true_computed[req_id] = end
            launched = (sched, ModelRunnerOutput(sampled_token_ids=sampled, draft_token_ids=drafts))
        outputs = s.update_from_output(*self.in_flight) if self.in_flight is not None else []
        self.in_flight = launched
        return outputs


def test_async_device_drafts_are_scheduled_while_the_verify_step_is_in_flight():
    s = async_spec_scheduler(k=3)
    s.add_request(make_request("a", range(1, 6), max_tokens=30))
    runner = FakeAsyncSpecRunner(s, random.Random(1), k=3)
    runner.step()  # prefill (samples); the next step is scheduled before its output arrives
    runner.step()
    req = s.requests["a"]
    assert req.spec_token_ids == [-1, -1, -1]  # the runner drafts 3 per step on the device
    out = s.schedule()
    assert out.scheduled_spec_decode_tokens == {"a": [-1, -1, -1]} and out.num_scheduled_tokens == {"a": 4}
    assert req.num_pending_tokens == 1 + 4 and req.num_pending_steps == 2


def test_async_device_drafts_random_runs_match_the_true_positions():
    rng = random.Random(0)
    for trial in range(6):
        s = async_spec_scheduler(k=3, budget=rng.choice([8, 16, 32]), num_blocks=rng.choice([16, 64]))
        max_tokens = {}
        for i in range(5):
            max_tokens[str(i)] = rng.randrange(1, 30)
            s.add_request(make_request(str(i), range(1, 4 + rng.randrange(12)), max_tokens=max_tokens[str(i)]))
        runner = FakeAsyncSpecRunner(s, rng, k=3)
        produced = {r: [] for r in max_tokens}
        finished = {}
        for _ in range(500):
            if not (s.has_unfinished_requests() or runner.in_flight is not None):
                break
            for output in runner.step():
                produced[output.request_id] += output.new_token_ids
                if output.finish_reason is not None:
                    finished[output.request_id] = output.finish_reason
            check_pool_invariants(s)
            for req in s.requests.values():
                assert req.num_computed_tokens <= req.num_tokens + req.num_pending_tokens
                if runner.in_flight is None or req.request_id not in runner.in_flight[0].num_scheduled_tokens:
                    if req.status.name == "RUNNING" and req.num_pending_steps == 0:
                        assert req.num_computed_tokens == runner.true_computed[req.request_id]
        assert not s.has_unfinished_requests()
        assert finished == {r: "length" for r in max_tokens}, trial
        assert {r: len(t) for r, t in produced.items()} == max_tokens  # exactly max_tokens, never more
        assert runner.max_position <= 48  # nothing computed past max_model_len
        assert s.kv.pool.num_free_blocks == s.kv.pool.num_blocks
        assert s.spec_stats.as_dict()["spec_decode_num_draft_tokens"] > 0
