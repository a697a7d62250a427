"""How xgrammar's batch bitmask fill scales with threads on this host.

    python scripts/bench_grammar_threads.py TOKENIZER_DIR [ROWS=1000]

ROWS requests of one JSON schema walk 30 random allowed tokens into the object, then the fill of all rows is
timed (best of 5) with 1..32 xgrammar threads, after one row alone and before the row fix-ups pagoda applies
(RequestGrammar.finish_batch_rows). Use the byte-level BPE of `python -m pagoda.benchmarks.make_model DIR
--tokenizer bpe`.
"""
import sys
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
import os, sys, time, numpy as np
from pagoda.config import StructuredOutputsConfig
from pagoda.sampling_params import StructuredOutputsParams
from pagoda.structured_output import StructuredOutputManager
from pagoda.structured_output.request_grammar import RequestGrammar
from pagoda.tokenizer import get_tokenizer
import xgrammar
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"]}
tok = get_tokenizer(sys.argv[1]); V = len(tok); B = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
print("cpu_count", os.cpu_count(), "affinity", len(os.sched_getaffinity(0)))
m = StructuredOutputManager(StructuredOutputsConfig(), tok, V, [tok.eos_token_id])
gs = [m.add_request(str(i), StructuredOutputsParams(json=SCHEMA)) for i in range(B)]
for g in gs: g.wait()
rng = np.random.default_rng(0)
bm = m.fill_bitmask(gs)
for step in range(30):  # walk into the object
    allowed = np.unpackbits(bm.view(np.uint8), axis=1, bitorder="little")[:, :V]
    toks = [int(rng.choice(np.flatnonzero(a[:V] & (np.arange(V) != tok.eos_token_id)) if a.sum() > 1 else np.flatnonzero(a))) for a in allowed]
    RequestGrammar.accept_batch(gs, toks)
    bm = m.fill_bitmask(gs)
ms = [g._matcher._m for g in gs]
out = np.zeros((B, bm.shape[1]), dtype=np.int32)
t = time.perf_counter()
for i, x in enumerate(ms[:200]): x.fill_next_token_bitmask(out, i)
print(f"single-row fill: {1e6*(time.perf_counter()-t)/200:.1f} us/row")
for th in [1, 2, 4, 8, 12, 15, 16, 32]:
    bmm = xgrammar.BatchGrammarMatcher(max_threads=th)
    best = 1e9
    for _ in range(5):
        t = time.perf_counter(); bmm.batch_fill_next_token_bitmask(ms, out, list(range(B))); best = min(best, time.perf_counter() - t)
    print(f"batch fill threads={th:2d}: {1e3*best:.2f} ms for {B} rows")
t = time.perf_counter(); RequestGrammar.finish_batch_rows(gs, out, list(range(B))); print(f"finish_batch_rows {1e3*(time.perf_counter()-t):.2f} ms")
