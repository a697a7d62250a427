"""Does Triton compile kernels in parallel threads? A probe for start-up time (issue 24: cold start).

    python scripts/aot_compile_probe.py

Compiles the fused sampling kernel (pagoda/kernels/sample.py) for sm_90 ahead of time (no GPU needed:
Triton ships ptxas) at 6 split counts x 2 logits dtypes into an empty cache, serially and then on 2 and
4 threads, and prints the wall times. If threads scale, warm-up could compile its variants on a
thread pool before its serial dummy forwards (which would then find them compiled).
"""
import os, sys, time, tempfile
os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()
os.environ["TRITON_ALWAYS_COMPILE"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import concurrent.futures as cf
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pagoda.kernels.sample import _race_kernel

target = GPUTarget("cuda", 90, 32)
names = list(_race_kernel.arg_names)

def build(split, dtype):
    sig = {}
    for n in names:
        sig[n] = {"logits_ptr": f"*{dtype}", "temperature_ptr": "*fp32", "seeds_ptr": "*i64", "threshold_ptr": "*fp32",
                  "out_ptr": "*i64", "best_score_ptr": "*fp32", "best_index_ptr": "*i64", "V": "i32",
                  "cols_per_split": "i32", "stride_row": "i32"}.get(n, "constexpr")
    const = {(names.index("BLOCK_V"),): 2048, (names.index("SPLIT"),): split}
    src = ASTSource(_race_kernel, sig, constexprs=const)
    return triton.compile(src, target=target, options={"num_warps": 8})

jobs = [(s, d) for s in (1, 2, 4, 8, 16, 32) for d in ("bf16", "fp32")]
build(1, "fp16")  # first compile warms Python imports
t = time.perf_counter()
for j in jobs: build(*j)
serial = time.perf_counter() - t
for workers in (2, 4):
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda j: build(*j), jobs))
    print(f"{len(jobs)} compiles: serial {serial:.2f} s, {workers} threads {time.perf_counter() - t:.2f} s", flush=True)
