"""The transformers baseline: the same workloads through Hugging Face `generate`.

Invariants:
- A folder with weights is loaded with `from_pretrained`; a config-only folder (the benchmark's
  dummy models) is built with random weights from its config, directly on the device, in the dtype.
- Static batching: requests go in arrival order in batches of at most `max_batch_size`, left-padded
  to the batch's longest prompt, each batch generating exactly its longest output length
  (min_new_tokens = max_new_tokens, so EOS never stops it early). Token counts reported are the
  requested ones, as vLLM's hf backend reports them.
- Decoding is greedy unless sampling parameters are given (`sampling`: SamplingParams field names):
  then `generate` samples with the same temperature / top-p / top-k / repetition penalty, and
  `logprobs` = k adds a logits processor that takes each step's log-softmax and its top k (the work a
  logprobs request costs; the values are not kept).
"""

from __future__ import annotations

import glob
import logging
import os
import time
from typing import Any

from tqdm import tqdm

from pagoda.benchmarks.datasets import SampleRequest

logger = logging.getLogger(__name__)


def torch_dtype(name: str, device: str) -> Any:
    import torch

    aliases = {"half": "float16", "float": "float32"}
    name = aliases.get(name, name)
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def load_model(model_path: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False) -> tuple[Any, str]:
    """The model in eval mode on `device` ('auto': cuda when available) and the device used."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    has_weights = any(glob.glob(os.path.join(model_path, pat)) for pat in ("*.safetensors", "*.bin", "*.pt"))
    if dtype == "auto":
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        ckpt = str(getattr(config, "dtype", None) or "").replace("torch.", "")
        dt = getattr(torch, ckpt) if ckpt in ("float16", "bfloat16") else torch_dtype("auto", device)
    else:
        dt = torch_dtype(dtype, device)
    if has_weights:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dt, trust_remote_code=trust_remote_code).to(device)
    else:
        logger.info("no weights in %s: random init from its config on %s", model_path, device)
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        with torch.device(device):  # initialised in place on the GPU: no 16 GB host copy
            model = AutoModelForCausalLM.from_config(config, dtype=dt, trust_remote_code=trust_remote_code)
    model.eval()
    return model, device


def _pad_id(model: Any) -> int:
    cfg = model.generation_config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else getattr(model.config, "pad_token_id", None)
    if pad is None:
        eos = cfg.eos_token_id
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    return int(pad)


class TopLogprobs:
    """A transformers logits processor that computes each step's top-k log-probabilities (and drops them)."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logprobs = torch.log_softmax(scores.float(), dim=-1)
        if self.k:
            logprobs.topk(self.k, dim=-1)
        return scores


def generation_kwargs(sampling: dict[str, Any] | None) -> dict[str, Any]:
    """`generate` keywords for SamplingParams-named `sampling` (None or {}: greedy)."""
    if not sampling:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    temperature = float(sampling.get("temperature", 1.0))
    top_k = int(sampling.get("top_k", -1))
    kwargs: dict[str, Any] = {"do_sample": temperature > 0, "temperature": temperature if temperature > 0 else None,
                              "top_p": float(sampling.get("top_p", 1.0)) if temperature > 0 else None,
                              # 0, not None: None would mean transformers' default of 50
                              "top_k": (top_k if top_k > 0 else 0) if temperature > 0 else None}
    if sampling.get("repetition_penalty", 1.0) != 1.0:
        kwargs["repetition_penalty"] = float(sampling["repetition_penalty"])
    if sampling.get("logprobs") is not None:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([TopLogprobs(int(sampling["logprobs"]))])
    return kwargs


def generate_static(model: Any, device: str, prompts: list[list[int]], max_new_tokens: int,
                    sampling: dict[str, Any] | None = None) -> list[list[int]]:
    """One left-padded `generate` call; returns the new tokens of each prompt (greedy unless `sampling`)."""
    import torch

    pad = _pad_id(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            pad_token_id=pad,
            **generation_kwargs(sampling),
        )
    return [row[width:].tolist() for row in out]


def run_throughput(model: Any, device: str, requests: list[SampleRequest], max_batch_size: int, n: int = 1,
                   sampling: dict[str, Any] | None = None) -> tuple[float, int]:
    """Static batches over all requests: (elapsed seconds, output tokens generated as requested)."""
    import torch

    batches: list[list[SampleRequest]] = []
    for req in requests:
        for _ in range(n):
            if not batches or len(batches[-1]) >= max_batch_size:
                batches.append([])
            batches[-1].append(req)
    _sync(torch, device)
    start = time.perf_counter()
    for batch in tqdm(batches, desc="hf generate", unit="batch"):
        generate_static(model, device, [r.prompt_token_ids for r in batch], max(r.expected_output_len for r in batch), sampling)
    _sync(torch, device)
    return time.perf_counter() - start, n * sum(r.expected_output_len for r in requests)


def run_continuous(model: Any, device: str, requests: list[SampleRequest]) -> tuple[float, int]:
    """transformers' continuous batching (`generate_batch`); raises RuntimeError where unavailable."""
    import torch
    from transformers import GenerationConfig

    if not hasattr(model, "generate_batch"):
        raise RuntimeError("this transformers has no generate_batch (continuous batching)")
    out_len = max(r.expected_output_len for r in requests)
    gen = GenerationConfig(max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, eos_token_id=-1, pad_token_id=_pad_id(model))
    _sync(torch, device)
    start = time.perf_counter()
    results = model.generate_batch(inputs=[r.prompt_token_ids for r in requests], generation_config=gen, progress_bar=True)
    _sync(torch, device)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(r.generated_tokens) for r in results.values())


def _sync(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
