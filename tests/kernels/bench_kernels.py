"""GPU check + micro-benchmark of the kernels (not collected by pytest; run by hand on a GPU):

    python tests/kernels/bench_kernels.py

Checks paged attention at real model shapes against the torch reference (bf16/fp16), then times
each kernel with triton.testing.do_bench and prints achieved bandwidth / FLOP rates, so the
heuristics in pagoda/kernels/tuning.py can be tuned.
"""

from __future__ import annotations

import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
from test_paged_attention import make_batch  # noqa: E402

from pagoda.kernels import tuning  # noqa: E402
from pagoda.kernels.activation import silu_and_mul  # noqa: E402
from pagoda.kernels.kv_cache_write import write_kv_cache  # noqa: E402
from pagoda.kernels.paged_attention import paged_attention, paged_attention_ref  # noqa: E402
from pagoda.kernels.rmsnorm import rmsnorm  # noqa: E402
from pagoda.kernels.rotary import apply_rotary, build_cos_sin_cache  # noqa: E402

H, HKV, D = 32, 8, 128  # Llama-3-8B attention shape


def attn_case(name, query_lens, seq_lens, dtype=torch.bfloat16, block_size=16, check=True, splits=(None,),
              heads=(H, HKV, D)):
    nh, nkv, hd = heads
    q, kv, md = make_batch(query_lens, seq_lens, num_heads=nh, num_kv_heads=nkv, head_size=hd,
                           block_size=block_size, dtype=dtype, device="cuda")
    kv = torch.nan_to_num(kv, nan=0.0)
    scale = hd**-0.5
    rows = []
    for s in splits:
        launch = tuning.attention_launch(num_reqs=md.num_reqs, num_tokens=md.num_tokens, max_query_len=md.max_query_len,
                                         max_seq_len=md.max_seq_len, num_heads=nh, num_kv_heads=nkv, head_size=hd,
                                         device=q.device, num_splits=s)
        err = float("nan")
        if check:
            out = paged_attention(q, kv, md, scale, num_splits=s)
            ref = paged_attention_ref(q, kv, md.query_start_loc_cpu, md.seq_lens_cpu, md.block_tables, scale)
            err = (out.float() - ref.float()).abs().max().item()
        ms = triton.testing.do_bench(lambda: paged_attention(q, kv, md, scale, num_splits=s))
        kv_bytes = sum(seq_lens) * nkv * hd * 2 * kv.element_size()
        flops = sum(4 * ql * sl * nh * hd for ql, sl in zip(query_lens, seq_lens))  # upper bound (no causal halving)
        rows.append((name, str(dtype).split(".")[-1], block_size, launch.num_splits, f"{err:.1e}", f"{ms * 1e3:.1f}",
                     f"{kv_bytes / ms / 1e6:.0f}", f"{flops / ms / 1e9:.1f}"))
    return rows


