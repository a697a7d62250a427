"""Host cost of an engine step without a GPU: a tiny model on CPU at a large batch, with timers per phase.

    python scripts/host_probe.py [--num-prompts 1000] [--input-len 128] [--output-len 64]

The forward pass and the sampler are timed separately; what is left of the wall time is the host's
bookkeeping (scheduling, input preparation, output processing), which on a GPU runs while the device
works and must stay below a step's device time. Prints per-step milliseconds for each phase, and the
garbage collector's passes during the run (count, total and longest pause per generation).
"""

import argparse
import gc
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402
from pagoda.tiny_models import make_checkpoint, train_tokenizer  # noqa: E402


def timed(obj, name: str, totals: dict, calls: dict) -> None:
    fn = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started

    setattr(obj, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="pagoda-host-probe-")
    folder = make_checkpoint("LlamaForCausalLM", os.path.join(work, "model"), train_tokenizer(os.path.join(work, "tok")))
    llm = LLM(folder, device="cpu", max_num_seqs=1024, max_num_batched_tokens=16384, max_model_len=512,
              kv_cache_memory_bytes=1 << 30)
    engine = llm.llm_engine
    runner = engine.core.executor.worker.runner
    rng = np.random.default_rng(0)
    vocab = engine.config.model.vocab_size

    def prompts(n, length):
        return [{"prompt_token_ids": rng.integers(0, vocab, length).tolist()} for _ in range(n)]

    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=a.output_len, ignore_eos=True)
    llm.generate(prompts(50, 16), params, use_tqdm=False)  # warm-up
    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    for obj, name in ((engine.core.scheduler, "schedule"), (engine.core.scheduler, "update_from_output"),
                      (engine.output_processor, "process_outputs"), (runner, "execute_model"), (runner, "_forward"),
                      (runner.sampler, "forward")):
        timed(obj, name, totals, calls)
    batch = prompts(a.num_prompts, a.input_len)
    pauses: list[tuple[int, float]] = []  # (generation, seconds) of each garbage-collector pass in the run
    gc_started = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(on_gc)
    started = time.perf_counter()
    llm.generate(batch, params, use_tqdm=False)
    wall = time.perf_counter() - started
    gc.callbacks.remove(on_gc)
    steps = calls["schedule"]

    def per_step(key: str) -> float:
        return totals.get(key, 0.0) * 1000 / steps

    host = wall * 1000 / steps - per_step("_forward") - per_step("forward")
    print(f"{a.num_prompts} x {a.input_len}/{a.output_len}, {steps} steps: wall {wall / steps * 1000:.2f} ms/step = "
          f"forward {per_step('_forward'):.2f} + sampler {per_step('forward'):.2f} + host {host:.2f}")
    for key in ("schedule", "update_from_output", "process_outputs"):
        print(f"  {key}: {per_step(key):.2f} ms/step")
    runner_host = per_step("execute_model") - per_step("_forward") - per_step("forward")
    print(f"  runner host (execute_model - forward - sampler): {runner_host:.2f} ms/step")
    for gen in (0, 1, 2):
        times = [t for g, t in pauses if g == gen]
        if times:
            print(f"  gc generation {gen}: {len(times)} passes, {sum(times) * 1000:.1f} ms in all, "
                  f"longest {max(times) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
