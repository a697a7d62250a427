"""Synthetic benchmark workloads: random token-id prompts with chosen lengths.

Invariants:
- `random_requests(...)` is a pure function of its arguments: the same seed gives the same prompts.
- Every prompt is `prefix + unique part`; the optional shared prefix (`prefix_len` tokens) is the
  only text two prompts have in common. The first `UNIQUE_HEAD` tokens of the unique parts are
  pairwise different, so no prefix cache can share a block between two prompts by accident.
- Lengths are drawn uniformly from [len·(1−r), len·(1+r)] (r = range ratio), never below 1 output
  token, and excluded token ids (special tokens) never appear.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

# Prompts must differ within their first this-many unique tokens (a KV block is 16 tokens by default).
UNIQUE_HEAD = 16


@dataclass(frozen=True)
class SampleRequest:
    """One benchmark request: the prompt's token ids and how many tokens to generate."""

    prompt_token_ids: list[int]
    expected_output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def sample_lengths(rng: np.random.Generator, mean: int, range_ratio: float, count: int, low_floor: int) -> np.ndarray:
    """`count` integers uniform in [mean·(1−r), mean·(1+r)], never below `low_floor`."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"random_range_ratio must be in [0, 1), got {range_ratio}")
    if mean < 0:
        raise ValueError(f"length must be >= 0, got {mean}")
    low = max(low_floor, int(np.floor(mean * (1.0 - range_ratio))))
    high = max(low, int(np.ceil(mean * (1.0 + range_ratio))))
    return rng.integers(low, high + 1, size=count)


def random_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    vocab_size: int,
    range_ratio: float = 0.0,
    prefix_len: int = 0,
    seed: int = 0,
    excluded_ids: tuple[int, ...] | list[int] = (),
) -> list[SampleRequest]:
    """Random prompts of about `prefix_len + input_len` tokens asking for about `output_len` tokens."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(list(excluded_ids), dtype=np.int64))
    if allowed.size < 2:
        raise ValueError(f"vocab_size={vocab_size} leaves fewer than 2 usable token ids")
    in_lens = sample_lengths(rng, input_len, range_ratio, num_prompts, low_floor=0 if prefix_len else 1)
    out_lens = sample_lengths(rng, output_len, range_ratio, num_prompts, low_floor=1)
    prefix = allowed[rng.integers(0, allowed.size, size=prefix_len)].tolist()
    seen: set[tuple[int, ...]] = set()
    requests = []
    for in_len, out_len in zip(in_lens.tolist(), out_lens.tolist()):
        body = _unique_body(rng, allowed, in_len, seen)
        requests.append(SampleRequest(prefix + body, int(out_len)))
    return requests


def _unique_body(rng: np.random.Generator, allowed: np.ndarray, length: int, seen: set) -> list[int]:
    """Random tokens whose first UNIQUE_HEAD tokens differ from every earlier body's (if possible)."""
    head = min(length, UNIQUE_HEAD)
    for _ in range(100):
        body = allowed[rng.integers(0, allowed.size, size=length)].tolist()
        key = tuple(body[:head])
        if key not in seen:
            seen.add(key)
            return body
    # Only possible with tiny vocabularies and very short prompts: nothing unique is left to draw.
    raise ValueError(f"cannot draw unique prompts of {length} tokens from {allowed.size} token ids")


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """vLLM's random-dataset flags (the --input-len/--output-len spellings are aliases)."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset-name", default="random", choices=["random", "random-mm"],
                   help="Workload generator: 'random' token prompts, or 'random-mm' (chat endpoint) with random images too.")
    g.add_argument("--random-mm-base-items-per-request", type=int,
                   default=MM_FLAG_DEFAULTS["random_mm_base_items_per_request"], help="random-mm: images per request.")
    g.add_argument("--random-mm-bucket-config", default=MM_FLAG_DEFAULTS["random_mm_bucket_config"],
                   help="random-mm: {(height, width, 1): probability, ...} of the images' sizes (vLLM's form; "
                        "the 1 is the frame count of an image).")
    g.add_argument("--num-prompts", type=int, default=1000, help="Number of prompts.")
    g.add_argument("--input-len", "--random-input-len", dest="input_len", type=int, default=1024, help="Prompt length in tokens (not counting --prefix-len).")
    g.add_argument("--output-len", "--random-output-len", dest="output_len", type=int, default=128, help="Tokens to generate per request.")
    g.add_argument("--random-range-ratio", type=float, default=0.0, help="Lengths are uniform in [len·(1−r), len·(1+r)].")
    g.add_argument("--prefix-len", "--random-prefix-len", dest="prefix_len", type=int, default=0, help="Shared prefix tokens put before every prompt.")


def vocab_and_specials(model_path: str, tokenizer_path: str | None = None, trust_remote_code: bool = False) -> tuple[int, list[int]]:
    """The model's vocabulary size and the tokenizer's special ids (none when no tokenizer loads)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = int(text_config.vocab_size)
    specials: list[int] = []
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_path or model_path, trust_remote_code=trust_remote_code)
        specials = [int(i) for i in tok.all_special_ids]
        vocab = min(vocab, len(tok))
    except Exception:  # a config-only folder (dummy weights) has no tokenizer: every id is fair
        pass
    return vocab, specials


MM_FLAG_DEFAULTS = {"random_mm_base_items_per_request": 1, "random_mm_bucket_config": "{(336, 336, 1): 1.0}"}


def check_mm_flags(args: argparse.Namespace) -> None:
    """The random-mm flags take effect only with --dataset-name random-mm: elsewhere a non-default one is refused."""
    if getattr(args, "dataset_name", "random") == "random-mm":
        return
    for name, default in MM_FLAG_DEFAULTS.items():
        if getattr(args, name, default) != default:
            raise SystemExit(f"error: --{name.replace('_', '-')} needs --dataset-name random-mm")


def parse_mm_buckets(text: str) -> list[tuple[tuple[int, int], float]]:
    """--random-mm-bucket-config -> [((height, width), probability)], probabilities summing to 1."""
    import ast

    try:
        buckets = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise SystemExit(f"error: --random-mm-bucket-config {text!r} is not a dict like {{(336, 336, 1): 1.0}}") from None
    out = []
    for key, prob in dict(buckets).items():
        if not (isinstance(key, tuple) and len(key) == 3 and key[2] == 1):
            raise SystemExit(f"error: --random-mm-bucket-config: {key!r} is not (height, width, 1) (videos are not "
                             "supported yet)")
        out.append(((int(key[0]), int(key[1])), float(prob)))
    total = sum(p for _, p in out)
    if not out or total <= 0:
        raise SystemExit("error: --random-mm-bucket-config needs at least one bucket of probability > 0")
    return [(size, p / total) for size, p in out]


def random_images(num_requests: int, per_request: int, buckets: list, seed: int) -> list[list]:
    """Per request, `per_request` random-noise RGB PIL images with sizes drawn from `buckets`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes, probs = [b[0] for b in buckets], [b[1] for b in buckets]
    images = []
    for _ in range(num_requests):
        row = []
        for _ in range(per_request):
            height, width = sizes[rng.choice(len(sizes), p=probs)]
            row.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        images.append(row)
    return images


def random_image_urls(num_requests: int, per_request: int, buckets: list, seed: int) -> list[list[str]]:
    """Per request, `per_request` data: URLs of random-noise JPEG images with sizes drawn from `buckets`."""
    import base64
    import io

    urls = []
    for row in random_images(num_requests, per_request, buckets, seed):
        encoded = []
        for image in row:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
            encoded.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
        urls.append(encoded)
    return urls
