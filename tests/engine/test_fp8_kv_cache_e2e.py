"""kv_cache_dtype="fp8" end to end: a tiny Llama with an FP8 KV cache generates what transformers generates
when every key and value its attention sees is round-tripped through FP8 with the same per-layer scales;
the cache holds twice the blocks of a 16-bit one; checkpoint scales load under vLLM's names.

The reference: transformers' own Llama in float32 with a registered attention function that fake-quantizes
the (rotated) keys and values, k -> fp8(clamp(k / k_scale)) · k_scale, then runs SDPA. Pagoda's CPU path
(torch backend) stores exactly those fp8 values and attends over them in fp32, so the two compute the
same function: greedy tokens are equal on every prompt and logprobs agree to 1e-3, as test_llm_vs_hf
asks of the unquantized model (seen: within 2e-4). The only difference left is fp32 rounding in the
projections (fused q/k/v vs separate), which could move a value across an fp8 rounding boundary; it did not
here. The FP8 model itself is far from the unquantized one (no prompt agrees), so the test is not vacuous.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from pagoda import LLM, SamplingParams
from tests.engine.conftest import PROMPTS

MAX_TOKENS = 8
FP8_MAX = {"fp8": 448.0, "fp8_e5m2": 57344.0}
TORCH_FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def fake_quant(x: torch.Tensor, scale: float, kind: str) -> torch.Tensor:
    inv = torch.tensor(1.0 / scale, dtype=torch.float32)
    q = (x.float() * inv).clamp(-FP8_MAX[kind], FP8_MAX[kind]).to(TORCH_FP8[kind])
    return (q.float() * torch.tensor(scale, dtype=torch.float32)).to(x.dtype)


def hf_fp8_greedy(folder, prompt_ids_list, scales: dict[int, tuple[float, float]], kind: str):
    """Greedy tokens and their logprobs from transformers with FP8 fake-quantized keys and values."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def fp8_kv_attention(module, query, key, value, attention_mask, **kwargs):
        k_scale, v_scale = scales.get(module.layer_idx, (1.0, 1.0))
        return sdpa_attention_forward(module, query, fake_quant(key, k_scale, kind), fake_quant(value, v_scale, kind),
                                      attention_mask, **kwargs)

    AttentionInterface.register("pagoda_test_fp8_kv", fp8_kv_attention)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="pagoda_test_fp8_kv").eval()
    results = []
    with torch.no_grad():
        for ids in prompt_ids_list:
            tokens, logprobs = list(ids), []
            for _ in range(MAX_TOKENS):  # whole sequence each step: causal SDPA over all fake-quantized keys
                logits = model(torch.tensor([tokens])).logits[0, -1].float()
                nxt = int(torch.argmax(logits))
                logprobs.append(float(torch.log_softmax(logits, -1)[nxt]))
                tokens.append(nxt)
            results.append((tokens[len(ids):], logprobs))
    return results


def with_scales(src: str, dst, tensors: dict[str, torch.Tensor]) -> str:
    """A copy of checkpoint `src` plus a second safetensors file of KV-cache scales (transformers reads only
    model.safetensors; Pagoda reads every *.safetensors of a folder without an index)."""
    shutil.copytree(src, dst)
    save_file(tensors, str(dst / "kv_scales.safetensors"))
    return str(dst)


def generate(llm, prompt_ids):
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    return llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)


