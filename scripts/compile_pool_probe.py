"""Threads or processes for start-up's Triton compiles? A probe for the cold start (issue 24).

    python scripts/compile_pool_probe.py [--jobs 48] [--workers 16]

Compiles variants of the fused sampling kernel (pagoda/kernels/sample.py) for sm_90 ahead of time (no GPU
needed: Triton ships ptxas), each set into an empty cache: serially (the first 8), on a pool of threads and
on a pool of processes (spawned, each importing Triton and the kernel's module once before the timed set).
If processes beat threads by much, the compile pass (pagoda/worker/precompile.py) is GIL-bound.
"""
import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_ALWAYS_COMPILE"] = "1"


def build(job):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from pagoda.kernels.sample import _race_kernel

    split, dtype, warps = job
    names = list(_race_kernel.arg_names)
    ptrs = {"logits_ptr": f"*{dtype}", "temperature_ptr": "*fp32", "seeds_ptr": "*i64", "threshold_ptr": "*fp32",
            "out_ptr": "*i64", "best_score_ptr": "*fp32", "best_index_ptr": "*i64", "V": "i32",
            "cols_per_split": "i32", "stride_row": "i32"}
    sig = {n: ptrs.get(n, "constexpr") for n in names}
    const = {(names.index("BLOCK_V"),): 2048, (names.index("SPLIT"),): split}
    started = time.perf_counter()
    triton.compile(ASTSource(_race_kernel, sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps})
    return time.perf_counter() - started


def warm(_):
    build((1, "fp16", 4))
    return os.getpid()


def fresh_cache():
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=48)
    p.add_argument("--workers", type=int, default=16)
    a = p.parse_args()
    jobs = [(s, d, w) for s in (1, 2, 4, 8, 16, 32) for d in ("bf16", "fp32", "fp16", "fp8e4nv") for w in (4, 8)][:a.jobs]
    fresh_cache()
    warm(0)
    serial = [build(j) for j in jobs[:8]]
    print(f"serial: {sum(serial) / len(serial):.3f} s per compile", flush=True)
    fresh_cache()
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(a.workers) as ex:
        each = list(ex.map(build, jobs))
    print(f"{len(jobs)} compiles on {a.workers} threads: {time.perf_counter() - t:.2f} s wall, "
          f"{sum(each) / len(each):.3f} s per compile", flush=True)
    fresh_cache()
    with cf.ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as ex:
        t = time.perf_counter()
        list(ex.map(warm, range(a.workers)))
        print(f"{a.workers} processes started and warmed in {time.perf_counter() - t:.2f} s", flush=True)
        t = time.perf_counter()  # TRITON_ALWAYS_COMPILE: every job compiles, whatever the workers' cache holds
        each = list(ex.map(build, jobs))
        print(f"{len(jobs)} compiles on {a.workers} processes: {time.perf_counter() - t:.2f} s wall, "
              f"{sum(each) / len(each):.3f} s per compile", flush=True)


if __name__ == "__main__":
    main()
