"""`pagoda bench serve`: load an OpenAI-compatible server and measure it (vLLM's benchmark_serving).

Invariants:
- Requests start on a Poisson (gamma, with `--burstiness` as shape) arrival schedule drawn from a
  seeded RNG; `--request-rate inf` sends all at once; `--max-concurrency` caps requests in flight.
- Every request streams; the client timestamps each SSE chunk: TTFT at the first chunk with text,
  ITL between later chunks, E2E at the end. Output tokens come from the stream's `usage` when the
  server sends it, else from the tokenizer over the text, else one per content chunk.
- The benchmark never hides a failure: failed requests are counted and their first error printed.
- The HTTP client is httpx (httpx2 where only that is installed); connections are not pooled away:
  the pool has no size limit, so only `--max-concurrency` limits concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from pagoda.benchmarks import common
from pagoda.benchmarks.datasets import (SampleRequest, add_dataset_args, check_mm_flags, random_requests,
                                        vocab_and_specials)
from pagoda.benchmarks.serve_metrics import METRICS, RequestResult, calculate_metrics, format_result_block, plot_sweep

try:
    import httpx
except ImportError:  # dev machines ship httpx2 (with the openai client) only
    import httpx2 as httpx  # type: ignore[no-redef]


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=None, help="Server URL, e.g. http://127.0.0.1:8000 (overrides --host/--port).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--endpoint", default="/v1/completions", help="/v1/completions (token-id or text prompts) or /v1/chat/completions (text).")
    parser.add_argument("--model", default=None, help="Model name to send; default: the first of /v1/models.")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer (or model) folder: vocabulary, special ids, text prompts and token counts.")
    parser.add_argument("--vocab-size", type=int, default=None, help="Vocabulary for random prompts when no --tokenizer is given.")
    parser.add_argument("--prompt-format", default="token_ids", choices=["token_ids", "text"], help="Send prompts as token-id lists or as decoded text.")
    add_dataset_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="Requests per second (Poisson arrivals); inf sends all at once.")
    parser.add_argument("--burstiness", type=float, default=1.0, help="Gamma shape of inter-arrival times: 1 is Poisson, <1 burstier, >1 steadier.")
    parser.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight at once.")
    parser.add_argument("--ignore-eos", action="store_true", help="Send ignore_eos so every request generates its full length.")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--percentile-metrics", default=",".join(METRICS), help="Metrics to report, of ttft,tpot,itl,e2el.")
    parser.add_argument("--metric-percentiles", default="99", help="Comma-separated percentiles to report, e.g. 50,90,99.")
    parser.add_argument("--sweep", default=None, help="Run several times: 'request-rate=1,4,16,inf' or 'max-concurrency=1,8,64'; draws a PNG.")
    parser.add_argument("--save-result", action="store_true", help="Write the results as JSON into --result-dir.")
    parser.add_argument("--result-dir", default=".", help="Folder for --save-result and the sweep plot.")
    parser.add_argument("--result-filename", default=None, help="File name of the JSON result.")
    parser.add_argument("--disable-tqdm", action="store_true")
    parser.add_argument("--request-timeout", type=float, default=6 * 3600.0, help="Seconds before one request is given up.")
    parser.add_argument("--skip-initial-test", action="store_true", help="Do not send one check request before the run.")


def base_url(args: argparse.Namespace) -> str:
    return (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")


def arrival_delays(n: int, rate: float, burstiness: float, seed: int) -> np.ndarray:
    """Seconds between consecutive request starts (all zeros for an infinite rate)."""
    if rate == float("inf"):
        return np.zeros(n)
    if rate <= 0 or burstiness <= 0:
        raise ValueError(f"request rate and burstiness must be > 0, got {rate} and {burstiness}")
    rng = np.random.default_rng(seed)
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)


def _payload(args: argparse.Namespace, model: str, prompt: Any, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.endpoint.rstrip("/").endswith("chat/completions"):
        if isinstance(prompt, tuple):  # random-mm: (text, image URLs), as the seed's content parts
            text, urls = prompt
            prompt = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        body["messages"] = [{"role": "user", "content": prompt}]
        body["max_completion_tokens"] = max_tokens
    else:
        body["prompt"] = prompt
    return body


def _chunk_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "")


async def send_request(client: Any, url: str, body: dict[str, Any], prompt_len: int, tokenizer: Any = None) -> RequestResult:
    """Stream one request and time its chunks."""
    res = RequestResult(prompt_len=prompt_len)
    res.start_time = start = last = time.perf_counter()
    chunks = 0
    usage_tokens = None
    text: list[str] = []
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}"
                return res
            async for line in resp.aiter_lines():
                line = line.strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens", usage_tokens)
                piece = "".join(_chunk_text(c) for c in chunk.get("choices") or [])
                if not piece:  # role-only, finish-only or usage-only chunks carry no token
                    continue
                now = time.perf_counter()
                if chunks == 0:
                    res.ttft = now - start
                else:
                    res.itl.append(now - last)
                last = now
                chunks += 1
                text.append(piece)
        if chunks == 0:  # tokens that decoded to no text (or none at all): time them at the end
            last = time.perf_counter()
            res.ttft = last - start
        res.latency = last - start
        res.generated_text = "".join(text)
        if usage_tokens is not None:
            res.output_tokens = int(usage_tokens)
        elif tokenizer is not None:
            res.output_tokens = len(tokenizer(res.generated_text, add_special_tokens=False)["input_ids"])
        else:
            res.output_tokens = chunks
        res.success = res.output_tokens > 0
        if not res.success:
            res.error = "the stream carried no tokens"
    except Exception as exc:  # network errors, bad JSON: recorded, never raised
        res.error = f"{type(exc).__name__}: {exc}"
    return res


def make_client(timeout: float) -> Any:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    # Like vLLM's benchmark, an API key comes from OPENAI_API_KEY.
    key = os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=60.0), limits=limits, headers=headers)


async def run_once(args: argparse.Namespace, model: str, requests: list[SampleRequest], prompts: list[Any],
                   request_rate: float, max_concurrency: int | None, tokenizer: Any = None) -> dict[str, Any]:
    """One load run at one rate / concurrency; returns its metrics (and prints the result block)."""
    url = base_url(args) + args.endpoint
    percentiles = tuple(float(p) for p in args.metric_percentiles.split(",") if p.strip())
    selected = tuple(m.strip() for m in args.percentile_metrics.split(",") if m.strip())
    delays = arrival_delays(len(requests), request_rate, args.burstiness, args.seed)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = tqdm(total=len(requests), disable=args.disable_tqdm, desc=f"serve rate={request_rate} conc={max_concurrency}")
    async with make_client(args.request_timeout) as client:
        if not args.skip_initial_test:
            check = await send_request(client, url, _payload(args, model, prompts[0], min(requests[0].expected_output_len, 8)), requests[0].prompt_len, tokenizer)
            if not check.success:
                raise SystemExit(f"error: the initial test request failed: {check.error}")

        async def one(req: SampleRequest, prompt: Any) -> RequestResult:
            body = _payload(args, model, prompt, req.expected_output_len)
            if sem is None:
                r = await send_request(client, url, body, req.prompt_len, tokenizer)
            else:
                async with sem:
                    r = await send_request(client, url, body, req.prompt_len, tokenizer)
            bar.update(1)
            return r

        tasks = []
        start = time.perf_counter()
        for req, prompt, delay in zip(requests, prompts, delays):
            if delay > 0:
                await asyncio.sleep(float(delay))
            tasks.append(asyncio.create_task(one(req, prompt)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    bar.close()
    metrics = calculate_metrics(list(results), duration, percentiles)
    print(format_result_block(metrics, percentiles, selected, request_rate, max_concurrency))
    errors = [r.error for r in results if not r.success]
    if errors:
        print(f"{len(errors)} requests failed; first error: {errors[0]}")
    return metrics


async def _served_model(args: argparse.Namespace) -> str:
    async with make_client(60.0) as client:
        resp = await client.get(base_url(args) + "/v1/models")
        resp.raise_for_status()
        return resp.json()["data"][0]["id"]


def _load_tokenizer(path: str | None) -> Any:
    if not path:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception:
        return None  # a config-only folder: counts come from usage or chunks


def parse_sweep(spec: str | None, args: argparse.Namespace) -> tuple[str, list[Any]]:
    if not spec:
        return "request-rate", [args.request_rate]
    name, _, values = spec.partition("=")
    name = name.strip()
    if name not in ("request-rate", "max-concurrency") or not values:
        raise SystemExit("error: --sweep takes 'request-rate=1,4,inf' or 'max-concurrency=1,8,64'")
    conv = float if name == "request-rate" else int
    return name, [conv(v) for v in values.split(",") if v.strip()]


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_mm_flags(args)
    model = args.model or asyncio.run(_served_model(args))
    tokenizer = _load_tokenizer(args.tokenizer)
    if args.tokenizer:
        vocab, specials = vocab_and_specials(args.tokenizer)
    elif args.vocab_size:
        vocab, specials = args.vocab_size, []
    else:
        raise SystemExit("error: give --tokenizer (a model folder) or --vocab-size to draw random prompts")
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, vocab, args.random_range_ratio, args.prefix_len, args.seed, specials)
    chat = args.endpoint.rstrip("/").endswith("chat/completions")
    if args.prompt_format == "text" or chat:
        if tokenizer is None:
            raise SystemExit("error: text prompts need a --tokenizer")
        prompts: list[Any] = [tokenizer.decode(r.prompt_token_ids) for r in requests]
    else:
        prompts = [r.prompt_token_ids for r in requests]
    if getattr(args, "dataset_name", "random") == "random-mm":
        if not chat:
            raise SystemExit("error: --dataset-name random-mm sends images: use --endpoint /v1/chat/completions")
        from pagoda.benchmarks.datasets import parse_mm_buckets, random_image_urls

        urls = random_image_urls(len(prompts), args.random_mm_base_items_per_request,
                                 parse_mm_buckets(args.random_mm_bucket_config), args.seed)
        prompts = list(zip(prompts, urls))
    sweep_name, values = parse_sweep(args.sweep, args)
    points = []
    for value in values:
        rate = value if sweep_name == "request-rate" else args.request_rate
        conc = value if sweep_name == "max-concurrency" else args.max_concurrency
        metrics = asyncio.run(run_once(args, model, requests, prompts, rate, conc, tokenizer))
        points.append({"value": value, "request_rate": rate, "max_concurrency": conc, "metrics": metrics})
    result = {**common.run_header(), "model": model, "base_url": base_url(args), "endpoint": args.endpoint,
              "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
              "sweep": sweep_name if args.sweep else None, "points": points}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.sweep:
        os.makedirs(args.result_dir, exist_ok=True)
        png = plot_sweep(points, sweep_name, os.path.join(args.result_dir, f"serve-sweep-{sweep_name}-{stamp}.png"))
        result["plot"] = png
        print(f"sweep plot written to {png}")
    if args.save_result:
        common.write_json(os.path.join(args.result_dir, args.result_filename or f"serve-{stamp}.json"), result)
    return result
