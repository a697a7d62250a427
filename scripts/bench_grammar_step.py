"""The grammar thread's work per decode step of W2 + schema, on the host alone (no model, no device).

    python scripts/bench_grammar_step.py TOKENIZER_DIR [ROWS=1000] [STEPS=40]

ROWS requests of the W2 schema (bench's `--structured-outputs`) each sample a random allowed token per step
(the random-weight model's behaviour: any allowed token, EOS only once the JSON is complete); per step the
engine's grammar-thread call `StructuredRequests.accept` (accept the step's tokens, then fill the next masks)
is timed, after 10 steps of walking in. Prints the median ms per step, the rows still inside the grammar, the
mean ms per step of its parts (xgrammar's batch accept and batch fill, the row fix-ups after the fill; the rest is
Python bookkeeping around them), and the single-thread cost per row. Used for issue 18 (docs/benchmarks.md).
"""
import sys
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
import os, time  # noqa: E401
import numpy as np
from pagoda.config import StructuredOutputsConfig
from pagoda.engine.structured_requests import StepGrammars, StructuredRequests
from pagoda.sampling_params import StructuredOutputsParams
from pagoda.structured_output import StructuredOutputManager
from pagoda.tokenizer import get_tokenizer

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"]}


PARTS = {}  # part -> seconds, over the timed steps


def _time_part(owner, name: str, label: str) -> None:
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            PARTS[label] = PARTS.get(label, 0.0) + time.perf_counter() - start
    setattr(owner, name, staticmethod(timed) if isinstance(owner, type) else timed)


def main() -> None:
    from pagoda.structured_output import request_grammar, xgrammar_backend
    _time_part(xgrammar_backend._XgrammarMatcher, "batch_accept", "xgrammar batch accept")
    _time_part(xgrammar_backend._XgrammarMatcher, "batch_fill", "xgrammar batch fill")
    _time_part(request_grammar.RequestGrammar, "finish_batch_rows", "row fix-ups (finish_batch_rows)")
    tok = get_tokenizer(sys.argv[1])
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    vocab = len(tok)
    eos = tok.eos_token_id
    manager = StructuredOutputManager(StructuredOutputsConfig(), tok, vocab, [eos])
    grammars = [manager.add_request(str(i), StructuredOutputsParams(json=SCHEMA)) for i in range(rows)]
    for grammar in grammars:
        grammar.wait()
    structured = StructuredRequests.__new__(StructuredRequests)
    structured.manager = manager
    ids = [str(i) for i in range(rows)]
    step = StepGrammars([(i, 1) for i in range(rows)], ids, grammars, None, rows, rows)
    rng = np.random.default_rng(0)
    bitmask = manager.fill_bitmask(grammars)
    times, live = [], []
    print(f"cpu_count {os.cpu_count()} rows {rows} vocab {vocab}", flush=True)
    if os.environ.get("BUSY"):  # a thread busy in Python, as the engine thread is while the grammar thread works
        import threading

        def busy():
            while True:
                sum(i * i for i in range(1000))

        threading.Thread(target=busy, daemon=True).start()
    if os.environ.get("SWITCH"):
        sys.setswitchinterval(float(os.environ["SWITCH"]))
    for n in range(steps):
        allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab].astype(bool)
        tokens = {}
        for i, row in enumerate(allowed):
            text = np.flatnonzero(row & (np.arange(vocab) != eos))
            tokens[ids[i]] = int(rng.choice(text)) if text.size else eos
        if n == 10:
            PARTS.clear()
        start = time.perf_counter()
        accepted = structured.accept(step, lambda: tokens)
        elapsed = time.perf_counter() - start
        assert not accepted.refused, list(accepted.refused.items())[:3]
        bitmask = accepted.bitmask
        if n >= 10:
            times.append(elapsed)
            live.append(sum(not g.is_terminated() for g in grammars))
    print(f"accept + fill per step: median {1e3 * np.median(times):.2f} ms, min {1e3 * min(times):.2f}, "
          f"max {1e3 * max(times):.2f}; rows inside the grammar {int(np.mean(live))} of {rows}")
    parts = {label: 1e3 * seconds / len(times) for label, seconds in PARTS.items()}
    parts["the rest (Python around them)"] = 1e3 * np.mean(times) - sum(parts.values())
    print("mean per step: " + "; ".join(f"{label} {ms:.2f} ms" for label, ms in parts.items()))
    matchers = [g._matcher for g in grammars if not g.is_terminated()][:200]
    out = np.zeros((len(matchers), bitmask.shape[1]), dtype=np.int32)
    start = time.perf_counter()
    for i, m in enumerate(matchers):
        m.fill(out, i)
    per_fill = (time.perf_counter() - start) / max(1, len(matchers))
    print(f"one thread: fill {1e6 * per_fill:.1f} us per row ({len(matchers)} rows)")


if __name__ == "__main__":
    main()
