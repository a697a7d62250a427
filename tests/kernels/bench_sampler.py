"""GPU micro-benchmark of the sampler at a decode batch's shape (not collected by pytest; by hand on a GPU):

    python tests/kernels/bench_sampler.py [--rows 1000] [--vocab 128256] [--history 256]

Times Sampler.forward on [rows, vocab] bf16 logits for greedy, W7's sampling-heavy settings
(temperature 0.8, top-p 0.95, top-k 50, repetition penalty 1.1, logprobs 5) and its parts, each on
the fast paths (fused race with the top-p threshold, top-k path) and on the torch path with its sort
(PAGODA_FUSED_SAMPLING=0 and PAGODA_TOP_K_PATH_MAX_K=0, forced here), then the parts (copies, logsumexp,
top-k, the rank pass), and prints
ms per call with the bytes of one read of the logits for scale. Also checks that both paths give
the same logprobs.
"""

from __future__ import annotations

import argparse

import torch
import triton

from pagoda.kernels import tuning
from pagoda.sample import Sampler
from pagoda.sampling_params import SamplingParams
from pagoda.worker.sampling_inputs import build_sampling_metadata

CASES = {
    "greedy": dict(temperature=0.0),
    "T 0.8": dict(temperature=0.8),
    "T + top-k 50": dict(temperature=0.8, top_k=50),
    "T + top-p 0.95": dict(temperature=0.8, top_p=0.95),
    "T + top-k + top-p": dict(temperature=0.8, top_k=50, top_p=0.95),
    "T + rep 1.1": dict(temperature=0.8, repetition_penalty=1.1),
    "T + logprobs 5": dict(temperature=0.8, logprobs=5),
    "W7 (all of them)": dict(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1, logprobs=5),
    "mixed: top-k / top-p": [dict(temperature=0.8, top_k=50), dict(temperature=0.8, top_p=0.95)],  # alternating
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--history", type=int, default=256, help="prompt + output tokens per row (penalties)")
    args = parser.parse_args()
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(args.rows, args.vocab, generator=g, device=device) * 3).to(torch.bfloat16)
    prompts = torch.randint(0, args.vocab, (args.rows, args.history // 2), generator=g, device=device).tolist()
    outputs = torch.randint(0, args.vocab, (args.rows, args.history // 2), generator=g, device=device).tolist()
    sampler = Sampler()
    read_us = logits.numel() * logits.element_size() / 4.0e12 * 1e6
    print(f"rows {args.rows} x vocab {args.vocab} bf16: one read of the logits is {read_us:.0f} us at 4 TB/s")
    print(f"{'case':<20} {'fast paths ms':>14} {'torch/sort ms':>13}")
    default_max_k, default_fused = tuning.SAMPLE_TOP_K_PATH_MAX_K, tuning.FUSED_SAMPLING
    for name, settings in CASES.items():
        kinds = settings if isinstance(settings, list) else [settings]
        meta = build_sampling_metadata([SamplingParams(**kinds[r % len(kinds)]) for r in range(args.rows)],
                                       args.vocab, device,
                                       prompt_token_ids=prompts, output_token_ids=outputs)
        times, results = [], []
        for max_k, fused in ((default_max_k, default_fused), (0, False)):
            tuning.SAMPLE_TOP_K_PATH_MAX_K, tuning.FUSED_SAMPLING = max_k, fused
            results.append(sampler(logits, meta))
            times.append(triton.testing.do_bench(lambda: sampler(logits, meta), warmup=5, rep=40))
        tuning.SAMPLE_TOP_K_PATH_MAX_K, tuning.FUSED_SAMPLING = default_max_k, default_fused
        if results[0].logprobs is not None:
            assert torch.equal(results[0].logprob_token_ids[:, 1:], results[1].logprob_token_ids[:, 1:])
            torch.testing.assert_close(results[0].logprobs[:, 1:], results[1].logprobs[:, 1:])
        print(f"{name:<20} {times[0]:>14.3f} {times[1]:>13.3f}")
    print("parts (ms):")
    from pagoda.kernels.logprob_stats import logprob_stats

    from pagoda.kernels.sample import race_sample
    from pagoda.kernels.top_p import top_p_thresholds

    temp = torch.full((args.rows,), 0.8, device=device)
    top_p, zeros = torch.full_like(temp, 0.95), torch.zeros_like(temp)
    seeds = torch.arange(args.rows, device=device)
    x32 = logits.float()
    token = torch.zeros(args.rows, 1, dtype=torch.int64, device=device)
    parts = {
        "bf16 -> fp32 copy": lambda: logits.float(),
        "logsumexp(fp32 copy)": lambda: torch.logsumexp(logits.float(), -1),
        "logsumexp(fp32)": lambda: torch.logsumexp(x32, -1),
        "torch.topk 5": lambda: torch.topk(logits, 5),
        "torch.topk 50": lambda: torch.topk(logits, 50),
        "rank pass (bf16)": lambda: (logits > logits.gather(1, token)).sum(-1),
        "logprob_stats kernel": lambda: logprob_stats(logits, token[:, 0]),
        "top_p_thresholds kernel (p 0.95)": lambda: top_p_thresholds(logits, temp, top_p, zeros),
        "race_sample with thresholds": lambda: race_sample(logits, temp, seeds, thresholds=zeros - 3.0),
    }
    for name, fn in parts.items():
        print(f"  {name:<32} {triton.testing.do_bench(fn, warmup=5, rep=40):8.3f}")


if __name__ == "__main__":
    main()
