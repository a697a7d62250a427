"""Property test: whatever the sequence of add / abort / step, every block returns to the pool."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.conftest import FakeAsyncEngine, check_pool_invariants, fake_step, make_request, make_scheduler

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 40), st.integers(1, 12), st.integers(0, 3)),
        st.tuples(st.just("abort"), st.integers(0, 50)),
        st.tuples(st.just("step"), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, num_blocks=st.integers(16, 40), block_size=st.sampled_from([2, 4, 8]),
       caching=st.booleans(), chunked=st.booleans(), policy=st.sampled_from(["fcfs", "priority"]),
       pipelined=st.booleans())
def test_blocks_always_return_to_pool(ops, num_blocks, block_size, caching, chunked, policy, pipelined):
    max_len = 64
    num_blocks = max(num_blocks, -(-max_len // block_size))
    scheduler = make_scheduler(num_blocks=num_blocks, block_size=block_size, budget=64 if not chunked else 24,
                               max_model_len=max_len, chunked=chunked, caching=caching, policy=policy)
    rng = random.Random(1)
    engine = FakeAsyncEngine(scheduler, random.Random(2))
    step = engine.step if pipelined else (lambda: fake_step(scheduler, rng))
    prefixes = [[rng.randrange(50) for _ in range(16)] for _ in range(4)]
    added = []
    for op in ops:
        if op[0] == "add":
            _, length, max_tokens, prefix = op
            prompt = (prefixes[prefix] + [rng.randrange(50) for _ in range(length)])[:length]
            req_id = f"r{len(added)}"
            scheduler.add_request(make_request(req_id, prompt, max_tokens=max_tokens, eos=7,
                                               priority=rng.randrange(3), arrival=len(added)))
            added.append(req_id)
        elif op[0] == "abort" and added:
            scheduler.abort_requests([added[op[1] % len(added)]])
        else:
            for _ in range(op[1]):
                step()
                check_pool_invariants(scheduler)
    # Drain: everything finishes (no request may be stuck forever).
    for _ in range(2000):
        if not engine.busy() and not scheduler.has_unfinished_requests():
            break
        step()
        check_pool_invariants(scheduler)
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv.pool.num_free_blocks == scheduler.kv.pool.num_blocks
    assert not scheduler.kv.req_to_blocks
