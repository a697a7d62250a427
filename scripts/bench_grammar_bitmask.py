"""Time the host side of structured output: filling a step's grammar bitmask for a batch of requests.

    python scripts/bench_grammar_bitmask.py TOKENIZER_DIR [--batch 256] [--steps 40] [--backend xgrammar]

Each step fills the bitmask of `batch` requests under one JSON schema (StructuredOutputManager.fill_bitmask,
batched across threads where the backend can), then every request accepts a random allowed token, so the
requests walk into strings, numbers and arrays. Prints ms per step (min / median / max) and checks the
batched fill against the row-by-row one every 10 steps. Use a realistic vocabulary, e.g. the byte-level BPE
of `python -m pagoda.benchmarks.make_model DIR --tokenizer bpe` (128,256 ids).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from pagoda.config import StructuredOutputsConfig  # noqa: E402
from pagoda.sampling_params import StructuredOutputsParams  # noqa: E402
from pagoda.structured_output import StructuredOutputManager  # noqa: E402
from pagoda.tokenizer import get_tokenizer  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "tags"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("tokenizer")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--backend", default="xgrammar", choices=["xgrammar", "guidance", "outlines"])
    a = p.parse_args()
    tokenizer = get_tokenizer(a.tokenizer)
    vocab = len(tokenizer)
    manager = StructuredOutputManager(StructuredOutputsConfig(backend=a.backend), tokenizer, vocab,
                                      [tokenizer.eos_token_id])
    started = time.perf_counter()
    grammars = [manager.add_request(str(i), StructuredOutputsParams(json=SCHEMA)) for i in range(a.batch)]
    for grammar in grammars:
        grammar.wait()
    print(f"{a.backend}: tokenizer tables + compile {time.perf_counter() - started:.3f} s (vocab {vocab})")
    rng = np.random.default_rng(0)
    times = []
    for step in range(a.steps):
        started = time.perf_counter()
        bitmask = manager.fill_bitmask(grammars)
        times.append(time.perf_counter() - started)
        if step % 10 == 0:
            rows = np.zeros_like(bitmask)
            for i, grammar in enumerate(grammars):
                grammar.fill_bitmask(rows, i)
            differ = np.flatnonzero((rows != bitmask).any(axis=1))
            assert differ.size == 0, f"step {step}: the batched fill differs from the row-by-row one in rows {differ[:8]}"
        allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab]
        for i, grammar in enumerate(grammars):
            token = int(rng.choice(np.flatnonzero(allowed[i])))
            assert grammar.accept_tokens([token]), f"step {step}, row {i}: the mask allows {token} but the grammar refuses it"
    ms = np.array(times) * 1e3
    print(f"{a.backend}: bitmask fill of {a.batch} rows per step: min {ms.min():.1f} ms, median {np.median(ms):.1f} ms, "
          f"max {ms.max():.1f} ms over {a.steps} steps")
    manager.shutdown()


if __name__ == "__main__":
    main()
