"""GPU micro-benchmark of cascade attention at W8's decode shape (not collected by pytest; by hand on a GPU):

    python tests/kernels/bench_cascade.py [--reqs 1000] [--prefix-blocks 63] [--own 190] [--sweep]
                                          [--prefix-splits 1,2,4,8]

One layer of the Llama-3-8B shape (32 query heads, 8 KV heads, head size 128, bf16, block size 16): `--reqs`
decode requests share `--prefix-blocks` blocks and own `--own` more tokens each. Times (triton.testing.do_bench,
us per call) plain paged attention over every request's whole sequence with the decode split count the runner
uses, against the prefix pass (kernels/cascade_attention.py) plus the seeded paged attention over the suffixes,
and checks both give the same output. `--sweep` times the prefix pass at other tile sizes, warps and stages;
`--prefix-splits` at split-KV counts over the prefix (merged after; tuning.prefix_attention_splits).
"""

from __future__ import annotations

import argparse
import itertools
from types import SimpleNamespace

import torch
import triton

from pagoda.kernels import cascade_attention, tuning
from pagoda.kernels.cascade_attention import prefix_attention
from pagoda.kernels.paged_attention import PrefixState, paged_attention

H, HKV, D, BS = 32, 8, 128, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reqs", type=int, default=1000)
    parser.add_argument("--prefix-blocks", type=int, default=63)
    parser.add_argument("--own", type=int, default=190)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--prefix-splits", default="", help="comma-separated split counts to time the prefix pass at")
    args = parser.parse_args()
    dev = torch.device("cuda")
    R, P = args.reqs, args.prefix_blocks
    own_blocks = -(-args.own // BS)
    num_blocks = P + R * own_blocks
    g = torch.Generator(device=dev).manual_seed(0)
    kv = (torch.randn(2, num_blocks, BS, HKV, D, generator=g, device=dev) * 0.5).to(torch.bfloat16)
    q = torch.randn(R, H, D, generator=g, device=dev).to(torch.bfloat16)
    table = torch.empty(R, P + own_blocks, dtype=torch.int32, device=dev)
    table[:, :P] = torch.arange(P, dtype=torch.int32, device=dev)
    table[:, P:] = P + torch.arange(R * own_blocks, dtype=torch.int32, device=dev).view(R, own_blocks)
    seq_len = P * BS + args.own
    splits = tuning.attention_launch(num_reqs=R, num_tokens=R, max_query_len=1, max_seq_len=8192, num_heads=H,
                                     num_kv_heads=HKV, head_size=D, device=dev).num_splits
    md = SimpleNamespace(num_reqs=R, num_tokens=R, max_query_len=1, max_seq_len=seq_len,
                         query_start_loc=torch.arange(R + 1, dtype=torch.int32, device=dev),
                         seq_lens=torch.full((R,), seq_len, dtype=torch.int32, device=dev), block_tables=table)
    pb = torch.tensor([P], dtype=torch.int32, device=dev)
    scale = D ** -0.5

    def plain():
        return paged_attention(q, kv, md, scale, num_splits=splits)

    def prefix_only():
        return prefix_attention(q, kv, table[0], pb, scale)

    def cascade():
        out, lse = prefix_attention(q, kv, table[0], pb, scale)
        return paged_attention(q, kv, md, scale, num_splits=splits, prefix=PrefixState(pb, out, lse))

    out, lse = prefix_only()
    state = PrefixState(pb, out, lse)
    err = (plain().float() - cascade().float()).abs().max().item()
    kv_bytes = R * seq_len * HKV * D * 2 * 2
    print(f"{R} requests x ({P * BS} shared + {args.own} own) tokens, split-KV {splits}; max |plain - cascade| {err:.2e}")
    print(f"plain reads {kv_bytes / 1e9:.2f} GB of KV per layer (shared prefix once per request)")
    for name, fn in [("plain paged attention", plain), ("prefix pass", prefix_only),
                     ("suffix (seeded paged)", lambda: paged_attention(q, kv, md, scale, num_splits=splits, prefix=state)),
                     ("cascade total", cascade)]:
        us = triton.testing.do_bench(fn, warmup=20, rep=200) * 1e3
        print(f"  {name:28s} {us:9.1f} us")
    flops = 4 * R * H * P * BS * D
    us = triton.testing.do_bench(prefix_only, warmup=20, rep=200) * 1e3
    print(f"prefix pass: {flops / us / 1e6:.0f} TFLOP/s")
    for splits in [int(x) for x in args.prefix_splits.split(",") if x]:
        split_out, _ = prefix_attention(q, kv, table[0], pb, scale, num_splits=splits)
        us = triton.testing.do_bench(lambda: prefix_attention(q, kv, table[0], pb, scale, num_splits=splits),
                                     warmup=20, rep=200) * 1e3
        print(f"  prefix pass, {splits} splits: {us:8.1f} us (max diff {(split_out - out).abs().max().item():.1e})")
    if args.sweep:
        original = tuning.prefix_attention_launch
        results = []
        for bm, tn, warps, stages in itertools.product((64, 128), (32, 64, 128), (4, 8), (1, 2, 3)):
            launch = tuning.PrefixAttentionLaunch(bm, tn, 128, warps, stages)
            cascade_attention.tuning.prefix_attention_launch = lambda *, head_size, device, launch=launch: launch
            try:
                o, _ = prefix_only()
                bad = (o - out).abs().max().item()
                us = triton.testing.do_bench(prefix_only, warmup=10, rep=100) * 1e3
                results.append((us, bm, tn, warps, stages, bad))
            except Exception as exc:  # out of shared memory, etc.
                print(f"  {bm}x{tn} w{warps} s{stages}: {type(exc).__name__}")
        cascade_attention.tuning.prefix_attention_launch = original
        for us, bm, tn, warps, stages, bad in sorted(results)[:8]:
            print(f"  BLOCK_M {bm:3d} TILE_N {tn:3d} warps {warps} stages {stages}: {us:8.1f} us ({flops / us / 1e6:.0f} "
                  f"TFLOP/s, max diff {bad:.1e})")


if __name__ == "__main__":
    main()
