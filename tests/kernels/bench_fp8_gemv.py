"""GPU check + timing of the FP8 W8A8 decode GEMV (not collected by pytest; run by hand on a GPU):

    python tests/kernels/bench_fp8_gemv.py [--rows 1,2,4] [--sweep]

For each of Llama-3-8B's projections (qkv with the fused RMSNorm + residual, o, gate_up with SiLU·mul, down) and
row count it captures a CUDA graph of one product per weight copy (as 32 layers would: no weight stays in L2)
and reports the time per product and weight GB/s of: bf16 gemv (kernels/gemv.py, its fused forms); FP8
fp8_quantize + torch._scaled_mm (the layers' path for more rows, plus the rmsnorm kernel / silu_and_mul it needs
unfused); the FP8 GEMV (kernels/fp8_gemv.py) tuned, and with --sweep every launch of a grid. Then a 32-layer
decode estimate (the four products x 32; attention, lm_head and the rest excluded).

Checks before timing: the FP8 GEMV against fp8_gemv_ref (fp32 summation order), its in-kernel q_x / s_x bit for
bit fp8_quantize's (and, for the fused norm, rmsnorm + fp8_quantize's: the exactness claim of the fused norm on
this GPU; if it prints MISMATCH, run with PAGODA_FP8_GEMV_NORM=0).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

from pagoda.kernels import tuning
from pagoda.kernels.activation import silu_and_mul
from pagoda.kernels.fp8_gemv import fp8_gemv, fp8_gemv_ref
from pagoda.kernels.fp8_quant import fp8_quantize
from pagoda.kernels.gemv import gemv
from pagoda.kernels.rmsnorm import rmsnorm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gemv import graph_seconds  # noqa: E402  (the kernel benchmarks' shared timer)
from pagoda.model_executor.layers.quantization import fp8_utils

SHAPES = {  # name: (N of the weight, K, form)
    "qkv_proj": (6144, 4096, "norm"),
    "o_proj": (4096, 4096, "plain"),
    "gate_up_proj": (28672, 4096, "gated"),
    "down_proj": (4096, 14336, "plain"),
}
LAYERS = 32


def per_product(fn, copies) -> float:
    return graph_seconds(lambda: [fn(c) for c in copies]) / len(copies)


def check(name, m, x, q_w, w_scale, form, g, res) -> None:
    gated, norm = form == "gated", form == "norm"
    kw = {"norm_weight": g, "eps": 1e-5, "residual": res, "residual_out": torch.empty_like(res)} if norm else {}
    debug = {}
    out = fp8_gemv(x, q_w, w_scale, None, None, silu_and_mul=gated, debug=debug, **kw)
    ref = fp8_gemv_ref(x, q_w, w_scale, None, None, silu_and_mul=gated,
                       **({"norm_weight": g, "eps": 1e-5, "residual": res} if norm else {}))
    if norm:
        work = res.clone()
        normed, _ = rmsnorm(x, g, 1e-5, work)
        q_k, s_k = fp8_quantize(normed)
        exact_res = torch.equal(kw["residual_out"], work)
    else:
        q_k, s_k = fp8_quantize(x)
        exact_res = True
    exact = torch.equal(debug["q"].view(torch.uint8), q_k.view(torch.uint8)) and torch.equal(debug["scale"], s_k)
    err = ((out.float() - ref[0].float()).abs().max() / ref[0].float().abs().max().clamp(min=1e-30)).item()
    status = "ok" if exact and exact_res and err < 2e-2 else "MISMATCH"
    print(f"check {name:13} M={m}: q_x/s_x bit-exact vs {'rmsnorm+' if norm else ''}fp8_quantize: {exact}"
          f"{'' if not norm else f', residual exact: {exact_res}'}, max rel err vs fp8_gemv_ref {err:.2e} -> {status}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,2,4")
    p.add_argument("--sweep", action="store_true")
    args = p.parse_args()
    dev, dtype = "cuda", torch.bfloat16
    rows = [int(r) for r in args.rows.split(",")]
    grid = list(itertools.product((4, 8, 16, 32), (256, 512, 1024), (4, 8), (2, 3, 4)))
    totals = {m: {} for m in rows}
    print(f"{'shape':13} {'M':>2} {'kernel':44} {'us':>8} {'GB/s':>7}")
    for name, (n, k, form) in SHAPES.items():
        copies = 4 if n * k > 1e8 else 16
        w16 = [torch.randn(n, k, device=dev, dtype=dtype) / k ** 0.5 for _ in range(copies)]
        w8 = []
        for w in w16:
            s = fp8_utils.per_token_scales(w)  # per-row scales
            w8.append((fp8_utils.quantize(w, s), s))
        g = (1 + torch.randn(k, device=dev) / 8).to(dtype)
        gated, norm = form == "gated", form == "norm"
        n_out = n // 2 if gated else n
        for m in rows:
            x = torch.randn(m, k, device=dev, dtype=dtype)
            res = torch.randn(m, k, device=dev, dtype=dtype)
            res_out = torch.empty_like(res)
            check(name, m, x, *w8[0], form, g, res)
            nk = {"norm_weight": g, "eps": 1e-5, "residual": res, "residual_out": res_out} if norm else {}

            def bf16(w):
                return gemv(x, w, None, silu_and_mul=gated, **nk)

            def scaled_mm(wq):
                a = x
                if norm:
                    res_out.copy_(res)
                    a, _ = rmsnorm(x, g, 1e-5, res_out)
                out = fp8_utils.fp8_linear_scaled_mm(*fp8_quantize(a), wq[0], wq[1], None, dtype)
                return silu_and_mul(out) if gated else out

            def fp8(wq, launch=None):
                return fp8_gemv(x, wq[0], wq[1], None, None, launch=launch, silu_and_mul=gated, **nk)

            tuned = tuning.fp8_gemv_launch(m, n_out, k, gated=gated, norm=norm)
            results = [("bf16 gemv" + (" (fused)" if form != "plain" else ""), per_product(bf16, w16), 2),
                       ("fp8 quant+scaled_mm" + (" (+norm/act)" if form != "plain" else ""),
                        per_product(scaled_mm, w8), 1),
                       (f"fp8 gemv tuned {tuned.block_n}x{tuned.block_k} s{tuned.split_k} w{tuned.num_warps} "
                        f"st{tuned.num_stages}", per_product(fp8, w8), 1)]
            if args.sweep:
                sweep = []
                for bn, bk, warps, stages in grid:
                    if norm and warps != tuned.num_warps:
                        continue  # the fused norm's warp count is fixed (exactness)
                    launch = tuning.GemvLaunch(bn, bk, 1, warps, stages)
                    try:
                        sweep.append((f"  fp8 gemv {bn}x{bk} w{warps} st{stages}",
                                      per_product(lambda wq: fp8(wq, launch), w8), 1))
                    except Exception as exc:  # out of resources etc.
                        print(f"  {bn}x{bk} w{warps} st{stages}: {type(exc).__name__}")
                results += sorted(sweep, key=lambda r: r[1])[:8]
            for label, sec, bytes_per in results:
                print(f"{name:13} {m:>2} {label:44} {sec * 1e6:8.1f} {n * k * bytes_per / sec / 1e9:7.0f}")
            for label, sec, _ in results[:3]:
                key = label.split(" tuned")[0].split(" (")[0]
                totals[m][key] = totals[m].get(key, 0.0) + sec
    for m in rows:
        est = "  ".join(f"{key}: {sec * LAYERS * 1e3:.2f} ms" for key, sec in totals[m].items())
        print(f"M={m}: {LAYERS} layers x (qkv + o + gate_up + down) per decode step -> {est}")


if __name__ == "__main__":
    main()
