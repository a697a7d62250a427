"""Where a batch-1 request's fixed cost goes: prefill of a short prompt vs. the host (GPU machine).

    python scripts/prefill_probe.py MODEL_DIR [--out DIR] [--input-len 128]

Times `LLM.generate` of one prompt (fresh random ids each call, so no prefix-cache hits) for 1, 2, 8
and 32 output tokens (median and min of 7 calls), prints each `engine.step`'s host time for one
2-token call, then profiles another: the GPU kernel time and count, a chrome trace and tables by GPU
and host time to DIR (prefill_trace.json, prefill_tables.txt).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out", default=".")
    p.add_argument("--input-len", type=int, default=128)
    a = p.parse_args()
    llm = LLM(a.model, load_format="dummy", dtype="bfloat16", max_num_seqs=8)
    engine = llm.llm_engine
    rng = np.random.default_rng(0)
    vocab = engine.config.model.vocab_size

    def generate(max_tokens: int) -> None:
        params = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=max_tokens)
        llm.generate([{"prompt_token_ids": rng.integers(0, vocab, a.input_len).tolist()}], params, use_tqdm=False)

    for _ in range(3):
        generate(2)
    for max_tokens in (1, 2, 8, 32):
        times = []
        for _ in range(7):
            start = time.perf_counter()
            generate(max_tokens)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"generate {a.input_len} in, {max_tokens:3d} out: median {statistics.median(times) * 1e3:7.2f} ms, "
              f"min {min(times) * 1e3:7.2f} ms", flush=True)

    step = engine.step

    def timed_step():
        start = time.perf_counter()
        result = step()
        print(f"  engine.step: {(time.perf_counter() - start) * 1e3:.2f} ms on the host", flush=True)
        return result

    engine.step = timed_step
    generate(2)
    engine.step = step
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        generate(2)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"profiled generate({a.input_len} in, 2 out): {wall * 1e3:.2f} ms; GPU kernels "
          f"{sum(e.self_device_time_total for e in kernels) / 1e3:.2f} ms in {sum(e.count for e in kernels)} launches")
    os.makedirs(a.out, exist_ok=True)
    prof.export_chrome_trace(os.path.join(a.out, "prefill_trace.json"))
    with open(os.path.join(a.out, "prefill_tables.txt"), "w") as f:
        f.write(events.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90) + "\n\n")
        f.write(events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=90))


if __name__ == "__main__":
    main()
