#!/usr/bin/env bash
# Issue 24's sampler checks for one GPU command (about 5 minutes on an H200), results under $OUT:
#
#   scripts/gpu_sampler_checks.sh [BASE_DIR]
#
# 1. the sampler and kernel tests on CUDA (tests/sample, tests/worker, the sampling kernels);
# 2. python tests/kernels/bench_sampler.py (fast paths against the torch sort, the mixed top-k/top-p batch);
# 3. the suite's W2, W7 and W11 (pagoda only), and, with BASE_DIR (an older tree, e.g. from `git archive`),
#    W11 of that tree on the same model right after, for an A/B of the time to first token;
# 4. the Triton compiles logged after start-up by worker/compile_watch.py during those runs.
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./bench_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 200 python -m pytest -q tests/kernels/test_top_p.py tests/kernels/test_sample.py \
  tests/kernels/test_logprob_stats.py tests/sample tests/worker -p no:cacheprovider 2>&1 | tail -8 | tee "$OUT/pytest.txt"
timeout 150 python tests/kernels/bench_sampler.py 2>&1 | tee "$OUT/sampler.txt"
timeout 330 bash scripts/bench_suite.sh W2 W7 W11 --no-hf --out "$OUT/suite" --timeout 100 2>&1 \
  | grep -E "^\| 20|Throughput|TTFT|compiled a kernel after start-up|Traceback" | tee "$OUT/suite.txt"
if [ -n "${1:-}" ]; then
  L="-m pagoda.entrypoints.cli.bench latency --model /tmp/pagoda-bench-models/llama3-8b-shape --batch-size 1
     --input-len 128 --output-len 1 --num-iters-warmup 5 --num-iters 30 --load-format dummy --dtype bfloat16 --no-sol"
  for tree in "$1" "$PWD"; do
    echo "== W11 of $tree" | tee -a "$OUT/suite.txt"
    (cd "$tree" && PYTHONPATH=$tree timeout 80 python $L 2>&1 | grep -iE "ttft|Error" | tail -2) | tee -a "$OUT/suite.txt"
  done
fi
