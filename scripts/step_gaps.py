"""Where the GPU waits on the host during an offline run: per-step GPU gaps from CUDA events.

    python scripts/step_gaps.py MODEL_DIR [--generate 1000:128:128] [--schema] [--set key=value ...]

Wraps the model runner's execute_model with two CUDA events (recorded when the host starts the step
and after it has launched everything); the GPU timestamps them when it reaches them. A positive
difference between one step's first event and the previous step's last event is time the GPU sat
idle waiting for the host to enqueue work. Prints the run's throughput, the idle total, and where it
falls (prefill-carrying steps, decode-only steps), the worst gaps, and the garbage collector's passes
during the run (per generation; for passes over 20 ms, the step they fell in and the most common
types of the objects gen 2 then held). Runs one warm-up pass of the same shape first (fresh prompts
both times).

--schema constrains every request by W2 + schema's JSON schema (issue 18). Then a step's sampling is a
separate launch (`sample_tokens`, after the grammars' bitmask) and gets its own pair of events: the idle
GPU is split into the wait before each sampling (for the bitmask: the grammar thread's accept + fill) and
the wait before each forward (the host's schedule + launch after the previous sampling).
"""

import argparse
import collections
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402
from perf_probe import engine_settings  # noqa: E402  (this folder is on sys.path when run as a script)


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--generate", default="1000:128:128", metavar="N:IN:OUT")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--schema", action="store_true", help="W2 + schema: each request under a JSON schema")
    a = p.parse_args()
    llm = LLM(a.model, load_format="dummy", dtype="bfloat16", **engine_settings(a.set))
    n, input_len, output_len = (int(x) for x in a.generate.split(":"))
    vocab = llm.llm_engine.config.model.vocab_size
    rng = np.random.default_rng(0)
    structured = None
    if a.schema:
        from pagoda.sampling_params import StructuredOutputsParams
        structured = StructuredOutputsParams(json=SCHEMA)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=output_len, ignore_eos=True,
                            structured_outputs=structured)

    def prompts():
        return [{"prompt_token_ids": rng.integers(0, vocab, input_len).tolist()} for _ in range(n)]

    llm.generate(prompts(), params, use_tqdm=False)
    executor = llm.llm_engine.core.executor
    execute, sample = executor.execute_model, executor.sample_tokens
    steps = []  # forwards: (start event, end event, scheduled tokens, decode-only)
    launches = []  # forwards and samplings in launch (= stream) order: (kind, start event, end event)

    def recorded(sched, *args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = execute(sched, *args, **kwargs)
        end.record()
        counts = list(sched.num_scheduled_tokens.values())
        steps.append((start, end, sum(counts), bool(counts) and max(counts) == 1))
        launches.append(("forward", start, end))
        return result

    def recorded_sample(*args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = sample(*args, **kwargs)
        end.record()
        launches.append(("sample", start, end))
        return result

    executor.execute_model = recorded
    executor.sample_tokens = recorded_sample
    pauses = []  # (generation, ms, step index, type histogram of gen 2 for long passes)
    gc_started = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - gc_started[0]) * 1000
        kinds = None
        if ms > 20:
            objs = gc.get_objects(generation=2)
            kinds = (len(objs), collections.Counter(type(o).__name__ for o in objs).most_common(6))
        pauses.append((info["generation"], ms, len(steps), kinds))

    gc.callbacks.append(on_gc)
    batch = prompts()
    torch.cuda.synchronize()
    t = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    gc.callbacks.remove(on_gc)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    gaps = [0.0] + [max(0.0, steps[i - 1][1].elapsed_time(steps[i][0])) for i in range(1, len(steps))]
    busy = [s[0].elapsed_time(s[1]) for s in steps]
    span = steps[0][0].elapsed_time(steps[-1][1])
    print(f"run {a.generate}: {wall:.3f} s wall, {tokens / wall:.0f} output tok/s, {len(steps)} steps; "
          f"GPU span first->last event {span / 1e3:.3f} s; host before first step / after last "
          f"{wall - span / 1e3:.3f} s in total")
    kinds = {"decode-only": [i for i, s in enumerate(steps) if s[3]],
             "with prefill": [i for i, s in enumerate(steps) if not s[3]]}
    print(f"  idle GPU between steps {sum(gaps):.1f} ms in total")
    for kind, idx in kinds.items():
        print(f"  {kind:12} {len(idx):4} steps: gaps {sum(gaps[i] for i in idx):8.1f} ms, "
              f"step span {sum(busy[i] for i in idx):8.1f} ms (mean {np.mean([busy[i] for i in idx]) if idx else 0:.2f})")
    worst = sorted(range(len(steps)), key=lambda i: -gaps[i])[:8]
    print("  worst gaps: " + "; ".join(f"step {i} ({steps[i][2]} tok) {gaps[i]:.2f} ms" for i in worst))
    samples = [i for i, item in enumerate(launches) if item[0] == "sample"]
    if samples:  # structured steps: split the idle GPU by what the next launch is
        idle = {"forward": [], "sample": []}
        span = {"forward": [], "sample": []}
        for i in range(1, len(launches)):
            kind, start, end = launches[i]
            idle[kind].append(max(0.0, launches[i - 1][2].elapsed_time(start)))
            span[kind].append(start.elapsed_time(end))
        for kind in ("sample", "forward"):
            print(f"  idle GPU before each {kind:7}: {sum(idle[kind]):8.1f} ms in all over {len(idle[kind])}, "
                  f"median {np.median(idle[kind]):.2f} ms; its launch start->end on the GPU median "
                  f"{np.median(span[kind]):.2f} ms")
    for gen in (0, 1, 2):
        ms = [p[1] for p in pauses if p[0] == gen]
        if ms:
            print(f"  gc generation {gen}: {len(ms)} passes, {sum(ms):.1f} ms in all, longest {max(ms):.1f} ms")
    for gen, ms, step, kinds in pauses:
        if kinds is not None:
            print(f"  gc pass gen {gen} {ms:.0f} ms in step {step}: gen 2 holds {kinds[0]} objects, {kinds[1]}")


if __name__ == "__main__":
    main()
