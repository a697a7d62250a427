"""Profile speculative verify steps on the GPU at acceptance 1 (oracle drafts): where a step's time goes.

    python scripts/profile_spec.py MODEL_DIR --out DIR [--k 4] [--batch 1] [--output-len 128]

Runs a batch once without drafts (recording its tokens), then profiles a run whose drafts replay them
(spec_decode/oracle_proposer.py). Prints wall time per verify step, GPU-busy time per step (sum of
kernel times) and the top CUDA kernels and CPU ops; the full tables go to DIR/profile_spec.txt.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402
from pagoda.spec_decode.oracle_proposer import OracleProposer  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out", default=".")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=2048)
    a = p.parse_args()
    llm = LLM(a.model, load_format="dummy", dtype="bfloat16", max_model_len=a.max_model_len,
              speculative_config={"method": "ngram", "num_speculative_tokens": a.k})
    spec = llm.llm_engine.core.executor.worker.runner.spec
    vocab = llm.llm_engine.config.model.vocab_size
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0.0, max_tokens=a.output_len, ignore_eos=True)

    def run(prompts, record):
        spec.proposer = OracleProposer(a.k)
        outs = llm.generate([{"prompt_token_ids": q} for q in prompts], params, use_tqdm=False)
        spec.proposer = OracleProposer(a.k, [list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in outs],
                                       key_len=16)
        before = llm.llm_engine.stats()["spec_decode_num_drafts"]
        start = time.perf_counter()
        if record is None:
            llm.generate([{"prompt_token_ids": q} for q in prompts], params, use_tqdm=False)
        else:
            with record:
                llm.generate([{"prompt_token_ids": q} for q in prompts], params, use_tqdm=False)
        wall = time.perf_counter() - start
        steps = (llm.llm_engine.stats()["spec_decode_num_drafts"] - before) / len(prompts)
        return wall, steps

    prompts = lambda: [rng.integers(100, vocab - 100, 128).tolist() for _ in range(a.batch)]  # noqa: E731
    run(prompts(), None)  # warm-up
    wall, steps = run(prompts(), None)
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    _, psteps = run(prompts(), prof)
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    print(f"batch {a.batch}, k {a.k}: {wall / steps * 1e3:.2f} ms per verify step (unprofiled, {steps:.0f} steps), "
          f"GPU busy {gpu_us / psteps / 1e3:.2f} ms per step (profiled run)")
    by_gpu = events.table(sort_by="self_device_time_total", row_limit=25)
    by_cpu = events.table(sort_by="self_cpu_time_total", row_limit=40)
    print(by_gpu[:6000])
    print(by_cpu[:8000])
    with open(os.path.join(a.out, "profile_spec.txt"), "w") as f:
        f.write(by_gpu + "\n\n" + by_cpu)


if __name__ == "__main__":
    main()
