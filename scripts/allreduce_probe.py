"""What one tensor-parallel all-reduce costs, and so what it adds per layer and per step (issue 22).

    python scripts/allreduce_probe.py [--tp 2] [--hidden 4096] [--layers 32] [--tokens 1,8,64,256,1024,8192]
                                      [--device cuda|cpu] [--out DIR]

Spawns `--tp` ranks joined through pagoda.distributed.group (NCCL on CUDA, gloo on CPU) and times
`group.all_reduce` of a [tokens, hidden] bf16 tensor (fp32 on CPU), as a decoder layer runs it twice (after the
attention's o_proj and after the MLP's down_proj). On CUDA each size is timed two ways, median of the repeats:
eager (CUDA events around one call) and replayed inside a CUDA graph of 20 calls (how decode steps run them).
Prints a table of microseconds per all-reduce, per layer (x 2) and per step (x 2 x layers), with the bus
bandwidth NCCL's tests report (2 (tp - 1) / tp x bytes / time), and writes DIR/allreduce_probe.json.
On CPU it is a dry run of the script (wall-clock time of gloo calls): its figures say nothing of a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pagoda.distributed import group  # noqa: E402

REPEATS = 30
GRAPH_CALLS = 20


def time_sizes(device: str, hidden: int, sizes: list[int]) -> list[dict]:
    """Per size: median microseconds of one all-reduce, eager and (CUDA) in a graph."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    out = []
    for tokens in sizes:
        x = torch.ones(tokens, hidden, dtype=dtype, device=device)
        for _ in range(3):  # warm-up: NCCL sets up its channels on the first calls
            group.all_reduce(x)
        eager = []
        for _ in range(REPEATS):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                group.all_reduce(x)
                end.record()
                end.synchronize()
                eager.append(start.elapsed_time(end) * 1e3)
            else:
                started = time.perf_counter()
                group.all_reduce(x)
                eager.append((time.perf_counter() - started) * 1e6)
        row = {"tokens": tokens, "bytes": x.numel() * x.element_size(), "eager_us": statistics.median(eager)}
        if device == "cuda":
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                group.all_reduce(x)  # a call on the capture stream before capturing, as the runner's warm-up does
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph):
                for _ in range(GRAPH_CALLS):
                    group.all_reduce(x)
            replays = []
            for _ in range(REPEATS // 3):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                replays.append(start.elapsed_time(end) * 1e3 / GRAPH_CALLS)
            row["graph_us"] = statistics.median(replays)
            del graph
        out.append(row)
    return out


def rank_main(rank: int, init: group.DistributedInit, device: str, hidden: int, sizes: list[int], results) -> None:
    if device == "cuda":
        torch.cuda.set_device(rank)
    group.init_distributed(init, rank)
    try:
        rows = time_sizes(device, hidden, sizes)
        if rank == 0:
            results.put(rows)
    finally:
        group.destroy_distributed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096, help="Llama-3-8B: 4096; Llama-3-70B: 8192")
    parser.add_argument("--layers", type=int, default=32, help="Llama-3-8B: 32; Llama-3-70B: 80")
    parser.add_argument("--tokens", default="1,8,64,256,1024,8192", help="rows per all-reduce, comma-separated")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", default=".")
    args = parser.parse_args(argv)
    sizes = [int(t) for t in args.tokens.split(",")]
    if args.tp < 2 or any(t < 1 for t in sizes):
        parser.error("--tp must be >= 2 and every --tokens entry >= 1")
    if args.device == "cuda" and torch.cuda.device_count() < args.tp:
        parser.error(f"--tp {args.tp} needs {args.tp} GPUs, {torch.cuda.device_count()} visible")
    init = group.DistributedInit(args.tp, f"tcp://127.0.0.1:{group.free_port()}",
                                 "nccl" if args.device == "cuda" else "gloo", 120.0)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, init, args.device, args.hidden, sizes, results)) for r in range(args.tp)]
    for p in procs:
        p.start()
    rows = results.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    if any(p.exitcode != 0 for p in procs):
        print(f"a rank failed: exit codes {[p.exitcode for p in procs]}", file=sys.stderr)
        return 1
    bus = 2 * (args.tp - 1) / args.tp
    kind = "graph_us" if args.device == "cuda" else "eager_us"
    print(f"\nall-reduce over tp={args.tp} ({args.device}), [tokens, {args.hidden}] "
          f"{'bf16' if args.device == 'cuda' else 'fp32'}; per layer = 2 calls, per step = 2 x {args.layers} layers")
    print("| tokens | bytes | eager us | graph us | bus GB/s | per layer us | per step ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        t = row[kind]
        row["bus_gbps"] = bus * row["bytes"] / (t * 1e-6) / 1e9
        row["per_layer_us"] = 2 * t
        row["per_step_ms"] = 2 * args.layers * t / 1e3
        graph = f"{row['graph_us']:.1f}" if "graph_us" in row else "-"
        print(f"| {row['tokens']} | {row['bytes']} | {row['eager_us']:.1f} | {graph} | {row['bus_gbps']:.1f} | "
              f"{row['per_layer_us']:.1f} | {row['per_step_ms']:.3f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "allreduce_probe.json"), "w") as f:
        json.dump({"tp": args.tp, "device": args.device, "hidden": args.hidden, "layers": args.layers,
                   "gpus": [torch.cuda.get_device_name(i) for i in range(args.tp)] if args.device == "cuda" else [],
                   "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