def attention_layers(llm):
    from pagoda.model_executor.layers.attention import Attention

    return [m for m in llm.llm_engine.core.executor.worker.model.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("kind, scaled", [("fp8", True), ("fp8_e5m2", False)])
def test_fp8_greedy_matches_fake_quantized_transformers(kind, scaled, llama_dir, tmp_path):
    scales = {0: (0.005859375, 0.001953125), 1: (0.0078125, 0.001220703125)} if scaled else {}  # exact in fp32
    folder = llama_dir
    if scaled:  # vLLM's names: self_attn.k_scale / v_scale (0-d tensors, as llm-compressor writes them)
        folder = with_scales(llama_dir, tmp_path / "scaled", {
            f"model.layers.{i}.self_attn.{w}_scale": torch.tensor(s[j]) for i, s in scales.items()
            for j, w in enumerate("kv")})
    llm = LLM(folder, dtype="float32", max_model_len=256, kv_cache_dtype=kind)
    worker = llm.llm_engine.core.executor.worker
    assert worker.runner.kv_caches[0].dtype == TORCH_FP8[kind]
    assert [(a.k_scale, a.v_scale) for a in attention_layers(llm)][:len(scales)] == list(scales.values())
    tokenizer = llm.get_tokenizer()
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    outputs = generate(llm, prompt_ids)
    expected = hf_fp8_greedy(folder, prompt_ids, scales, kind)
    for out, (ref_tokens, ref_logprobs) in zip(outputs, expected):
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, f"{kind}: prompt {out.prompt_token_ids[:8]}..."
        for position, token, ref in zip(got.logprobs, got.token_ids, ref_logprobs):
            assert abs(position[token].logprob - ref) < 1e-3
    if scaled:  # FP8 matters: the unquantized model's first logprobs differ by far more than the tolerance
        plain = generate(LLM(llama_dir, dtype="float32", max_model_len=256), prompt_ids)
        first = [(o.outputs[0].logprobs[0][o.outputs[0].token_ids[0]].logprob,
                  p.outputs[0].logprobs[0][p.outputs[0].token_ids[0]].logprob) for o, p in zip(outputs, plain)]
        assert max(abs(a - b) for a, b in first) > 1e-2


def test_fp8_cache_holds_twice_the_blocks(llama_dir, caplog):
    budget = 1 << 20  # small enough that the CPU cap (max_num_seqs full sequences) does not apply
    blocks = {}
    for kind in ("auto", "fp8"):
        with caplog.at_level(logging.INFO, logger="pagoda.worker.worker"):
            llm = LLM(llama_dir, dtype="bfloat16", max_model_len=64, kv_cache_memory_bytes=budget, kv_cache_dtype=kind)
        worker = llm.llm_engine.core.executor.worker
        blocks[kind] = worker.runner.kv_caches[0].shape[1]
        assert worker.runner.kv_caches[0].dtype == (torch.bfloat16 if kind == "auto" else torch.float8_e4m3fn)
        assert worker.bytes_per_block() * blocks[kind] <= budget
    assert blocks["fp8"] in (2 * blocks["auto"], 2 * blocks["auto"] + 1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("KV cache:")]
    assert f"{blocks['fp8'] * 16} tokens in float8_e4m3fn (kv_cache_dtype=fp8)" in lines[-1]
    assert f"{blocks['auto'] * 16} tokens in bfloat16 (kv_cache_dtype=auto)" in lines[0]


def test_checkpoint_scale_names_and_checks(llama_dir, tmp_path, caplog):
    """The deprecated kv_scale (both), compressed-tensors' k_proj/v_proj.output_scale; ignored with 'auto'; a
    per-head scale is refused."""
    folder = with_scales(llama_dir, tmp_path / "names", {
        "model.layers.0.self_attn.kv_scale": torch.tensor([0.5]),
        "model.layers.1.self_attn.k_proj.output_scale": torch.tensor(0.25),
        "model.layers.1.self_attn.v_proj.output_scale": torch.tensor(0.125),
    })
    llm = LLM(folder, dtype="float32", max_model_len=64, kv_cache_dtype="fp8_e4m3")
    assert [(a.k_scale, a.v_scale) for a in attention_layers(llm)] == [(0.5, 0.5), (0.25, 0.125)]
    out = llm.generate("import os", SamplingParams(temperature=0, max_tokens=3, logprobs=0), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3 and math.isfinite(out.outputs[0].cumulative_logprob)
    with caplog.at_level(logging.INFO):
        auto = LLM(folder, dtype="float32", max_model_len=64)
    assert [(a.k_scale, a.v_scale) for a in attention_layers(auto)] == [(1.0, 1.0), (1.0, 1.0)]
    assert any("not used: kv_cache_dtype='auto'" in r.getMessage() for r in caplog.records)
    per_head = with_scales(llama_dir, tmp_path / "per_head", {"model.layers.0.self_attn.k_scale": torch.ones(2)})
    with pytest.raises(ValueError, match="per-tensor"):
        LLM(per_head, dtype="float32", max_model_len=64, kv_cache_dtype="fp8")


def test_kv_cache_dtype_values(llama_dir):
    from pagoda.engine_args import EngineArgs

    assert EngineArgs(model=llama_dir, kv_cache_dtype="fp8").create_config().cache.cache_dtype == "fp8"
    with pytest.raises(ValueError, match=r"not one of \['auto', 'fp8', 'fp8_e4m3', 'fp8_e5m2'\]"):
        EngineArgs(model=llama_dir, kv_cache_dtype="int8").create_config()
    with pytest.raises(ValueError, match="not supported yet"):
        EngineArgs(model=llama_dir, kv_cache_dtype="fp8_ds_mla").create_config()
    with pytest.raises(ValueError, match="calculate_kv_scales.*not supported yet"):
        EngineArgs(model=llama_dir, kv_cache_dtype="fp8", calculate_kv_scales=True).create_config()
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    args = parser.parse_args(["--model", llama_dir, "--kv-cache-dtype", "fp8_e5m2"])
    assert EngineArgs.from_cli_args(args).kv_cache_dtype == "fp8_e5m2"
