"""GPU check + timing of the int4 GEMV and GEMM against bf16 (not collected by pytest; run by hand on a GPU):

    python tests/kernels/bench_int4.py [--sweep] [--rows 1,2,4] [--gemm-rows 16,64,256,2048] [--group 128]

For each of Llama-3-8B's projection shapes (qkv 4096->6144, o 4096->4096, gate_up 4096->28672, down
14336->4096) it builds random weights in the int4 layout (pagoda/kernels/int4_layout.py) and times, per
product, one CUDA graph of many copies (each its own weight, as the layers of a model: no weight stays in L2):
- decode rows (--rows): bf16 cuBLAS (F.linear), bf16 gemv, the int4 GEMV's tuned launch (and its fused forms:
  SiLU·mul on gate_up, RMSNorm + residual on qkv), the torch dequantize-then-matmul path, and with --sweep
  the best launches of a grid;
- prefill rows (--gemm-rows): bf16 cuBLAS, the int4 GEMM (with --sweep, a grid of its tiles), at most 16 rows
  the operand-swapped small-batch GEMM (int4_gemm_small_m.py; with --sweep, a grid of its launches), the dequant
  kernel alone and dequant + cuBLAS (the path for M >= tuning.INT4_DEQUANT_MIN_M); at the end, per M, the
  sum over one layer's four products of bf16 vs the dispatched int4 path (the faster of GEMM / dequant + cuBLAS
  is printed too, to set INT4_DEQUANT_MIN_M).
GB/s counts the quantized bytes (packed weight + scales + zeros) for int4 and the bf16 weight for bf16. At the
end, the sum over one decode step of Llama-3-8B's 32 layers (int4 products at M = 1) against the 1.6 ms/token
target's share (the bf16 lm_head, 1.05 GB, comes on top). Results are checked against the fp32 reference.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gemv import graph_seconds  # noqa: E402
from pagoda.kernels import int4_layout, tuning  # noqa: E402
from pagoda.kernels.gemv import gemv  # noqa: E402
from pagoda.kernels.int4_dequant import int4_dequantize  # noqa: E402
from pagoda.kernels.int4_gemm import int4_gemm  # noqa: E402
from pagoda.kernels.int4_gemm_small_m import int4_gemm_small_m  # noqa: E402
from pagoda.kernels.int4_gemv import int4_gemv  # noqa: E402

SHAPES = {  # name: (N, K) of Llama-3-8B's weights
    "qkv_proj": (6144, 4096),
    "o_proj": (4096, 4096),
    "gate_up_proj": (28672, 4096),
    "down_proj": (4096, 14336),
}
LAYERS = 32
HBM_BYTES_PER_S = 4.25e12  # measured device copy on the H200 (DESIGN §5)


def int4_weight(n: int, k: int, group: int, dtype, device="cuda"):
    """(qweight, scales, zeros) of a random [n, k] weight in the int4 layout, made on the device."""
    qweight = torch.randint(-2**31, 2**31 - 1, (n, k // 8), dtype=torch.int32, device=device)
    scales = (torch.rand(n, k // group, device=device) * 0.02 / 8 + 0.001).to(dtype)
    zeros = torch.randint(0, 16, (n, k // group), dtype=torch.uint8, device=device)
    return qweight, scales, zeros


def quantized_bytes(weight) -> int:
    return sum(t.numel() * t.element_size() for t in weight if t is not None)


def per_product(fn, x, weights, reps: int = 20) -> float:
    """Seconds per product: one graph of len(weights) products fn(x, weight), replayed `reps` times."""

    def body():
        for w in weights:
            fn(x, w)

    return graph_seconds(body, reps) / len(weights)


def precompile(calls) -> None:
    """Compile the kernel variants `calls` launch, on every core at once (kernels/background_compile.py's
    compile-only mode: the launches compile and run nothing), so a sweep's timing loop finds them compiled."""
    from concurrent.futures import ThreadPoolExecutor

    from pagoda.kernels.background_compile import compile_only

    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        with compile_only(pool) as stats:
            for call in calls:
                try:
                    call()
                except Exception:  # noqa: BLE001 - a launch the wrapper refuses: the timing loop skips it too
                    pass
    print(f"  precompiled {stats.submitted} variants in {stats.wall_seconds:.1f} s ({stats.failed} failed)", flush=True)


