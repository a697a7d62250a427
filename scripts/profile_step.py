"""Profile decode steps on the GPU: where a step's time goes (kernels vs. host), with torch.profiler.

    python scripts/profile_step.py MODEL_DIR --out DIR [--batch 256 1]

For each batch size: fill the batch, let every request reach decode, then profile 20 steps.
Prints wall time per step, GPU-busy time per step (sum of kernel times), and the top kernels and
CPU ops; full tables go to DIR/profile_b{B}.txt.
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out", default=".")
    p.add_argument("--batch", type=int, nargs="+", default=[256, 1])
    p.add_argument("--temperature", type=float, default=1.0)
    a = p.parse_args()
    llm = LLM(a.model, load_format="dummy", dtype="bfloat16", max_model_len=2048)
    engine = llm.llm_engine
    rng = np.random.default_rng(0)
    vocab = engine.config.model.vocab_size
    for batch in a.batch:
        params = SamplingParams(temperature=a.temperature, max_tokens=400, ignore_eos=True)
        for i in range(batch):
            engine.add_request(f"b{batch}-{i}", {"prompt_token_ids": rng.integers(0, vocab, 128).tolist()}, params)
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
        events = prof.key_averages()
        gpu_total = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / steps / 1000
        print(f"batch {batch}: wall {wall * 1000:.2f} ms/step, GPU busy {gpu_total:.2f} ms/step ({gpu_total / wall / 10:.0f} %)")
        by_gpu = events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60)
        by_cpu = events.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60)
        with open(os.path.join(a.out, f"profile_b{batch}.txt"), "w") as f:
            f.write(by_gpu + "\n\n" + by_cpu)
        top = sorted((e for e in events if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total)[:12]
        for e in top:
            print(f"   {e.self_device_time_total / steps / 1000:7.3f} ms/step  x{e.count // steps:<4} {e.key[:90]}")
        top_cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
        print("   host (self CPU time per step):")
        for e in top_cpu:
            print(f"   {e.self_cpu_time_total / steps / 1000:7.3f} ms/step  x{e.count // steps:<4} {e.key[:90]}")
        engine.abort_request([f"b{batch}-{i}" for i in range(batch)])


if __name__ == "__main__":
    main()
