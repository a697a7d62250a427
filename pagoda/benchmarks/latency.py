"""`pagoda bench latency`: end-to-end time of one batch (vLLM's benchmark_latency).

Invariants:
- Every iteration (warm-up included) gets fresh random prompts, so the prefix cache never turns a
  later iteration's prefill into a cache hit; the prompts differ from each other too.
- The timed region is one `generate` call over the whole batch; engine start-up is outside it.
- `--spec-oracle` (with speculative decoding configured) measures the speculative machinery at
  acceptance 1: each iteration first runs its batch untimed without drafts, then replays those tokens
  as drafts (spec_decode/oracle_proposer.py) in the timed run. Sampling is greedy, so the timed run's
  tokens equal the untimed run's and every draft is accepted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from pagoda.benchmarks import common
from pagoda.benchmarks import speed_of_light as sol
from pagoda.benchmarks.datasets import random_requests, vocab_and_specials
from pagoda.benchmarks.hardware import add_sol_args

PERCENTILES = (10, 25, 50, 75, 90, 99)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    from pagoda.engine_args import EngineArgs

    parser.add_argument("--batch-size", type=int, default=8, help="Requests in the batch.")
    parser.add_argument("--input-len", type=int, default=32, help="Prompt length in tokens.")
    parser.add_argument("--output-len", type=int, default=128, help="Tokens to generate per request.")
    parser.add_argument("--n", type=int, default=1, help="Completions per prompt.")
    parser.add_argument("--num-iters-warmup", type=int, default=10, help="Untimed iterations first.")
    parser.add_argument("--num-iters", type=int, default=30, help="Timed iterations.")
    parser.add_argument("--backend", default="pagoda", choices=["pagoda", "hf"], help="Engine to measure.")
    parser.add_argument("--output-json", default=None, help="Write the results to this JSON file.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (0: greedy).")
    parser.add_argument("--spec-oracle", action="store_true",
                        help="Benchmark only: with --speculative-config, drafts replay an untimed run's tokens "
                             "(acceptance 1; greedy).")
    add_sol_args(parser)
    EngineArgs.add_cli_args(parser)


def _runner(args: argparse.Namespace, path: str) -> Callable[[list[list[int]]], None]:
    """A function that generates `output_len` tokens for each prompt of a batch."""
    if args.backend == "hf":
        if args.spec_oracle:
            raise SystemExit("error: --spec-oracle measures Pagoda's speculative decoding; not with --backend hf")
        from pagoda.benchmarks import hf_backend

        model, device = hf_backend.load_model(path, args.dtype, args.device, args.trust_remote_code)

        def run_hf(prompts: list[list[int]]) -> None:
            import torch

            hf_backend.generate_static(model, device, [p for p in prompts for _ in range(args.n)], args.output_len)
            if device == "cuda":
                torch.cuda.synchronize()

        return run_hf

    from pagoda import LLM, SamplingParams

    llm = _oracle_llm(args) if args.spec_oracle else LLM(**common.engine_kwargs(args))
    temperature = 0.0 if args.spec_oracle else args.temperature
    params = SamplingParams(n=args.n, temperature=temperature, top_p=1.0, ignore_eos=True, max_tokens=args.output_len)

    def run_pagoda(prompts: list[list[int]]) -> None:
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    run_pagoda.stats = llm.llm_engine.stats  # type: ignore[attr-defined]
    if not args.spec_oracle:
        return run_pagoda
    oracle = llm.llm_engine.core.executor.worker.runner.spec.device_proposer

    def prepare_oracle(prompts: list[list[int]]) -> None:
        oracle.record([], key_len=1)  # drafts nothing useful: the untimed run decodes as without drafts
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        oracle.record([list(o.prompt_token_ids) + list(c.token_ids) for o in outs for c in o.outputs],
                      key_len=min(16, min(len(p) for p in prompts)))

    run_pagoda.prepare = prepare_oracle  # type: ignore[attr-defined]
    return run_pagoda


def _oracle_llm(args: argparse.Namespace):
    """An LLM whose speculative decoding drafts with the benchmark-only oracle, on the device (so async
    scheduling stays on unless --no-async-scheduling), whatever method --speculative-config names."""
    from pagoda import LLM
    from pagoda.engine.llm_engine import LLMEngine
    from pagoda.engine_args import EngineArgs

    engine_args = EngineArgs.from_kwargs(**common.engine_kwargs(args))
    config = engine_args.create_config()
    if config.speculative is None:
        raise SystemExit("error: --spec-oracle needs speculative decoding (--speculative-config ...)")
    config.speculative.oracle = True
    config.scheduler.async_scheduling = engine_args.async_scheduling
    return LLM.from_engine(engine_args, LLMEngine(config))


def summarize(latencies: list[float], output_len: int) -> dict[str, Any]:
    arr = np.asarray(latencies, dtype=float)
    pct = {str(p): float(np.percentile(arr, p)) for p in PERCENTILES}
    return {
        "avg_latency": float(arr.mean()),
        "latencies": arr.tolist(),
        "percentiles": pct,
        "avg_time_per_output_token": float(arr.mean()) / output_len,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("batch_size", "input_len", "output_len", "n", "num_iters"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    path = common.model_path(args)
    vocab, specials = vocab_and_specials(path, getattr(args, "tokenizer", None), getattr(args, "trust_remote_code", False))
    seed = args.seed if args.seed is not None else 0

    def batch(i: int) -> list[list[int]]:
        reqs = random_requests(args.batch_size, args.input_len, args.output_len, vocab, seed=seed * 100003 + i, excluded_ids=specials)
        return [r.prompt_token_ids for r in reqs]

    run = _runner(args, path)
    prepare = getattr(run, "prepare", None)  # untimed work before an iteration (--spec-oracle)
    spec_stats: dict[str, Any] = {}  # speculative decoding's counters over the measured runs (not `prepare`'s)

    def measured(prompts: list[list[int]]) -> None:
        before = run.stats() if hasattr(run, "stats") else {}
        run(prompts)
        after = run.stats() if hasattr(run, "stats") else {}
        for key, value in after.items():
            if key.startswith("spec_decode"):
                if isinstance(value, list):
                    delta = [a - b for a, b in zip(value, before.get(key, [0] * len(value)))]
                    spec_stats[key] = [s + d for s, d in zip(spec_stats.get(key, [0] * len(delta)), delta)]
                else:
                    spec_stats[key] = spec_stats.get(key, 0) + value - before.get(key, 0)

    for i in tqdm(range(args.num_iters_warmup), desc="warm-up iterations"):
        if prepare is not None:
            prepare(batch(i))
        measured(batch(i))
    latencies = []
    for i in tqdm(range(args.num_iters), desc="timed iterations"):
        prompts = batch(args.num_iters_warmup + i)
        if prepare is not None:
            prepare(prompts)
        start = time.perf_counter()
        measured(prompts)
        latencies.append(time.perf_counter() - start)
    result = {**common.run_header(), "backend": args.backend, **summarize(latencies, args.output_len)}
    if "spec_decode_num_drafts" in spec_stats:  # over warm-up and timed iterations
        result["spec_decode"] = spec_stats
        print(f"Speculative decoding{' (oracle)' if prepare is not None else ''}: {result['spec_decode']}")
    print(f"Avg latency: {result['avg_latency']} seconds")
    for p, v in result["percentiles"].items():
        print(f"{p}% percentile latency: {v} seconds")
    print(f"Avg time per output token: {result['avg_time_per_output_token'] * 1e3:.3f} ms")
    if not args.no_sol:
        work = sol.workload_from_lengths([args.input_len] * args.batch_size, [args.output_len] * args.batch_size, args.n)
        result.update(common.run_sol(args, path, work, result["avg_latency"], stages_overlap=False))
        if "speed_of_light_s" in result:
            print(f"Speed-of-light time per output token: {result['speed_of_light_s'] / args.output_len * 1e3:.3f} ms")
    common.write_json(args.output_json, result)
    return result
