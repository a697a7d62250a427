"""Helpers for driving the scheduler without a model: a fake runner that samples token ids."""

import random

import pytest

from pagoda.config import CacheConfig, SchedulerConfig
from pagoda.core.request import EngineCoreRequest
from pagoda.core.sched_output import ModelRunnerOutput
from pagoda.core.scheduler import Scheduler
from pagoda.sampling_params import SamplingParams


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, max_model_len=64,
                   chunked=True, caching=True, policy="fcfs") -> Scheduler:
    cache = CacheConfig(block_size=block_size, enable_prefix_caching=caching, num_blocks=num_blocks)
    sched = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                            max_model_len=max_model_len, enable_chunked_prefill=chunked, policy=policy)
    return Scheduler(sched, cache)


def make_request(request_id, prompt, max_tokens=8, eos=None, priority=0, arrival=0.0, **params):
    sp = SamplingParams(max_tokens=max_tokens, **params)
    if eos is not None:
        sp.all_stop_token_ids.add(eos)
    return EngineCoreRequest(request_id, list(prompt), sp, eos, arrival_time=arrival, priority=priority)


def fake_step(scheduler: Scheduler, rng: random.Random, vocab: int = 50):
    """One engine step with random tokens for every request that reached its last known token."""
    sched = scheduler.schedule()
    sampled = {}
    for req_id in sched.num_scheduled_tokens:
        req = scheduler.requests[req_id]
        sampled[req_id] = [rng.randrange(vocab)] if req.num_computed_tokens == req.num_tokens else []
    return sched, scheduler.update_from_output(sched, ModelRunnerOutput(sampled_token_ids=sampled))


def check_pool_invariants(scheduler: Scheduler) -> None:
    pool = scheduler.kv.pool
    holders = {}
    for blocks in scheduler.kv.req_to_blocks.values():
        for b in blocks:
            holders[b.block_id] = holders.get(b.block_id, 0) + 1
    free = 0
    for block in pool.blocks:
        assert block.ref_cnt == holders.get(block.block_id, 0), block
        free += block.ref_cnt == 0
    assert free == pool.num_free_blocks
    for h, block in pool.cached.items():
        assert block.block_hash == h
    for req_id, blocks in scheduler.kv.req_to_blocks.items():
        req = scheduler.requests[req_id]
        assert len(blocks) * scheduler.block_size >= req.num_computed_tokens


@pytest.fixture
def rng():
    return random.Random(0)


class FakeAsyncEngine:
    """Drives the scheduler like EngineCore with async scheduling: step n+1 is scheduled before
    step n's sampled tokens are applied."""

    def __init__(self, scheduler: Scheduler, rng: random.Random, vocab: int = 50):
        self.scheduler, self.rng, self.vocab = scheduler, rng, vocab
        self.in_flight = None

    def step(self):
        s = self.scheduler
        launched = None
        if s.has_unfinished_requests():
            pending_before = {r.request_id: r.num_pending_tokens for r in s.requests.values()}
            sched = s.schedule()
            sampled = {}
            for req_id in sched.num_scheduled_tokens:
                # Like the runner: a request samples when the step reaches the end of its known and
                # in-flight tokens.
                req = s.requests[req_id]
                samples = req.num_computed_tokens == req.num_tokens + pending_before[req_id]
                sampled[req_id] = [self.rng.randrange(self.vocab)] if samples else []
            launched = (sched, ModelRunnerOutput(sampled_token_ids=sampled))
        outputs = []
        if self.in_flight is not None:
            outputs = s.update_from_output(*self.in_flight)
        self.in_flight = launched
        return outputs

    def busy(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self.in_flight is not None
