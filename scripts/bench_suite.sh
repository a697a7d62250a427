#!/usr/bin/env bash
# Pagoda's standard benchmark suite on a Llama-3-8B-shaped model with random weights.
#
#   scripts/bench_suite.sh                 # W1..W12 (needs far more than one 10-minute GPU command)
#   scripts/bench_suite.sh W2 W4           # a subset
#   scripts/bench_suite.sh W1 --no-hf      # pagoda only
#   scripts/bench_suite.sh W7 W8 --out "$OUT"   # the issue-24 workloads, a few per GPU command
#
# W1 offline 1000 x 1024/128, W2 offline 1000 x 128/128, W3 offline 500 x 1024/1024,
# W4 latency batch 1 128/256, W5 serve 1024/128 at 1/4/16/inf req/s, W6 server start-up,
# W7 W2 sampling-heavy (T 0.8, top-p 0.95, top-k 50, repetition penalty 1.1, logprobs 5),
# W8 1000 x (shared 1000-token prefix + 128)/128 with prefix caching, W9 32 x 16384/128 (Llama-3.1-8B shape),
# W10 250 x 128/128 with n=4, W11/W12 batch-1 time to first token of a 128-/2048-token prompt.
# pagoda/benchmarks/suite.py's docstring has each one's speed-of-light basis and target.
# Rows go to docs/benchmarks.md and to $OUT/benchmark_rows.md (what comes back from the GPU
# machine: append it to docs/benchmarks.md here). Raw JSON and logs land in $OUT (or ./bench_out).
# W5/W6 need `pagoda serve` and its wheels (../shared/gpu/wheels.sh, carry .whl); without them they
# are skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
# The carried wheels are for the GPU machine's Python 3.12; elsewhere the installed packages serve.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile \
     --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>/dev/null; then
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
exec python3 -m pagoda.benchmarks.suite "$@"
