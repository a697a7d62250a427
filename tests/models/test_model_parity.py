"""Every supported architecture matches transformers' logits on a flat prefill batch and on decodes."""

from __future__ import annotations

import pytest

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

CASES = [
    ("LlamaForCausalLM", {}),
    ("LlamaForCausalLM", {"tie_word_embeddings": True}),
    ("LlamaForCausalLM", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
    ("LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
    ("MistralForCausalLM", {}),
    ("Qwen2ForCausalLM", {}),
    ("Qwen3ForCausalLM", {}),
    ("OPTForCausalLM", {}),
    ("OPTForCausalLM", {"word_embed_proj_dim": 32, "do_layer_norm_before": False}),
    ("GPT2LMHeadModel", {}),
]


@pytest.mark.parametrize("arch,overrides", CASES, ids=[f"{a}-{'-'.join(o) or 'base'}" for a, o in CASES])
def test_logits_match_transformers(arch, overrides, checkpoint, prompt_ids, compare):
    folder = checkpoint(arch, **overrides)
    generated = compare(folder, prompt_ids, decode_steps=2)
    assert all(len(g) == 2 for g in generated)


def test_tied_embeddings_share_one_parameter(checkpoint, pagoda_loader):
    model = pagoda_loader(checkpoint("LlamaForCausalLM", tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in dict(model.named_parameters())


def test_kv_cache_spec(checkpoint, pagoda_loader):
    spec = pagoda_loader(checkpoint("Qwen3ForCausalLM")).kv_cache_spec
    assert (spec.num_layers, spec.num_kv_heads, spec.head_size) == (2, 2, 32)
    spec = pagoda_loader(checkpoint("GPT2LMHeadModel")).kv_cache_spec
    assert (spec.num_layers, spec.num_kv_heads, spec.head_size) == (2, 4, 16)


def test_mixed_chunked_prefill_and_decode_step(checkpoint, prompt_ids, pagoda_loader, hf_loader, paged_runner):
    """One step mixing a prompt's second chunk with decodes of the other requests."""
    import torch

    folder = checkpoint("Qwen2ForCausalLM")
    model, hf = pagoda_loader(folder), hf_loader(folder)
    runner = paged_runner(model, len(prompt_ids))
    long = prompt_ids[1]
    cut = len(long) // 2
    first = runner.step([prompt_ids[0], long[:cut], prompt_ids[2]])
    decode = [int(first.logits[0][-1].argmax()), None, int(first.logits[2][-1].argmax())]
    second = runner.step([[decode[0]], long[cut:], [decode[2]]])
    seqs = [prompt_ids[0] + [decode[0]], long, prompt_ids[2] + [decode[2]]]
    for i, seq in enumerate(seqs):
        with torch.inference_mode():
            ref = hf(torch.tensor([seq])).logits[0]
        ours = second.logits[i]
        torch.testing.assert_close(ours, ref[-ours.shape[0] :], atol=1e-4 * max(1.0, float(ref.abs().max()) / 10), rtol=1e-4)


def test_mistral_sliding_window_warns(checkpoint, pagoda_loader, caplog):
    import logging

    from pagoda.model_executor.models import max_model_len_cap

    folder = checkpoint("MistralForCausalLM", sliding_window=128)
    with caplog.at_level(logging.WARNING, logger="pagoda.model_executor.models.llama"):
        model = pagoda_loader(folder, max_model_len=128)
    assert "sliding_window=128" in caplog.text
    assert max_model_len_cap(model.config) == 128
