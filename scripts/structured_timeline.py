"""One structured-output decode step as a timeline: what the engine thread, the grammar thread and the GPU do, when.

    python scripts/structured_timeline.py MODEL_DIR [NUM_PROMPTS=1000] [STEP=60] [STEPS=3]

Runs W2 + schema (NUM_PROMPTS random 128-token prompts, 128 output tokens, each under bench's W2 schema; dummy bf16
weights) after a warm-up of 8, with timers around the engine's calls on both threads (host clock) and CUDA events
around each forward launch and each sampling launch (GPU clock, put on the host clock by one event recorded on an
idle GPU). Prints, for STEPS engine steps from STEP on, every interval in start order, in ms from the first one's
start: `host engine` / `host grammar` (the call's wall time on that thread), `gpu` (from the launch's first event to
its last, as the GPU reached them). Used for issue 18 (docs/benchmarks.md, session 18).
"""
import collections
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402
from pagoda.core import scheduler as scheduler_mod  # noqa: E402
from pagoda.engine import core as core_mod, structured_requests as sr  # noqa: E402
from pagoda.sampling_params import StructuredOutputsParams  # noqa: E402
from pagoda.structured_output.request_grammar import RequestGrammar  # noqa: E402
from pagoda.worker import step_output  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"]}
HOST = []  # (thread label, name, start, end, engine step index)
GPU = []  # (name, start event, end event, engine step index)
STEP = [0]


def _thread() -> str:
    return "engine" if threading.current_thread() is threading.main_thread() else "grammar"


def _timed(owner, name: str, label: str | None = None, static: bool = False) -> None:
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            HOST.append((_thread(), label or name, start, time.perf_counter(), STEP[0]))
    setattr(owner, name, staticmethod(timed) if static else timed)


def _gpu_timed(obj, name: str, label: str) -> None:
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            end.record()
            HOST.append(("engine", f"{label} (launch)", t, time.perf_counter(), STEP[0]))
            GPU.append((label, start, end, STEP[0]))
    setattr(obj, name, timed)


def main() -> None:
    model = sys.argv[1]
    num_prompts = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    llm = LLM(model=model, load_format="dummy", dtype="bfloat16")
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(1000, 30000) for _ in range(128)]} for _ in range(num_prompts)]
    params = SamplingParams(max_tokens=128, ignore_eos=True, temperature=1.0,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA))
    llm.generate(prompts[:8], params)
    engine = llm.llm_engine
    executor = engine.core.executor
    original_step = core_mod.EngineCore.step

    def step(self):
        STEP[0] += 1
        start = time.perf_counter()
        try:
            return original_step(self)
        finally:
            HOST.append(("engine", "EngineCore.step", start, time.perf_counter(), STEP[0]))
    core_mod.EngineCore.step = step
    _timed(scheduler_mod.Scheduler, "schedule")
    _timed(scheduler_mod.Scheduler, "update_from_output")
    _timed(step_output.StepOutput, "get", "StepOutput.get (wait for the step's tokens)")
    _timed(core_mod.EngineCore, "_sample_waiting")
    _timed(sr.StructuredRequests, "fill")
    _timed(RequestGrammar, "accept_batch", "accept_batch", static=True)
    _timed(sr.StructuredRequests, "accept", "StructuredRequests.accept (wait + accept + fill)")
    _gpu_timed(executor, "execute_model", "forward")
    _gpu_timed(executor, "sample_tokens", "sample")
    original_tokens = step_output.StepOutput.sampled_tokens

    def sampled_tokens(self):
        start = time.perf_counter()
        try:
            return original_tokens(self)
        finally:
            HOST.append((_thread(), "wait for the tokens", start, time.perf_counter(), STEP[0]))
    step_output.StepOutput.sampled_tokens = sampled_tokens

    torch.cuda.synchronize()
    anchor = torch.cuda.Event(enable_timing=True)
    anchor.record()
    anchor_host = time.perf_counter()
    anchor.synchronize()
    llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()

    def on_host(event) -> float:
        return anchor_host + anchor.elapsed_time(event) / 1e3

    rows = [(f"host {thread}", name, start, end) for thread, name, start, end, s in HOST if first <= s < first + count]
    rows += [("gpu", name, on_host(a), on_host(b)) for name, a, b, s in GPU if first <= s < first + count]
    rows.sort(key=lambda row: row[2])
    origin = rows[0][2]
    print(f"engine steps {first}..{first + count - 1} of {STEP[0]}; ms from the first interval's start")
    for where, name, start, end in rows:
        print(f"  {where:12} {1e3 * (start - origin):8.2f} -> {1e3 * (end - origin):8.2f}  ({1e3 * (end - start):6.2f})  {name}")
    idle, last_end = collections.Counter(), None
    for name, a, b, s in sorted(GPU, key=lambda g: on_host(g[1])):
        if last_end is not None and 10 <= s:
            idle[name] += max(0.0, on_host(a) - last_end)
        last_end = on_host(b)
    print("GPU idle before each launch kind, from step 10 on (ms in all): "
          + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in idle.items()))


if __name__ == "__main__":
    main()
