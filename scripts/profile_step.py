"""Profile decode steps on the GPU: where a step's time goes (kernels vs. host), with torch.profiler.

    python scripts/profile_step.py MODEL_DIR --out DIR [--batch 256 1] [--generate 1000:128:128] [--prefix-len P]

For each batch size: fill the batch, let every request reach decode, then profile 20 steps.
With `--prefix-len P` every prompt of a batch starts with the same P tokens, computed once
before the batch (run with `--set enable_prefix_caching=true` for W8's decode steps). Prints wall time per step, GPU-busy time per step (sum of kernel times), and the top kernels and
CPU ops; full tables go to DIR/profile_b{B}.txt. `--generate N:IN:OUT` instead profiles one whole
offline run (N fresh random prompts, after a warm-up run of the same shape): GPU busy share of the
run and where the kernel time goes, to DIR/profile_run.txt.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402
from perf_probe import engine_settings  # noqa: E402  (this folder is on sys.path when run as a script)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out", default=".")
    p.add_argument("--batch", type=int, nargs="+", default=[256, 1])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--generate", default=None, metavar="N:IN:OUT", help="profile one whole offline run instead")
    p.add_argument("--prefix-len", type=int, default=0, help="batch mode: a shared prefix of this many tokens")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an engine argument, e.g. max_num_seqs=256 (repeatable)")
    a = p.parse_args()
    settings = {"load_format": "dummy", "dtype": "bfloat16", "max_model_len": 2048, **engine_settings(a.set)}
    llm = LLM(a.model, **settings)
    engine = llm.llm_engine
    rng = np.random.default_rng(0)
    vocab = engine.config.model.vocab_size
    if a.generate:
        profile_run(llm, rng, vocab, a)
        return
    prefix = rng.integers(0, vocab, a.prefix_len).tolist()
    if prefix:  # computed (and cached) once, as the first request of W8 does
        llm.generate([{"prompt_token_ids": prefix + [1]}], SamplingParams(max_tokens=1), use_tqdm=False)
    for batch in a.batch:
        params = SamplingParams(temperature=a.temperature, max_tokens=400, ignore_eos=True)
        for i in range(batch):
            prompt = prefix + rng.integers(0, vocab, 128).tolist()
            engine.add_request(f"b{batch}-{i}", {"prompt_token_ids": prompt}, params)
        for _ in range(30):
            engine.step()
        torch.cuda.synchronize()
        steps = 20
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            for _ in range(steps):
                engine.step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t) / steps
        report(prof, f"batch {batch}", wall, steps, os.path.join(a.out, f"profile_b{batch}.txt"))
        engine.abort_request([f"b{batch}-{i}" for i in range(batch)])


def report(prof, label: str, wall: float, steps: int, path: str) -> None:
    """Wall vs. GPU-busy time per step, the top kernels and host ops; full tables to `path`."""
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_total = sum(e.self_device_time_total for e in kernels) / steps / 1000
    print(f"{label}: wall {wall * 1000:.2f} ms/step, GPU busy {gpu_total:.2f} ms/step ({gpu_total / wall / 10:.0f} %)")
    by_gpu = events.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=80)
    by_cpu = events.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60)
    with open(path, "w") as f:
        f.write(by_gpu + "\n\n" + by_cpu)
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:16]
    for e in top:
        print(f"   {e.self_device_time_total / steps / 1000:7.3f} ms/step  x{e.count / steps:<6.1f} {e.key[:90]}")
    top_cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]
    print("   host (self CPU time per step):")
    for e in top_cpu:
        print(f"   {e.self_cpu_time_total / steps / 1000:7.3f} ms/step  x{e.count / steps:<6.1f} {e.key[:90]}")


def profile_run(llm, rng, vocab: int, a) -> None:
    n, input_len, output_len = (int(x) for x in a.generate.split(":"))
    params = SamplingParams(temperature=a.temperature, top_p=1.0, max_tokens=output_len, ignore_eos=True)

    def prompts():  # fresh ids each call: no prefix-cache hits between the warm-up and the profiled run
        return [{"prompt_token_ids": rng.integers(0, vocab, input_len).tolist()} for _ in range(n)]

    llm.generate(prompts(), params, use_tqdm=False)
    batch = prompts()
    torch.cuda.synchronize()
    counter = {"steps": 0}
    step = llm.llm_engine.step

    def counted_step():
        counter["steps"] += 1
        return step()

    llm.llm_engine.step = counted_step
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(f"run {a.generate}: {wall:.2f} s under the profiler, {tokens / wall:.0f} output tok/s, {counter['steps']} steps")
    report(prof, f"run {a.generate}", wall / counter["steps"], counter["steps"], os.path.join(a.out, "profile_run.txt"))


if __name__ == "__main__":
    main()
