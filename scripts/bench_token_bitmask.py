"""Micro-benchmark: structured-output token bitmask on logits, Triton kernel vs. torch reference.

    python scripts/bench_token_bitmask.py                      # CUDA, batch 1/32/256 x vocab 128256, bf16
    python scripts/bench_token_bitmask.py --block 1024 2048 4096  # sweep the kernel's block size too
    python scripts/bench_token_bitmask.py --device cpu         # torch reference only (no Triton)

Prints microseconds per call (mean over --iters back-to-back calls after a warm-up; CUDA events on
CUDA), for every row masked and for half of the rows picked by row_indices, and the host time of
bitmask_to_device (the host never waits for the GPU there, so this is what the step loop pays).
On CUDA each case first checks the kernel against the reference, bit for bit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pagoda.sample.token_bitmask import apply_token_bitmask_ref, bitmask_to_device  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def time_us(fn, device: torch.device, iters: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - start) / iters * 1e6
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters * 1e3


def host_copy_us(array: np.ndarray, device: torch.device, iters: int) -> float:
    bitmask_to_device(array, device)
    start = time.perf_counter()
    for _ in range(iters):
        bitmask_to_device(array, device)
    elapsed = (time.perf_counter() - start) / iters * 1e6
    if device.type == "cuda":
        torch.cuda.synchronize()
    return elapsed


def bench_case(batch: int, vocab: int, dtype: torch.dtype, device: torch.device, args) -> None:
    rng = np.random.default_rng(batch)
    width = -(-vocab // 32)
    for subset in (False, True):
        rows = max(1, batch // 2) if subset else batch
        array = rng.integers(-(2**31), 2**31, size=(rows, width), dtype=np.int64).astype(np.int32)
        bitmask = bitmask_to_device(array, device)
        indices = None
        if subset:
            indices = torch.from_numpy(rng.permutation(batch)[:rows].astype(np.int64)).to(device)
        logits = torch.randn(batch, vocab, device=device).to(dtype)
        label = f"batch {batch:4d} x {vocab} {str(dtype).removeprefix('torch.'):8s} rows {rows:4d}"
        label += " (row_indices)" if subset else " (all)        "
        ref_us = time_us(lambda: apply_token_bitmask_ref(logits, bitmask, indices), device, args.iters)
        parts = [f"torch {ref_us:9.1f} us"]
        if device.type == "cuda":
            from pagoda.kernels.token_bitmask import apply_token_bitmask_triton

            for block in args.block or [None]:
                expected = apply_token_bitmask_ref(logits.clone(), bitmask, indices)
                got = apply_token_bitmask_triton(logits.clone(), bitmask, indices, block=block)
                if not torch.equal(got, expected):
                    raise SystemExit(f"kernel != reference for {label} block={block}")
                us = time_us(lambda: apply_token_bitmask_triton(logits, bitmask, indices, block=block),
                             device, args.iters)
                name = "triton" if block is None else f"triton[{block}]"
                parts.append(f"{name} {us:7.1f} us")
        else:
            parts.append("triton skipped (needs CUDA)")
        parts.append(f"bitmask_to_device {host_copy_us(array, device, args.iters):6.1f} us host")
        print(f"{label}  " + "  ".join(parts), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--vocab", type=int, nargs="+", default=[128256])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--iters", type=int, default=None, help="calls per timing (default 200 on CUDA, 5 on CPU)")
    p.add_argument("--block", type=int, nargs="*", default=None, help="force these kernel block sizes")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; pass --device cpu")
    if args.iters is None:
        args.iters = 200 if device.type == "cuda" else 5
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    for vocab in args.vocab:
        for batch in args.batch:
            bench_case(batch, vocab, DTYPES[args.dtype], device, args)


if __name__ == "__main__":
    main()