# The sweep's grid: rows per program, inputs per iteration, K splits (plain form only), warps, pipeline stages;
# --grid "bn=64,128;st=2,3" replaces some axes.
GRID = {"bn": (16, 32, 64), "bk": (256, 512, 1024), "sk": (1, 2, 4), "nw": (4, 8), "st": (1, 2)}
SWEEP_COPIES = 16  # weights per timed graph in a sweep (16 gate_up copies are ~0.9 GB: none stays in L2)


def gemv_form_call(form: str, x, dtype):
    """fn(x, weight, launch) running the int4 GEMV in one of its forms (tuning.INT4_GEMV_FORMS)."""
    if form == "gated":
        return lambda a, w, launch: int4_gemv(a, *w, launch=launch, silu_and_mul=True)
    if form == "norm":
        g, res, res_out = torch.ones(x.shape[1], device="cuda", dtype=dtype), torch.randn_like(x), torch.empty_like(x)
        return lambda a, w, launch: int4_gemv(a, *w, launch=launch, norm_weight=g, residual=res, residual_out=res_out)
    return lambda a, w, launch: int4_gemv(a, *w, launch=launch)


def sweep_gemv(form: str, n: int, k: int, m: int, x, weights, qbytes: int, dtype, table: list,
               grid_axes: dict) -> list:
    """Time a grid of launches of one GEMV form; the tuned launch first, then the five fastest. The fastest goes
    into `table` (a row of PAGODA_INT4_GEMV_TABLE's JSON form, tuning.load_int4_gemv_table; n is the output's features: n / 2 when gated)."""
    fn = gemv_form_call(form, x, dtype)
    axes = dict(GRID, **grid_axes)
    splits = axes["sk"] if form == "plain" else (1,)  # the fused forms never split
    grid = [tuning.Int4GemvLaunch(bn, bk, sk, nw, st) for bn, bk, sk, nw, st in
            itertools.product(axes["bn"], axes["bk"], splits, axes["nw"], axes["st"]) if bk <= k]
    precompile([lambda launch=launch: fn(x, weights[0], launch) for launch in grid])
    out_n = n // 2 if form == "gated" else n
    tuned = tuning.int4_gemv_launch(m, out_n, k, form)
    swept = []
    for launch in [tuned] + grid:
        try:
            t = per_product(lambda a, w, launch=launch: fn(a, w, launch), x, weights[:SWEEP_COPIES], reps=5)
        except Exception as exc:  # noqa: BLE001 - a launch that does not fit is skipped
            print(f"  skip {form} {launch}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        swept.append((launch, t))
    if not swept:
        return []
    label = lambda launch: (f"{form} {launch.block_n}x{launch.block_k} s{launch.split_k} w{launch.num_warps} "
                            f"st{launch.num_stages}")
    best, t_best = min(swept[1:] or swept, key=lambda r: r[1])
    table.append({"form": form, "m": m, "n": out_n, "k": k, "block_n": best.block_n, "block_k": best.block_k,
                  "split_k": best.split_k, "num_warps": best.num_warps, "num_stages": best.num_stages,
                  "us": round(t_best * 1e6, 2)})
    t_tuned = swept[0][1] if swept[0][0] == tuned else float("nan")
    print(f"  sweep {form} M={m} N={out_n} K={k}: {len(swept) - 1} launches, best {label(best)} "
          f"{t_best * 1e6:.2f} us against the current choice's {t_tuned * 1e6:.2f} us", flush=True)
    return [(f"sweep {label(launch)}", t, qbytes) for launch, t in sorted(swept[1:], key=lambda r: r[1])[:5]]


def parse_grid(spec: str) -> dict:
    """'bn=64,128;st=2,3' -> {"bn": (64, 128), "st": (2, 3)} (axes of GRID)."""
    axes = {}
    for part in filter(None, spec.split(";")):
        key, _, values = part.partition("=")
        if key not in GRID:
            raise argparse.ArgumentTypeError(f"--grid axis {key!r} is not one of {sorted(GRID)}")
        axes[key] = tuple(int(v) for v in values.split(","))
    return axes


def check(x, weight, group) -> float:
    """max |kernel - fp32 reference| relative to the reference's largest value."""
    ref = int4_layout.int4_linear_ref(x, *weight, group).float()
    out = (int4_gemv(x, *weight) if x.shape[0] <= tuning.GEMV_MAX_M else int4_gemm(x, *weight)).float()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-9)).item()


