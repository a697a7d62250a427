"""`pagoda bench throughput --dataset-name random-mm`: offline throughput of one-turn chat requests with random
images, for pagoda and for the transformers baseline.

Invariants:
- Both backends get the same requests: the text is the model processor's chat template over one user turn
  (the processor's image token once per image, then `--input-len` random tokens decoded to text), the images
  are random-noise PIL images (sizes from `--random-mm-bucket-config`, `--random-mm-base-items-per-request`
  per request), every request generates exactly its output length (EOS ignored).
- The timed region is generation including image preprocessing (each backend runs the same processor).
- For pagoda the vision encoder's GPU time is measured with CUDA events around each encoder call
  (worker/mm_inputs.py), so the run is not synchronized by the measurement.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from pagoda.benchmarks.datasets import parse_mm_buckets, random_images, random_requests, vocab_and_specials


@dataclass
class ImageRequest:
    text: str
    images: list
    output_len: int


def make_mm_requests(args: argparse.Namespace, path: str) -> list[ImageRequest]:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, trust_remote_code=getattr(args, "trust_remote_code", False))
    vocab, specials = vocab_and_specials(path, getattr(args, "tokenizer", None), getattr(args, "trust_remote_code", False))
    seed = args.seed if args.seed is not None else 0
    token_requests = random_requests(args.num_prompts, args.input_len, args.output_len, vocab, args.random_range_ratio,
                                     args.prefix_len, seed, specials)
    images = random_images(len(token_requests), args.random_mm_base_items_per_request,
                           parse_mm_buckets(args.random_mm_bucket_config), seed)
    image_token = getattr(processor, "image_token", None) or "<image>"
    requests = []
    for r, row in zip(token_requests, images):
        words = processor.tokenizer.decode(r.prompt_token_ids)
        content = "".join(f"{image_token}\n" for _ in row) + words
        if getattr(processor, "chat_template", None):
            text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=False)
        else:
            text = content
        requests.append(ImageRequest(text, row, r.expected_output_len))
    return requests


def run_pagoda_mm(args: argparse.Namespace, requests: list[ImageRequest]) -> tuple[float, int, int, float | None]:
    """(elapsed seconds, prompt tokens, output tokens returned, vision-encoder GPU seconds or None off CUDA)."""
    from pagoda import LLM, SamplingParams
    from pagoda.benchmarks import common

    llm = LLM(**common.engine_kwargs(args))
    prompts = [{"prompt": r.text, "multi_modal_data": {"image": r.images}} for r in requests]
    params = [SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=r.output_len) for r in requests]
    mm = _runner_mm(llm)
    if mm is not None:
        mm.encoder_seconds(reset=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    encoder = mm.encoder_seconds() if mm is not None and mm.device.type == "cuda" else None
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    return elapsed, prompt_tokens, sum(len(c.token_ids) for o in outputs for c in o.outputs), encoder


def _runner_mm(llm) -> Any:
    """The in-process model runner's MultiModalInputs (None when the engine runs elsewhere or has no images)."""
    try:
        return llm.llm_engine.core.executor.worker.runner.mm
    except AttributeError:
        return None


def run_hf_mm(args: argparse.Namespace, path: str, requests: list[ImageRequest]) -> tuple[float, int, int]:
    """transformers `generate` in static batches of `--hf-max-batch-size`, left-padded: (elapsed, prompt tokens,
    output tokens as requested)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from pagoda.benchmarks.hf_backend import torch_dtype

    device = args.device if args.device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch_dtype(args.dtype, device)
    config = AutoConfig.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    with torch.device(device):  # random weights from the config (the benchmark's dummy models)
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    processor.tokenizer.padding_side = "left"
    pad = processor.tokenizer.pad_token_id
    if pad is None:
        pad = processor.tokenizer.eos_token_id or 0
        processor.tokenizer.pad_token_id = pad
    size = args.hf_max_batch_size
    if device == "cuda":
        torch.cuda.synchronize()
    prompt_tokens = 0
    start = time.perf_counter()
    for i in range(0, len(requests), size):
        batch = requests[i:i + size]
        new = max(r.output_len for r in batch)
        inputs = processor(text=[r.text for r in batch], images=[image for r in batch for image in r.images],
                           padding=True, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        prompt_tokens += int(inputs["attention_mask"].sum())
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, prompt_tokens, sum(r.output_len for r in requests)


def main(args: argparse.Namespace, path: str) -> dict[str, Any]:
    from pagoda.benchmarks.throughput import report

    requests = make_mm_requests(args, path)
    encoder = None
    if args.backend == "pagoda":
        elapsed, prompt_tokens, output_tokens, encoder = run_pagoda_mm(args, requests)
    else:
        elapsed, prompt_tokens, output_tokens = run_hf_mm(args, path, requests)
    images = sum(len(r.images) for r in requests)
    result = {"backend": args.backend, "num_images": images,
              **report(elapsed, len(requests), prompt_tokens, output_tokens)}
    if encoder is not None:
        print(f"Vision encoder: {encoder:.3f} s of GPU time for {images} images "
              f"({1e3 * encoder / max(images, 1):.2f} ms each), {100 * encoder / elapsed:.1f} % of the run")
        result["vision_encoder_seconds"] = encoder
    return result
