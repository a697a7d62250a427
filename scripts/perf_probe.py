"""Quick GPU performance probe (not the benchmark suite): start-up, batch-1 decode, offline throughput.

    python scripts/perf_probe.py MODEL_DIR [--num-prompts 1000] [--input-len 128] [--output-len 128]

MODEL_DIR is a config-only folder (python -m pagoda.benchmarks.make_model DIR); weights are dummy.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402


class PhaseTimer:
    """Wraps the engine's step phases with timers (CUDA-synchronized around the model runner)."""

    def __init__(self, llm):
        self.totals = {}
        engine = llm.llm_engine
        core = engine.core
        self._wrap(core.scheduler, "schedule", "schedule", sync=False)
        self._wrap(core.executor, "execute_model", "runner (prepare+forward+sample)", sync=True)
        self._wrap(core.scheduler, "update_from_output", "update", sync=False)
        self._wrap(engine.output_processor, "process_outputs", "output processing", sync=False)
        self.steps = 0

    def _wrap(self, obj, name, label, sync):
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            if sync:
                torch.cuda.synchronize()
            t = time.perf_counter()
            result = fn(*args, **kwargs)
            if sync:
                torch.cuda.synchronize()
            self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - t
            if name == "schedule":
                self.steps += 1
            return result

        setattr(obj, name, timed)

    def report(self, wall):
        parts = ", ".join(f"{k} {v / max(self.steps, 1) * 1000:.2f} ms" for k, v in self.totals.items())
        print(f"  per step ({self.steps} steps, {wall / max(self.steps, 1) * 1000:.2f} ms wall): {parts}", flush=True)


def engine_settings(pairs: list[str]) -> dict:
    """KEY=VALUE strings as LLM keywords; values are parsed as JSON where they can be (ints, bools)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--phases", action="store_true", help="also rerun both with a per-phase step breakdown")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an engine argument, e.g. max_num_seqs=256 (repeatable)")
    a = p.parse_args()
    t0 = time.perf_counter()
    llm = LLM(a.model, load_format="dummy", dtype="bfloat16", max_model_len=2048, enforce_eager=a.enforce_eager, **engine_settings(a.set))
    sched = llm.llm_engine.config.scheduler
    print(f"max_num_seqs {sched.max_num_seqs}, max_num_batched_tokens {sched.max_num_batched_tokens}", flush=True)
    print(f"start-up: {time.perf_counter() - t0:.1f} s", flush=True)
    rng = np.random.default_rng(0)
    vocab = llm.llm_engine.config.model.vocab_size

    def prompts(n, length):
        return [{"prompt_token_ids": rng.integers(0, vocab, length).tolist()} for _ in range(n)]

    one = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True)
    llm.generate(prompts(1, 128), SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = llm.generate(prompts(1, 128), one, use_tqdm=False)
    dt = time.perf_counter() - t
    n = len(out[0].outputs[0].token_ids)
    print(f"batch-1 decode: {n} tokens in {dt:.2f} s = {n / dt:.1f} tok/s ({dt / n * 1000:.2f} ms/token incl. prefill)", flush=True)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=a.output_len, ignore_eos=True)
    batch = prompts(a.num_prompts, a.input_len)
    t = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    dt = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(f"throughput {a.num_prompts}x{a.input_len}/{a.output_len}: {dt:.2f} s, {tokens / dt:.0f} output tok/s, "
          f"{(tokens + a.num_prompts * a.input_len) / dt:.0f} total tok/s", flush=True)
    if a.phases:
        timer = PhaseTimer(llm)
        t = time.perf_counter()
        llm.generate(prompts(1, 128), one, use_tqdm=False)
        print("batch-1 decode with phase timing:")
        timer.report(time.perf_counter() - t)
        timer = PhaseTimer(llm)
        t = time.perf_counter()
        llm.generate(batch, params, use_tqdm=False)
        print(f"throughput {a.num_prompts}x{a.input_len}/{a.output_len} with phase timing:")
        timer.report(time.perf_counter() - t)


if __name__ == "__main__":
    main()