def decode_rows(name, n, k, m, weights, bf16, group, args, dtype, table) -> float:
    """Print the decode-row timings of one shape; return the int4 GEMV's tuned time (seconds)."""
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    qbytes, fbytes = quantized_bytes(weights[0]), n * k * 2
    tuned = tuning.int4_gemv_launch(m, n, k)
    rows = [("bf16 cublas F.linear", per_product(lambda a, w: F.linear(a, w), x, bf16), fbytes),
            ("bf16 gemv", per_product(lambda a, w: gemv(a, w), x, bf16), fbytes)]
    t_int4 = per_product(lambda a, w: int4_gemv(a, *w), x, weights)
    rows.append((f"int4 gemv tuned {tuned.block_n}x{tuned.block_k} s{tuned.split_k} w{tuned.num_warps} "
                 f"st{tuned.num_stages}", t_int4, qbytes))
    if name == "gate_up_proj":
        rows.append(("int4 gemv + silu_and_mul fused",
                     per_product(lambda a, w: int4_gemv(a, *w, silu_and_mul=True), x, weights), qbytes))
    if name == "qkv_proj":
        g, res, res_out = torch.ones(k, device="cuda", dtype=dtype), torch.randn_like(x), torch.empty_like(x)
        rows.append(("int4 gemv + rmsnorm/residual fused", per_product(
            lambda a, w: int4_gemv(a, *w, norm_weight=g, residual=res, residual_out=res_out), x, weights), qbytes))
    rows.append(("torch dequantize + F.linear", per_product(
        lambda a, w: F.linear(a, int4_layout.dequantize(w[0], w[1], w[2], group, dtype)), x, weights[:2], reps=5),
        qbytes))
    if args.sweep:
        forms = ["plain"] + (["gated"] if name == "gate_up_proj" else []) + (["norm"] if name == "qkv_proj" else [])
        for form in forms:
            rows += sweep_gemv(form, n, k, m, x, weights, qbytes, dtype, table, args.grid)
    for label, t, nbytes in rows:
        print(f"{name:14} {m:>5} {label:40} {t * 1e6:9.2f} {nbytes / t / 1e9:7.0f}")
    print(f"{name:14} {m:>5} max |int4 gemv - fp32 ref| / max |ref| = {check(x, weights[0], group):.2e}", flush=True)
    return t_int4


