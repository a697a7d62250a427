#!/bin/bash
# Issue 24's start-up and serving-tail measurements in one GPU call (about 6-8 minutes; run it as the session's
# first call, so the first W6 meets a freshly started machine: cold page cache and empty Triton cache):
#
#   bash scripts/gpu_cold_start_and_tail.sh [W5_PROMPTS]      (carry .whl; results in $OUT/cold_tail.tgz)
#
# 1. W6 on the fresh machine with HEAD's defaults, threads only (PAGODA_COMPILE_PROCESSES=0);
# 2. W6 with an empty TRITON_CACHE_DIR and 16 compile processes (kernels/compile_processes.py);
# 3. W6 with another empty TRITON_CACHE_DIR, threads only: 2 against 3 is processes against threads, both
#    with the page cache warm;
# 4. W5 at 4 req/s (W5_PROMPTS requests, default 600) with the server's VLLM_GC_DEBUG=1: p99 TTFT against its
#    median, and the row's stalls column (runtime compiles, GC passes of 10 ms or more).
# Each W6 prints its server's compile-pass lines (variants, threads/processes, seconds).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 PAGODA_COMPILE_THREADS=16
OUT=${OUT:-/tmp/cold_tail_out}; mkdir -p "$OUT"
PROMPTS=${1:-600}
nvidia-smi --query-gpu=name --format=csv,noheader; nproc
S="python3 -m pagoda.benchmarks.suite --no-hf --table '' --timeout 240"
PAGODA_COMPILE_PROCESSES=0 $S W6 --out $OUT/w6_fresh > $OUT/w6_fresh.log 2>&1
TRITON_CACHE_DIR=/tmp/tc_processes PAGODA_COMPILE_PROCESSES=16 $S W6 --out $OUT/w6_processes > $OUT/w6_processes.log 2>&1
TRITON_CACHE_DIR=/tmp/tc_threads PAGODA_COMPILE_PROCESSES=0 $S W6 --out $OUT/w6_threads > $OUT/w6_threads.log 2>&1
for d in w6_fresh w6_processes w6_threads; do
  echo "== $d: $(grep -h W6 $OUT/$d/benchmark_rows.md | cut -d'|' -f8)"
  grep -hE "compile pass|compiled a kernel|Loaded |captured" $OUT/$d/W6-server.log | cut -c1-220
done
$S W5 --serve-rates 4 --serve-prompts "$PROMPTS" --out $OUT/w5 > $OUT/w5.log 2>&1
echo "== W5: $(grep -h W5 $OUT/w5/benchmark_rows.md | cut -d'|' -f8)"
grep -h "compiled a kernel" $OUT/w5/W5-server.log | tail -5 | cut -c1-250
cd $OUT && tar czf cold_tail.tgz w6_* w5 *.log && rm -rf w6_* w5 *.log
