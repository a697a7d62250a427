"""The GPU's ceilings, measured at the start of a benchmark run (or given by flags).

Invariants:
- `measure_ceilings()` returns None on a machine without CUDA: no ceiling is guessed for a CPU.
- Flags win over measurement: `--sol-bandwidth-gbps` / `--sol-tflops` / `--sol-memory-gb` replace
  the measured figure they name; when both rates are given nothing is measured.
- Measurements are best-of-several with CUDA events, after a warm-up, on buffers far larger than
  the L2 cache (1 GiB copy, 8192³ bf16 matmul); they take well under a second each.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pagoda.benchmarks.speed_of_light import Ceilings

logger = logging.getLogger(__name__)


def add_sol_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("speed-of-light")
    g.add_argument("--sol-bandwidth-gbps", type=float, default=None, help="Memory bandwidth ceiling in GB/s (default: measured on the GPU).")
    g.add_argument("--sol-tflops", type=float, default=None, help="Matmul ceiling in TFLOP/s at the model's dtype (default: measured bf16 rate).")
    g.add_argument("--sol-memory-gb", type=float, default=None, help="Device memory in GB for the KV capacity (default: the GPU's total).")
    g.add_argument("--no-sol", action="store_true", help="Do not measure the GPU or compute the speed-of-light.")


def _bandwidth(torch: Any, nbytes: int = 1 << 30, iters: int = 10) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    best = float("inf")
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * nbytes / best  # a copy reads and writes every byte


def _matmul_rate(torch: Any, n: int = 8192, iters: int = 10) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del a, b
    return 2.0 * n**3 / best


def gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return "cpu"


def measure_ceilings() -> Ceilings | None:
    """Bandwidth, bf16 matmul rate and total memory of GPU 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    with torch.no_grad():
        bw = _bandwidth(torch)
        rate = _matmul_rate(torch)
    torch.cuda.empty_cache()
    memory = torch.cuda.get_device_properties(0).total_memory
    logger.info("measured ceilings: %.0f GB/s copy, %.0f TFLOP/s bf16", bw / 1e9, rate / 1e12)
    return Ceilings(bandwidth=bw, flops=rate, memory_bytes=float(memory), source="measured")


def resolve_ceilings(args: argparse.Namespace) -> tuple[Ceilings | None, str]:
    """Ceilings from flags and/or measurement, and a one-line note saying where they came from."""
    if getattr(args, "no_sol", False):
        return None, "speed-of-light: off (--no-sol)"
    bw_flag, tf_flag, mem_flag = args.sol_bandwidth_gbps, args.sol_tflops, args.sol_memory_gb
    measured = None
    if bw_flag is None or tf_flag is None or mem_flag is None:
        measured = measure_ceilings()
    if measured is None and (bw_flag is None or tf_flag is None):
        return None, "speed-of-light: no ceiling known on this device (give --sol-bandwidth-gbps and --sol-tflops)"
    bw = bw_flag * 1e9 if bw_flag is not None else measured.bandwidth  # type: ignore[union-attr]
    tf = tf_flag * 1e12 if tf_flag is not None else measured.flops  # type: ignore[union-attr]
    mem = mem_flag * 1e9 if mem_flag is not None else (measured.memory_bytes if measured else None)
    source = "given" if measured is None else ("measured" if bw_flag is None and tf_flag is None else "measured+given")
    c = Ceilings(bandwidth=bw, flops=tf, memory_bytes=mem, source=source)
    return c, f"ceilings ({source}): {bw / 1e9:.0f} GB/s, {tf / 1e12:.0f} TFLOP/s, memory {'unknown' if mem is None else f'{mem / 1e9:.0f} GB'}"
