"""GPU check + sweep of the decode GEMV against cuBLAS (not collected by pytest; run by hand on a GPU):

    python tests/kernels/bench_gemv.py [--sweep] [--rows 1,2,4]

For each of Llama-3-8B's projection shapes it captures one CUDA graph of 32 products, each with its
own weight (as 32 layers would: no weight stays in L2 between uses), replays it and reports the
time per product and the weight bytes per second, for F.linear (cuBLAS), gemv's tuned launch and,
with --sweep, every launch of a grid, best first. Results are checked against the fp32 reference.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from pagoda.kernels import tuning
from pagoda.kernels.gemv import gemv, gemv_ref

SHAPES = {  # name: (N, K) of Llama-3-8B's weights
    "qkv_proj": (6144, 4096),
    "o_proj": (4096, 4096),
    "gate_up_proj": (28672, 4096),
    "down_proj": (4096, 14336),
    "lm_head": (128256, 4096),
}
COPIES = 32


def graph_seconds(body, reps: int = 20) -> float:
    """Median seconds of one replay of a CUDA graph of `body()` (run once eagerly first, so Triton
    compiles outside the capture); shared by the kernel benchmarks here."""
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
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def time_graph(fn, xs, weights, reps: int = 20) -> float:
    """Seconds per product: one graph of len(weights) products, replayed `reps` times."""

    def body():
        for w in weights:
            fn(xs, w)

    return graph_seconds(body, reps) / len(weights)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--rows", default="1,2,4")
    args = p.parse_args()
    dtype, dev = torch.bfloat16, "cuda"
    rows = [int(r) for r in args.rows.split(",")]
    grid = list(itertools.product((4, 8, 16), (256, 512, 1024), (1, 2, 4), (4, 8), (1, 3)))
    print(f"{'shape':14} {'M':>2} {'kernel':38} {'us':>8} {'GB/s':>7}")
    for name, (n, k) in SHAPES.items():
        copies = 4 if n * k > 1e8 else COPIES
        weights = [torch.randn(n, k, device=dev, dtype=dtype) / k**0.5 for _ in range(copies)]
        nbytes = n * k * 2
        for m in rows:
            x = torch.randn(m, k, device=dev, dtype=dtype)
            err = (gemv(x, weights[0]).float() - gemv_ref(x, weights[0]).float()).abs().max().item()
            results = [("cublas F.linear", time_graph(lambda a, w: torch.nn.functional.linear(a, w), x, weights))]
            tuned = tuning.gemv_launch(m, n, k)
            results.append((f"gemv tuned {tuned.block_n}x{tuned.block_k} s{tuned.split_k} w{tuned.num_warps} st{tuned.num_stages}",
                            time_graph(lambda a, w: gemv(a, w), x, weights)))
            if args.sweep and m == 1:
                swept = []
                for bn, bk, sk, nw, st in grid:
                    launch = tuning.GemvLaunch(bn, bk, sk, nw, st)
                    try:
                        t = time_graph(lambda a, w, launch=launch: gemv(a, w, launch=launch), x, weights, reps=10)
                    except Exception as exc:  # noqa: BLE001 - a launch that does not fit is skipped
                        print(f"  skip {launch}: {type(exc).__name__}")
                        continue
                    swept.append((f"gemv {bn}x{bk} s{sk} w{nw} st{st}", t))
                results += sorted(swept, key=lambda r: r[1])[:5]
            if name == "gate_up_proj" and m == 1:  # the MLP's fused activation vs. cuBLAS + the SiLU-mul kernel
                from pagoda.kernels.activation import silu_and_mul

                results.append(("cublas + silu_and_mul kernel",
                                time_graph(lambda a, w: silu_and_mul(torch.nn.functional.linear(a, w)), x, weights)))
                results.append(("gemv silu_and_mul fused",
                                time_graph(lambda a, w: gemv(a, w, silu_and_mul=True), x, weights)))
            for label, t in results:
                print(f"{name:14} {m:>2} {label:38} {t * 1e6:8.2f} {nbytes / t / 1e9:7.0f}")
            print(f"{name:14} {m:>2} max |gemv - fp32 ref| = {err:.2e}", flush=True)
        del weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
