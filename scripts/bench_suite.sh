#!/usr/bin/env bash
# Pagoda's standard benchmark suite on a Llama-3-8B-shaped model with random weights.
#
#   scripts/bench_suite.sh                 # W1..W6 (needs far more than one 10-minute GPU command)
#   scripts/bench_suite.sh W2 W4           # a subset
#   scripts/bench_suite.sh W1 --no-hf      # pagoda only
#
# W1 offline 1000 x 1024/128, W2 offline 1000 x 128/128, W3 offline 500 x 1024/1024,
# W4 latency batch 1 128/256, W5 serve 1024/128 at 1/4/16/inf req/s, W6 server start-up.
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
