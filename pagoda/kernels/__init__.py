"""Triton kernels, each with a torch reference beside it (tests compare them, on CPU through
Triton's interpreter and on CUDA).

- paged_attention: `paged_attention(query, kv_cache, metadata, scale, out=None, num_splits=None)`,
  mixed prefill/decode flat batch over the paged cache, GQA, split-KV (flash-decoding) path.
  Reference: `paged_attention_ref(...)` here, and `pagoda.attention.torch_backend.paged_attention_reference`.
- kv_cache_write: `write_kv_cache(kv_cache, key, value, slot_mapping)` (slots < 0 skipped).
  Reference: `write_kv_cache_ref(...)`.
- rmsnorm: `rmsnorm(x, weight, eps, residual=None)` -> out, or (out, residual) with residual
  updated in place to x + residual (fused add). Reference: `rmsnorm_ref(...)`.
- rotary: `apply_rotary(positions, q, k, cos_sin_cache, is_neox=True, inplace=True)` -> (q, k),
  neox/gptj layouts, partial rotary. Reference: `apply_rotary_ref(...)`. The cache comes from
  `build_cos_sin_cache(base, rot_dim, max_pos, rope_scaling=None)` (torch, in rope_cache.py; default/linear/llama3).
- gemv: `gemv(x, weight, bias=None, silu_and_mul=False, norm_weight=None, eps, residual=None,
  residual_out=None)`, x @ weightᵀ for a few rows (decode at batch 1), optionally with RMSNorm
  (+ residual add) in the prologue and SiLU·mul of [gate | up] in the epilogue. Reference: `gemv_ref(...)`.
- int4_gemv / int4_gemm: `int4_gemv(x, qweight, scales, zeros, bias=None, silu_and_mul=False, norm_weight=None,
  eps, residual=None, residual_out=None)` (decode rows, gemv's fused forms, split-K) and `int4_gemm(x, qweight,
  scales, zeros, bias=None)` (prefill), x @ Wᵀ with W int4 weight-only in the layout of int4_layout.py (AWQ and
  GPTQ repacked at load time; packed along K in 128-input chunks of 8 nibble planes, per-group scales, uint8
  zeros or none), dequantized in registers. Reference: `int4_layout.int4_linear_ref(...)` (torch, no Triton).
- fp8_quant: `fp8_quantize(x, static_scale=None)` -> (float8_e4m3fn [M, K], fp32 scales [M, 1] or the static one),
  the FP8 linear layers' activation quantization (per-token amax / 448, x / scale rounded to nearest even) in
  one kernel. Reference: `fp8_quantize_ref(...)` (and the layers' fp8_utils.quantize_activation, bit for bit).
- fp8_gemv: `fp8_gemv(x, weight, weight_scale, input_scale=None, bias=None, silu_and_mul=False, norm_weight=None,
  eps, residual=None, residual_out=None)`, the FP8 W8A8 linear layer for decode rows (M <= GEMV_MAX_M): x quantized
  per token (or with the static scale) in the kernel, bit for bit fp8_quant, times the float8_e4m3fn weight with
  per-row scales; gemv's fused forms (RMSNorm in the activation dtype before the quantization) and split-K.
  Reference: `fp8_gemv_ref(...)` (= fp8_utils.fp8_linear_reference of fp8_quantize_ref's q_x, s_x).
- FP8 KV cache: paged_attention, decode_attention, rotary_kv and kv_cache_write take `k_scale` / `v_scale`; with
  a float8_e4m3fn / float8_e5m2 cache they store x / scale (tuning.quantize_kv) and read back x · scale.
- rotary_kv: `rotary_and_write_kv(positions, q, k, v, cos_sin_cache, kv_cache, slot_mapping, is_neox)`,
  rotary fused with the KV-cache write (q rotated in place, rotated k and v stored at the slots; bitwise
  = apply_rotary + write_kv_cache). Reference: `rotary_and_write_kv_ref(...)`.
- decode_attention: `decode_attention(query, key, value, kv_cache, metadata, scale, num_splits=None,
  positions=None, cos_sin_cache=None, is_neox=True)`, a decode-only batch's rotary + KV write + paged
  attention + split-KV reduce in one launch. Reference: `rotary_and_write_kv` then `paged_attention`
  (and their references).
- cascade_attention: `prefix_attention(query, kv_cache, prefix_block_table, prefix_blocks, scale)` -> (out fp32
  [T, H, D], lse fp32 [T, H], base 2) of every query row over the first prefix_blocks[0] blocks (no mask), then
  `paged_attention(..., prefix=PrefixState(prefix_blocks, out, lse))` resumes each request after them.
  Reference: `prefix_attention_ref(...)`; the pair equals `paged_attention_ref` over the whole sequences.
- activation: `silu_and_mul(x)`, `gelu_and_mul(x, approximate="none"|"tanh")`, `gelu_tanh(x)`
  (= `gelu_new`). References: `silu_and_mul_ref`, `gelu_and_mul_ref`, `gelu_tanh_ref`.
- sample: `race_sample(logits, temperature, seeds, num_splits=None)` -> [R] int64, greedy argmax
  (temperature <= 0) or the exponential race on softmax(logits / T) with Philox uniforms keyed by a
  per-row seed, in one read of the logits (the sampler's fused CUDA path). Reference:
  `race_sample_ref(logits, temperature, uniforms)`, with the kernel's uniforms from `race_uniforms(seeds, V)`;
  `race_uniforms_at(seeds, ids)` gives those uniforms at chosen vocab ids only (the sampler's top-k path).
- top_p: `top_p_thresholds(logits, temperature, top_p, min_p)` -> [R] float32 cut on logits / T of each row's
  top-p/min-p set, for `race_sample(..., thresholds=)`. Reference: `top_p_thresholds_ref` (a sort).
- logprob_stats: `logprob_stats(logits, token_ids)` -> (logsumexp [R], token logit [R], rank [R]) in one read of
  raw logits (the sampled tokens' logprobs). Reference: `pagoda.sample.logprobs.logprob_stats_torch`.
- token_bitmask: `apply_token_bitmask_triton(logits, bitmask, row_indices=None)`, -inf where a structured-output
  bitmask bit (int32 words, xgrammar's layout) is cleared. Reference: `pagoda.sample.token_bitmask.apply_token_bitmask_ref`.

Launch heuristics (tile sizes, warps, split-KV count) live in `pagoda.kernels.tuning`;
`tests/kernels/bench_kernels.py [--sweep]` checks and times them on a GPU.
Invariant: the kernels package imports nothing from the rest of pagoda (imports go downward only).
"""