def main():
    torch.manual_seed(0)
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name())
    rows = []
    rows += attn_case("decode b1 8k", [1], [8192], splits=(1, None))
    rows += attn_case("decode b1 32k", [1], [32768], splits=(1, None))
    rows += attn_case("decode b4 16k", [1] * 4, [16384] * 4, splits=(1, None))
    rows += attn_case("decode b64 1k", [1] * 64, [1024] * 64, splits=(1, None))
    rows += attn_case("decode b256 2k", [1] * 256, [2048] * 256, check=False)
    rows += attn_case("prefill 1x2048", [2048], [2048])
    rows += attn_case("prefill 4x1024 fp16", [1024] * 4, [1024] * 4, dtype=torch.float16)
    rows += attn_case("mixed 512+prefix, 30 dec", [512] + [1] * 30, [1536] + [2000] * 30)
    rows += attn_case("decode b8 bs128", [1] * 8, [3000] * 8, block_size=128)
    rows += attn_case("mixed h256 bs32", [37, 1, 1], [300, 900, 64], block_size=32, heads=(8, 2, 256))
    rows += attn_case("mixed h80 g3", [37, 1, 1], [300, 900, 64], block_size=16, heads=(12, 4, 80))
    rows += attn_case("mixed fp32", [37, 1, 1], [300, 900, 64], dtype=torch.float32)
    print(f"{'case':28} {'dtype':9} {'bs':>4} {'spl':>4} {'maxerr':>8} {'us':>8} {'KV GB/s':>8} {'TFLOP/s':>8}")
    for r in rows:
        print(f"{r[0]:28} {r[1]:9} {r[2]:>4} {r[3]:>4} {r[4]:>8} {r[5]:>8} {r[6]:>8} {r[7]:>8}")

    dt = torch.bfloat16
    T, hidden, inter = 4096, 4096, 14336
    x = torch.randn(T, hidden, device="cuda", dtype=dt)
    w = torch.randn(hidden, device="cuda", dtype=dt)
    res = torch.randn_like(x)
    ms = triton.testing.do_bench(lambda: rmsnorm(x, w, 1e-5))
    print(f"rmsnorm [{T},{hidden}]          {ms * 1e3:8.1f} us  {2 * x.numel() * 2 / ms / 1e6:6.0f} GB/s")
    ms = triton.testing.do_bench(lambda: rmsnorm(x, w, 1e-5, res))
    print(f"fused add rmsnorm [{T},{hidden}] {ms * 1e3:8.1f} us  {4 * x.numel() * 2 / ms / 1e6:6.0f} GB/s")
    g = torch.randn(T, 2 * inter, device="cuda", dtype=dt)
    ms = triton.testing.do_bench(lambda: silu_and_mul(g))
    print(f"silu_and_mul [{T},{2 * inter}]    {ms * 1e3:8.1f} us  {1.5 * g.numel() * 2 / ms / 1e6:6.0f} GB/s")
    qkv = torch.randn(T, (H + 2 * HKV) * D, device="cuda", dtype=dt)
    q = qkv[:, : H * D].view(T, H, D)
    k = qkv[:, H * D : (H + HKV) * D].view(T, HKV, D)
    v = qkv[:, (H + HKV) * D :].view(T, HKV, D)
    cache = build_cos_sin_cache(500000.0, D, 8192, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                                device="cuda")
    pos = torch.randint(0, 8192, (T,), device="cuda")
    ms = triton.testing.do_bench(lambda: apply_rotary(pos, q, k, cache, True))
    print(f"rotary q/k [{T},{H}+{HKV},{D}]    {ms * 1e3:8.1f} us  {2 * (H + HKV) * T * D * 2 / ms / 1e6:6.0f} GB/s")
    kvc = torch.zeros(2, T // 16 + 1, 16, HKV, D, device="cuda", dtype=dt)
    slots = torch.randperm(T, device="cuda")
    ms = triton.testing.do_bench(lambda: write_kv_cache(kvc, k, v, slots))
    print(f"kv write [{T},{HKV},{D}]         {ms * 1e3:8.1f} us  {4 * k.numel() * 2 / ms / 1e6:6.0f} GB/s")


def causal_flops(query_lens, seq_lens):
    """FLOPs of QK^T and PV with the causal mask: a query after c cached positions sees c + its own prefix."""
    return sum(4 * H * D * (q * (s - q) + q * (q + 1) / 2) for q, s in zip(query_lens, seq_lens))


def sweep():
    """Time paged attention under forced launch settings (block_m, tile_n, num_warps, num_stages);
    `--sweep WORD ...` keeps the cases whose name contains a WORD."""
    import dataclasses

    original = tuning.attention_launch
    cases = {
        "prefill 1x2048": ([2048], [2048]),
        "prefill 1x16384 (W9)": ([16384], [16384]),
        "prefill chunk 8192 after 8192": ([8192], [16384]),
        "prefill 8x512 chunk+prefix": ([512] * 8, [2048] * 8),
        "decode b64 1k": ([1] * 64, [1024] * 64),
        "decode b256 2k": ([1] * 256, [2048] * 256),
        "decode b1000 192 (W2)": ([1] * 1000, [192] * 1000),
        "decode b1 384 (W4)": ([1], [384]),
    }
    only = [a for a in sys.argv[2:] if not a.startswith("-")]
    cases = {k: v for k, v in cases.items() if not only or any(o in k for o in only)}
    settings = [(bm, tn, w, st) for bm in (16, 64, 128) for tn in (32, 64, 128) for w in (4, 8) for st in (2, 3)]
    for name, (ql, sl) in cases.items():
        q, kv, md = make_batch(ql, sl, num_heads=H, num_kv_heads=HKV, head_size=D, block_size=16,
                               dtype=torch.bfloat16, device="cuda")
        kv = torch.nan_to_num(kv, nan=0.0)
        results = []
        for bm, tn, w, st in settings:
            if max(ql) > 1 and bm == 16:
                continue
            if max(ql) == 1 and bm == 128:
                continue

            def forced(**kw):
                base = original(**kw)
                return dataclasses.replace(base, block_m=bm, block_q=bm // (H // HKV), tile_n=tn, num_warps=w,
                                           num_stages=st)

            tuning.attention_launch = forced
            try:
                ms = triton.testing.do_bench(lambda: paged_attention(q, kv, md, D**-0.5))
                kv_bytes = sum(sl) * HKV * D * 2 * kv.element_size()
                results.append((ms, bm, tn, w, f"{st} ({kv_bytes / ms / 1e6:.0f} GB/s, "
                                               f"{causal_flops(ql, sl) / ms / 1e9:.0f} TFLOP/s)"))
            except Exception as e:  # out of shared memory etc.
                results.append((float("inf"), bm, tn, w, f"{st} {type(e).__name__}"))
            finally:
                tuning.attention_launch = original
        results.sort(key=lambda r: r[0])
        default_ms = triton.testing.do_bench(lambda: paged_attention(q, kv, md, D**-0.5))
        gbs = sum(sl) * HKV * D * 2 * kv.element_size() / default_ms / 1e6
        print(f"{name}: default {default_ms * 1e3:.1f} us ({gbs:.0f} GB/s, {causal_flops(ql, sl) / default_ms / 1e9:.0f} "
              "TFLOP/s); best: " +
              "; ".join(f"bm{bm} tn{tn} w{w} s{st} {ms * 1e3:.1f}us" for ms, bm, tn, w, st in results[:5]))


if __name__ == "__main__":
    if "--sweep" in sys.argv:
        sweep()
    else:
        main()
