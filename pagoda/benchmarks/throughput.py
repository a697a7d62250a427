"""`pagoda bench throughput`: offline throughput of a random workload (vLLM's benchmark_throughput).

Invariants:
- The timed region covers generation only (engine start-up and model loading are outside it).
- Output tokens are counted from what the engine returned (`RequestOutput.outputs[*].token_ids`)
  for the pagoda backend; the hf backend reports the requested lengths (it cannot stop early).
- The printed lines keep vLLM's wording so existing tooling parses them.
- Sampling: without sampling flags pagoda samples at temperature 1.0, top-p 1.0 (vLLM's benchmark) and
  the hf backend decodes greedily; `--temperature/--top-p/--top-k/--repetition-penalty/--logprobs`
  (not in vLLM's `bench throughput`) set the same parameters on both backends, checked before anything
  loads. They do not enter the speed-of-light (it leaves sampling out, see `main`).
- `--prefix-len` > 0: the speed-of-light computes and holds the shared prefix once, and reads it once
  per step (cascade attention, the ideal of speed_of_light.simulate); the JSON also has the bound
  with the prefix read by every request (`speed_of_light_prefix_per_request_s`).
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
    g = parser.add_argument_group("sampling (Pagoda's additions; default: temperature 1.0, top-p 1.0 for pagoda, "
                                  "greedy for the hf backend)")
    g.add_argument("--temperature", type=float, default=None, help="Sampling temperature (0: greedy).")
    g.add_argument("--top-p", type=float, default=None, help="Nucleus sampling: keep the smallest set of tokens of this much probability, in (0, 1].")
    g.add_argument("--top-k", type=int, default=None, help="Keep the k most likely tokens (-1: all).")
    g.add_argument("--repetition-penalty", type=float, default=None, help="Penalise tokens already in the prompt or output (> 0; 1.0: off).")
    g.add_argument("--logprobs", type=int, default=None, help="Return this many top log-probabilities per output token (>= 0).")
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


SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "repetition_penalty", "logprobs")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags given (SamplingParams field -> value); exits with a clear error on a bad one."""
    from pagoda import SamplingParams

    given = {name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name, None) is not None}
    flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items())
    if given.get("logprobs") is not None and given["logprobs"] < 0:
        raise SystemExit(f"error: --logprobs must be >= 0, got {given['logprobs']}")
    if given.get("logprobs") is not None and given["logprobs"] > getattr(args, "max_logprobs", 20):
        raise SystemExit(f"error: --logprobs {given['logprobs']} is more than --max-logprobs {getattr(args, 'max_logprobs', 20)}")
    try:
        SamplingParams(n=args.n, **given)
    except ValueError as exc:
        raise SystemExit(f"error: invalid sampling flags ({flags}): {exc}") from None
    return given


def run_pagoda(args: argparse.Namespace, requests: list[SampleRequest]) -> tuple[float, int]:
    """(elapsed seconds of generate, output tokens returned)."""
    from pagoda import LLM, SamplingParams

    llm = LLM(**common.engine_kwargs(args))
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    structured = _structured_outputs(args, llm, prompts[0]) if args.structured_outputs else None
    sampling = {"temperature": 1.0, "top_p": 1.0, **sampling_overrides(args)}
    params = [
        SamplingParams(n=args.n, ignore_eos=True, max_tokens=r.expected_output_len, structured_outputs=structured,
                       **sampling)
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
        if args.n != 1 or sampling_overrides(args):
            raise SystemExit("error: --hf-continuous-batching supports --n 1 without sampling flags only")
        return hf_backend.run_continuous(model, device, requests)
    return hf_backend.run_throughput(model, device, requests, args.hf_max_batch_size, args.n, sampling_overrides(args))


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
    sampling = sampling_overrides(args)  # refuse bad values before anything loads
    path = common.model_path(args)
    if args.dataset_name == "random-mm":
        if args.n != 1 or args.structured_outputs or args.hf_continuous_batching or sampling:
            raise SystemExit("error: --dataset-name random-mm supports --n 1 without --structured-outputs, "
                             "--hf-continuous-batching and sampling flags")
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
    if sampling:
        result["sampling"] = sampling
    if not args.no_sol:
        # The bound is the same with or without the sampling flags: it leaves sampling out (as for every
        # workload). Top-k/top-p/penalties/logprobs are a few passes over each sampled row's logits, O(vocab)
        # per token against the GEMMs' 2·params FLOPs per token (128k against 16G for Llama-3-8B); their
        # traffic, ~0.5 GB of fp32 logits per pass for a 1000-request decode step, is what a sampling-heavy
        # run may spend over its greedy twin (suite W7 against W2: the target is within 10 %).
        prefix = args.prefix_len if args.prefix_len > 0 else 0
        work = sol.workload_from_lengths([r.prompt_len for r in requests], [r.expected_output_len for r in requests], args.n,
                                         shared_prefix=prefix)
        result.update(common.run_sol(args, path, work, elapsed, shared_prefix=prefix))
    common.write_json(args.output_json, result)
    return result
