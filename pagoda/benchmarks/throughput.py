"""`pagoda bench throughput`: offline throughput of a random workload (vLLM's benchmark_throughput).

Invariants:
- The timed region covers generation only (engine start-up and model loading are outside it).
- Output tokens are counted from what the engine returned (`RequestOutput.outputs[*].token_ids`)
  for the pagoda backend; the hf backend reports the requested lengths (it cannot stop early).
- The printed lines keep vLLM's wording so existing tooling parses them.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pagoda.benchmarks import common
from pagoda.benchmarks import speed_of_light as sol
from pagoda.benchmarks.datasets import (SampleRequest, add_dataset_args, check_mm_flags, random_requests,
                                        vocab_and_specials)
from pagoda.benchmarks.hardware import add_sol_args


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    from pagoda.engine_args import EngineArgs

    add_dataset_args(parser)
    parser.add_argument("--n", type=int, default=1, help="Completions per prompt.")
    parser.add_argument("--backend", default="pagoda", choices=["pagoda", "hf"], help="Engine to measure: pagoda, or the transformers baseline.")
    parser.add_argument("--hf-max-batch-size", type=int, default=64, help="Static batch size of the hf backend.")
    parser.add_argument("--hf-continuous-batching", action="store_true", help="hf backend: use transformers' generate_batch instead of static batches.")
    parser.add_argument("--output-json", default=None, help="Write the results to this JSON file.")
    parser.add_argument("--structured-outputs", default=None, metavar="JSON",
                        help="Constrain every request: a JSON object of StructuredOutputsParams fields, e.g. "
                             "'{\"json\": {\"type\": \"object\"}}' (pagoda backend). Also times the first "
                             "structured request (grammar library, tokenizer tables, compile) and one more compile.")
    add_sol_args(parser)
    EngineArgs.add_cli_args(parser)


def make_requests(args: argparse.Namespace, path: str) -> list[SampleRequest]:
    vocab, specials = vocab_and_specials(path, getattr(args, "tokenizer", None), getattr(args, "trust_remote_code", False))
    return random_requests(
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        vocab_size=vocab,
        range_ratio=args.random_range_ratio,
        prefix_len=args.prefix_len,
        seed=args.seed if args.seed is not None else 0,
        excluded_ids=specials,
    )


def run_pagoda(args: argparse.Namespace, requests: list[SampleRequest]) -> tuple[float, int]:
    """(elapsed seconds of generate, output tokens returned)."""
    from pagoda import LLM, SamplingParams

    llm = LLM(**common.engine_kwargs(args))
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    structured = _structured_outputs(args, llm, prompts[0]) if args.structured_outputs else None
    params = [
        SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=r.expected_output_len,
                       structured_outputs=structured)
        for r in requests
    ]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(c.token_ids) for o in outputs for c in o.outputs)


def _structured_outputs(args: argparse.Namespace, llm, prompt: dict):
    """The constraint of --structured-outputs, after timing its first request and a second compile."""
    import json

    from pagoda import SamplingParams
    from pagoda.sampling_params import StructuredOutputsParams

    fields = json.loads(args.structured_outputs)
    for label, extra in (("first structured request (library, tokenizer tables, compile)", None),
                         ("a request with a new schema (compile)", {"pagoda_bench": {"type": "boolean"}})):
        constraint = dict(fields)
        if extra is not None and isinstance(constraint.get("json"), dict):  # a new schema: one more compile
            schema = dict(constraint["json"])
            schema["properties"] = {**schema.get("properties", {}), **extra}
            constraint["json"] = schema
        started = time.perf_counter()
        llm.generate([prompt], SamplingParams(max_tokens=1, structured_outputs=StructuredOutputsParams(**constraint)),
                     use_tqdm=False)
        print(f"Structured output: {label}: {time.perf_counter() - started:.3f} s")
    return StructuredOutputsParams(**fields)


def run_hf(args: argparse.Namespace, path: str, requests: list[SampleRequest]) -> tuple[float, int]:
    from pagoda.benchmarks import hf_backend

    model, device = hf_backend.load_model(path, args.dtype, args.device, args.trust_remote_code)
    if args.hf_continuous_batching:
        if args.n != 1:
            raise SystemExit("error: --hf-continuous-batching supports --n 1 only")
        return hf_backend.run_continuous(model, device, requests)
    return hf_backend.run_throughput(model, device, requests, args.hf_max_batch_size, args.n)


def report(elapsed: float, num_requests: int, prompt_tokens: int, output_tokens: int) -> dict[str, Any]:
    total = prompt_tokens + output_tokens
    print(
        f"Throughput: {num_requests / elapsed:.2f} requests/s, {total / elapsed:.2f} total tokens/s, "
        f"{output_tokens / elapsed:.2f} output tokens/s"
    )
    print(f"Total num prompt tokens:  {prompt_tokens}")
    print(f"Total num output tokens:  {output_tokens}")
    return {
        "elapsed_time": elapsed,
        "num_requests": num_requests,
        "total_num_tokens": total,
        "total_num_prompt_tokens": prompt_tokens,
        "total_num_output_tokens": output_tokens,
        "requests_per_second": num_requests / elapsed,
        "tokens_per_second": total / elapsed,
        "output_tokens_per_second": output_tokens / elapsed,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.n < 1:
        raise SystemExit(f"error: --n must be >= 1, got {args.n}")
    check_mm_flags(args)
    path = common.model_path(args)
    if args.dataset_name == "random-mm":
        if args.n != 1 or args.structured_outputs or args.hf_continuous_batching:
            raise SystemExit("error: --dataset-name random-mm supports --n 1 without --structured-outputs and "
                             "--hf-continuous-batching")
        from pagoda.benchmarks import mm_throughput

        result = {**common.run_header(), **mm_throughput.main(args, path)}
        common.write_json(args.output_json, result)
        return result
    requests = make_requests(args, path)
    if args.backend == "pagoda":
        elapsed, output_tokens = run_pagoda(args, requests)
    else:
        elapsed, output_tokens = run_hf(args, path, requests)
    prompt_tokens = sum(r.prompt_len for r in requests)
    result = {**common.run_header(), "backend": args.backend, **report(elapsed, len(requests), prompt_tokens, output_tokens)}
    if not args.no_sol:
        work = sol.workload_from_lengths([r.prompt_len for r in requests], [r.expected_output_len for r in requests], args.n)
        result.update(common.run_sol(args, path, work, elapsed))
    common.write_json(args.output_json, result)
    return result
