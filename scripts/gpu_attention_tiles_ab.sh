#!/bin/bash
# Paged attention's unmasked full tiles (PAGODA_ATTN_UNMASKED_TILES, off by default) timed off and on in one GPU
# call (about 5 minutes), then where W2 with FP8 weights waits (issue 20):
#
#   bash scripts/gpu_attention_tiles_ab.sh      (carry .whl; results in $OUT/tiles_ab.tgz)
#
# For each setting: the kernel sweep's 16k prefill and W2 decode cases (tests/kernels/bench_kernels.py --sweep,
# each line "default N us" is the shipped launch), W2 (1000 x 128/128) and W12 (batch-1 TTFT, 2048 tokens).
# Last, scripts/step_gaps.py on W2 with quantization=fp8: the GPU's idle time between steps.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 PAGODA_COMPILE_THREADS=16
OUT=${OUT:-/tmp/tiles_ab_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
[ -f /tmp/l8b/config.json ] || python3 -m pagoda.benchmarks.make_model /tmp/l8b --tokenizer bpe > /dev/null 2>&1
B="python3 -m pagoda.entrypoints.cli.bench"
for u in 0 1; do
  echo "== PAGODA_ATTN_UNMASKED_TILES=$u"
  PAGODA_ATTN_UNMASKED_TILES=$u timeout 100 python3 tests/kernels/bench_kernels.py --sweep 16384 W2 > $OUT/sweep$u.log 2>&1
  grep -h "default" $OUT/sweep$u.log | cut -c1-160
  PAGODA_ATTN_UNMASKED_TILES=$u $B throughput --model /tmp/l8b --dataset-name random --num-prompts 1000 --input-len 128 \
    --output-len 128 --load-format dummy --dtype bfloat16 --no-sol > $OUT/w2_$u.log 2>&1
  grep -h "tok/s" $OUT/w2_$u.log | tail -1
  PAGODA_ATTN_UNMASKED_TILES=$u $B latency --model /tmp/l8b --batch-size 1 --input-len 2048 --output-len 1 \
    --num-iters-warmup 3 --num-iters 10 --load-format dummy --dtype bfloat16 --no-sol > $OUT/w12_$u.log 2>&1
  grep -hiE "avg" $OUT/w12_$u.log | tail -1
done
echo "== W2 FP8 step gaps"
timeout 150 python3 scripts/step_gaps.py /tmp/l8b --set quantization=fp8 --set max_num_seqs=1024 > $OUT/gaps_fp8.log 2>&1
grep -vE "^(INFO|WARNING)" $OUT/gaps_fp8.log | tail -12
cd $OUT && tar czf tiles_ab.tgz *.log && rm -f *.log