def prefill_rows(name, n, k, m, weights, bf16, group, args, dtype, totals) -> None:
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    flops, qbytes = 2 * m * n * k, quantized_bytes(weights[0])
    tuned = tuning.int4_gemm_launch(m, n, k)
    ws = torch.empty(n, k, device="cuda", dtype=dtype)
    t_bf16 = per_product(lambda a, w: F.linear(a, w), x, bf16[:2], reps=10)
    t_gemm = per_product(lambda a, w: int4_gemm(a, *w), x, weights[:4], reps=10)
    t_deq = per_product(lambda a, w: int4_dequantize(*w, ws), x, weights[:4], reps=10)
    t_deq_mm = per_product(lambda a, w: F.linear(a, int4_dequantize(*w, ws)), x, weights[:4], reps=10)
    rows = [("bf16 cublas F.linear", t_bf16),
            (f"int4 gemm tuned {tuned.block_m}x{tuned.block_n} w{tuned.num_warps} st{tuned.num_stages}", t_gemm),
            ("int4 dequant kernel alone", t_deq), ("int4 dequant + cublas", t_deq_mm)]
    t_small = float("inf")
    if m <= tuning.INT4_SMALL_M_MAX:
        small = tuning.int4_gemm_small_m_launch(m, n, k)
        t_small = per_product(lambda a, w: int4_gemm_small_m(a, *w), x, weights[:SWEEP_COPIES], reps=10)
        rows.append((f"int4 small-M gemm {small.block_n}x{small.block_k} s{small.split_k} w{small.num_warps} "
                     f"st{small.num_stages}", t_small))
        if args.sweep:
            grid = [tuning.Int4SmallMLaunch(bn, bk, sk, nw, st) for bn, bk, sk, nw, st in
                    itertools.product((32, 64, 128), (128, 256, 512), (1, 2, 4, 8), (4, 8), (2, 3))]
            precompile([lambda launch=launch: int4_gemm_small_m(x, *weights[0], launch=launch) for launch in grid])
            swept = []
            for launch in grid:
                try:
                    t = per_product(lambda a, w, launch=launch: int4_gemm_small_m(a, *w, launch=launch), x,
                                    weights[:SWEEP_COPIES], reps=5)
                except Exception as exc:  # noqa: BLE001
                    print(f"  skip {launch}: {type(exc).__name__}")
                    continue
                swept.append((f"small-M {launch.block_n}x{launch.block_k} s{launch.split_k} w{launch.num_warps} "
                              f"st{launch.num_stages}", t))
            swept.sort(key=lambda r: r[1])
            rows += swept[:5]
            t_small = min(t_small, swept[0][1]) if swept else t_small
        out = int4_gemm_small_m(x, *weights[0]).float()
        ref = int4_layout.int4_linear_ref(x, *weights[0], group).float()
        print(f"{name:14} {m:>5} max |int4 small-M gemm - fp32 ref| / max |ref| = "
              f"{((out - ref).abs().max() / ref.abs().max().clamp_min(1e-9)).item():.2e}")
    if args.sweep:
        swept = []
        grid = [tuning.Int4GemmLaunch(bm, bn, nw, st) for bm, bn, nw, st in
                itertools.product((16, 32, 64, 128), (64, 128, 256), (4, 8), (2, 3, 4))
                if bm <= 2 * tuning.next_power_of_2(m)]
        precompile([lambda launch=launch: int4_gemm(x, *weights[0], launch=launch) for launch in grid])
        for launch in grid:
            bm, bn, nw, st = launch.block_m, launch.block_n, launch.num_warps, launch.num_stages
            try:
                t = per_product(lambda a, w, launch=launch: int4_gemm(a, *w, launch=launch), x, weights[:4], reps=5)
            except Exception as exc:  # noqa: BLE001
                print(f"  skip {launch}: {type(exc).__name__}")
                continue
            swept.append((f"int4 gemm {bm}x{bn} w{nw} st{st}", t))
        rows += sorted(swept, key=lambda r: r[1])[:5]
    for label, t in rows:
        print(f"{name:14} {m:>5} {label:40} {t * 1e6:9.2f} {qbytes / t / 1e9:7.0f} {flops / t / 1e12:7.1f} TFLOP/s")
    deq_gb = (qbytes + n * k * 2) / t_deq / 1e9
    print(f"{name:14} {m:>5} dequant kernel: {deq_gb:.0f} GB/s on packed + written bytes", flush=True)
    dispatched = (t_small if tuning.int4_small_m_applies(m) else t_deq_mm if tuning.int4_dequant_applies(m) else t_gemm)
    total = totals.setdefault(m, [0.0, 0.0, 0.0, 0.0])
    total[0] += t_bf16
    total[1] += dispatched
    total[2] += min(t_gemm, t_deq_mm)
    total[3] += t_small
    ref = int4_layout.dequantize(weights[0][0], weights[0][1], weights[0][2], group, dtype)
    exact = torch.equal(int4_dequantize(*weights[0], ws), ref)
    print(f"{name:14} {m:>5} max |int4 gemm - fp32 ref| / max |ref| = {check(x, weights[0], group):.2e}; "
          f"dequant kernel == torch dequantize: {exact}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--rows", default="1,2,4")
    p.add_argument("--gemm-rows", default="16,64,256,2048")
    p.add_argument("--group", type=int, default=128, help="group size (-1: the whole input)")
    p.add_argument("--grid", default="", type=parse_grid, help='sweep axes to replace, e.g. "bn=64,128;st=2,3"')
    p.add_argument("--write-table", default=None, metavar="FILE",
                   help="with --sweep: write the fastest launch per (form, M, N, K) as JSON (PAGODA_INT4_GEMV_TABLE)")
    args = p.parse_args()
    dtype = torch.bfloat16
    decode = [int(r) for r in args.rows.split(",") if r]
    prefill = [int(r) for r in args.gemm_rows.split(",") if r]
    step = 0.0
    totals: dict[int, list[float]] = {}
    table: list[dict] = []
    print(f"{'shape':14} {'M':>5} {'kernel':40} {'us':>9} {'GB/s':>7}")
    for name, (n, k) in SHAPES.items():
        group = k if args.group == -1 else args.group
        copies = max(4, min(64, int(2e9 // (n * k // 2))))  # ~2 GB of packed weights: none stays in L2
        weights = [int4_weight(n, k, group, dtype) for _ in range(copies)]
        bf16 = [torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(max(4, copies // 4))]
        for m in decode:
            t = decode_rows(name, n, k, m, weights, bf16, group, args, dtype, table)
            if m == 1:
                step += t * LAYERS
        for m in prefill:
            prefill_rows(name, n, k, m, weights, bf16, group, args, dtype, totals)
        del weights, bf16
        torch.cuda.empty_cache()
    for m, (t_bf16, t_int4, t_best, t_small) in sorted(totals.items()):
        path = ("small-M gemm" if tuning.int4_small_m_applies(m) else
                "dequant + cublas" if tuning.int4_dequant_applies(m) else "int4 gemm")
        small = f", small-M gemm (fastest launch) {t_small * 1e6:8.1f} us" if t_small != float("inf") else ""
        print(f"prefill M = {m:5}: one layer's 4 products bf16 {t_bf16 * 1e6:8.1f} us, int4 dispatched ({path}) "
              f"{t_int4 * 1e6:8.1f} us ({t_int4 / t_bf16:.2f}x), faster of gemm / dequant {t_best * 1e6:8.1f} us{small}")
    if args.write_table:
        import json

        with open(args.write_table, "w") as f:
            json.dump(table, f, indent=1)
        print(f"wrote {len(table)} tuned launches to {args.write_table}")
    decode_forms = {("norm", 6144, 4096), ("plain", 4096, 4096), ("gated", 14336, 4096), ("plain", 4096, 14336)}
    best_layer = [r["us"] for r in table if r["m"] == 1 and (r["form"], r["n"], r["k"]) in decode_forms]
    if len(best_layer) == len(decode_forms):
        print(f"swept decode step at M = 1 (qkv + norm, o, gate_up + SiLU, down; each its fastest launch): "
              f"{sum(best_layer) * LAYERS / 1e3:.3f} ms for 32 layers")
    if 1 in decode:
        qbytes = LAYERS * sum(n * k // 2 + n * (k // (k if args.group == -1 else args.group)) * 3  # + bf16 scales, u8 zeros
                              for n, k in SHAPES.values())
        print(f"\ndecode step, 32 layers' int4 products at M = 1: {step * 1e3:.3f} ms for {qbytes / 1e9:.2f} GB "
              f"= {qbytes / step / 1e9:.0f} GB/s ({qbytes / step / HBM_BYTES_PER_S:.0%} of {HBM_BYTES_PER_S / 1e12} TB/s)"
              f"; + the bf16 lm_head (1.05 GB) at the same rate ~ {(step + 1.05e9 / (qbytes / step)) * 1e3:.3f} ms/token")


if __name__ == "__main__":
    main()
