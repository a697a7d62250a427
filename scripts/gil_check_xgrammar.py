"""Whether xgrammar's batch fill and batch accept release the GIL, on this host.

    python scripts/gil_check_xgrammar.py TOKENIZER_DIR

A pure-Python counter runs in the main thread while another thread loops over one call; prints the counter's rate
against running alone (about 1.0 or more: the call released the GIL; about 0.5: a thread holding it, as the
pure-Python reference), and each call's time. 1000 matchers of a small JSON schema; the accept case first walks
them into a string so the same token is always allowed. Used for issue 18 (docs/benchmarks.md, session 18).
"""
import sys, threading, time
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
import numpy as np
from pagoda.config import StructuredOutputsConfig
from pagoda.sampling_params import StructuredOutputsParams
from pagoda.structured_output import StructuredOutputManager
from pagoda.structured_output import xgrammar_backend as xb
from pagoda.tokenizer import get_tokenizer
import xgrammar
tok = get_tokenizer(sys.argv[1])
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
m = StructuredOutputManager(StructuredOutputsConfig(), tok, len(tok), [tok.eos_token_id])
gs = [m.add_request(str(i), StructuredOutputsParams(json=SCHEMA)) for i in range(1000)]
for g in gs: g.wait()
mats = [g._matcher._m for g in gs]
out = np.zeros((len(mats), m.bitmask_width()), dtype=np.int32)
rows = list(range(len(mats)))
batch1 = xgrammar.BatchGrammarMatcher(max_threads=1)
batchn = xgrammar.BatchGrammarMatcher(max_threads=xb.fill_threads())
def count(seconds):
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n / seconds
alone = count(1.0)
def spin():
    sum(i for i in range(2000))
cases = [("pure Python thread (GIL-bound reference)", spin), ("time.sleep(0.001) thread (releases)", lambda: time.sleep(0.001)),
         ("batch_fill 1 thread", lambda: batch1.batch_fill_next_token_bitmask(mats, out, rows)),
         (f"batch_fill {xb.fill_threads()} threads", lambda: batchn.batch_fill_next_token_bitmask(mats, out, rows))]
for name, fn in cases:
    stop = [False]; calls = [0]
    def loop():
        while not stop[0]:
            fn(); calls[0] += 1
    t = threading.Thread(target=loop); t.start(); time.sleep(0.1)
    start = time.perf_counter(); rate = count(1.0); elapsed = time.perf_counter() - start; stop[0] = True; t.join()
    print(f"{name}: main-thread Python rate {rate/alone:.2f} of alone; {calls[0]} calls, {1e3*elapsed/max(1,calls[0]):.2f} ms each")
from xgrammar import matcher as xm
walk = tok.encode('{"name": "', add_special_tokens=False)
for t in walk:
    assert all(xgrammar.BatchGrammarMatcher.batch_accept_token(mats, [t] * len(mats)))
word = tok.encode("hello", add_special_tokens=False)[0]
handles, toks = [mm._handle for mm in mats], [word] * len(mats)
core = xm._core.BatchGrammarMatcher.batch_accept_token
import time as _t
s0 = _t.perf_counter(); res = core(handles, toks, False); s1 = _t.perf_counter(); conv = [bool(res[i]) for i in range(len(res))]; s2 = _t.perf_counter()
print(f"one batch_accept_token core call on 1000 rows: {1e3*(s1-s0):.2f} ms, its result to bools {1e3*(s2-s1):.2f} ms")
for name, fn in [("batch_accept_token core call (1000 rows)", lambda: core(handles, toks, False))]:
    stop = [False]; calls = [0]
    def loop():
        while not stop[0]:
            fn(); calls[0] += 1
    t = threading.Thread(target=loop); t.start(); time.sleep(0.1)
    start = time.perf_counter(); rate = count(1.0); elapsed = time.perf_counter() - start; stop[0] = True; t.join()
    print(f"{name}: main-thread Python rate {rate/alone:.2f} of alone; {calls[0]} calls, {1e3*elapsed/max(1,calls[0]):.2f} ms each")
