"""GPU micro-benchmark of the L2 weight prefetch (not collected by pytest; run by hand on a GPU):

    python tests/kernels/bench_prefetch.py

Models one decode layer at batch 1: a latency-bound stretch (torch.cuda._sleep standing in for the
rotary/KV write and attention) followed by a one-row GEMV over a weight. One CUDA graph holds 32
such pairs, each with its own weight (nothing stays in L2 from the previous replay). Modes: no
prefetch; the weight prefetched from a side stream while the stretch runs; prefetched in line before
the stretch. Prints the time per pair and, after subtracting the stretch alone, what the product
cost. Results are checked against the fp32 reference.
"""

from __future__ import annotations

import torch

from pagoda.kernels.gemv import gemv, gemv_ref
from pagoda.kernels.l2_prefetch import prefetch_l2

COPIES = 32
SHAPES = {"o_proj": (4096, 4096), "qkv_proj": (6144, 4096), "down_proj": (4096, 14336)}


def time_graph(body, reps: int = 20) -> float:
    """Microseconds per pair: one graph of COPIES pairs, replayed `reps` times (median)."""
    body()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / COPIES)
    return sorted(times)[len(times) // 2]


def main() -> None:
    dev, dtype = "cuda", torch.bfloat16
    side = torch.cuda.Stream()
    print(torch.cuda.get_device_name(), "| times in us per (stretch + product)")
    for name, (n, k) in SHAPES.items():
        weights = [torch.randn(n, k, device=dev, dtype=dtype) * 0.02 for _ in range(COPIES)]
        x = torch.randn(1, k, device=dev, dtype=dtype)
        y = gemv(x, weights[0])
        ref = gemv_ref(x, weights[0])
        err = (y.float() - ref.float()).abs().max().item()
        for cycles in (0, 8000, 16000, 24000):
            def stretch_only():
                for _ in weights:
                    torch.cuda._sleep(cycles)

            def plain():
                for w in weights:
                    torch.cuda._sleep(cycles)
                    gemv(x, w)

            def side_stream():
                cur = torch.cuda.current_stream()
                for w in weights:
                    side.wait_stream(cur)
                    with torch.cuda.stream(side):
                        prefetch_l2(w)
                    torch.cuda._sleep(cycles)
                    cur.wait_stream(side)
                    gemv(x, w)

            def in_line():
                for w in weights:
                    prefetch_l2(w)
                    torch.cuda._sleep(cycles)
                    gemv(x, w)

            base = time_graph(stretch_only) if cycles else 0.0
            row = [time_graph(f) for f in (plain, side_stream, in_line)]
            mb = n * k * 2 / 1e6
            print(f"{name:10} {mb:6.1f} MB stretch {base:6.2f} | plain {row[0]:7.2f} ({row[0] - base:6.2f})"
                  f" | side {row[1]:7.2f} ({row[1] - base:6.2f}) | inline {row[2]:7.2f} ({row[2] - base:6.2f})"
                  f" | max err {err:.1e}")


if __name__ == "__main__":
    main()
