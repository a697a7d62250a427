"""LLaVA (CLIP vision tower + projector + Llama) matches transformers on a tiny random checkpoint:
image features, and the logits of a prefill whose image-token embeddings are replaced by them,
for every checkpoint key layout load_weights accepts."""

from __future__ import annotations

import pytest
import torch

from pagoda.attention.backend import AttentionMetadata
from pagoda.attention.torch_backend import TorchAttentionBackend

BLOCK_SIZE = 8
IMAGE_TOKEN = 299


def _config(**overrides):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = dict(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    text.update(overrides.pop("text", {}))
    kwargs = dict(image_token_index=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default")
    kwargs.update(overrides)
    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
        ),
        text_config=LlamaConfig(**text),
        **kwargs,
    )


def _build(tmp_path, **overrides):
    """(transformers model, checkpoint folder) of a tiny random LLaVA saved with safetensors."""
    from transformers import LlavaForConditionalGeneration as HFLlava

    torch.manual_seed(0)
    hf = HFLlava(_config(**overrides)).eval()
    with torch.no_grad():  # random norms/biases too, so a weight loaded in the wrong place shows
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path / "llava"
    hf.save_pretrained(str(folder), safe_serialization=True)
    return hf, folder


def _pagoda(hf_config):
    from pagoda.model_executor.models.llava import LlavaForConditionalGeneration

    with torch.device("cpu"):
        return LlavaForConditionalGeneration(hf_config, TorchAttentionBackend()).eval()


def _load(model, state_dict):
    loaded = model.load_weights(iter(state_dict.items()))
    missing = sorted(n for n, _ in model.named_parameters() if n not in loaded)
    assert not missing, missing
    assert loaded <= set(dict(model.named_parameters())), sorted(loaded - set(dict(model.named_parameters())))
    return model


def _saved(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _hub_layout(state_dict):
    """llava-hf/llava-1.5-7b-hf's names: vision_tower.vision_model.*, language_model.model.*, ..."""
    out = {}
    for name, t in state_dict.items():
        if name.startswith("model.language_model."):
            name = "language_model.model." + name[len("model.language_model.") :]
        elif name.startswith("lm_head."):
            name = "language_model." + name
        elif name.startswith("model."):
            name = name[len("model.") :]
        if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
            name = "vision_tower.vision_model." + name[len("vision_tower.") :]
        out[name] = t
    return out


def _hf_image_features(hf, pixel_values, **kwargs):
    with torch.inference_mode():
        out = hf.model.get_image_features(pixel_values=pixel_values, **kwargs)
    # transformers 5.24: a BaseModelOutputWithPooling whose pooler_output is a list of [tokens, H] per image
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, (list, tuple)):
        feats = torch.stack(list(feats))
    return feats


def _prefill(model, input_ids, inputs_embeds):
    spec = model.kv_cache_spec
    t = len(input_ids)
    num_blocks = (t + BLOCK_SIZE - 1) // BLOCK_SIZE
    kv_caches = [
        torch.zeros(2, num_blocks, BLOCK_SIZE, spec.num_kv_heads, spec.head_size) for _ in range(spec.num_layers)
    ]
    metadata = AttentionMetadata(
        num_reqs=1,
        num_tokens=t,
        max_query_len=t,
        max_seq_len=t,
        query_start_loc=torch.tensor([0, t], dtype=torch.int32),
        seq_lens=torch.tensor([t], dtype=torch.int32),
        block_tables=torch.arange(num_blocks, dtype=torch.int32).view(1, num_blocks),
        slot_mapping=torch.arange(t, dtype=torch.int64),
        query_start_loc_cpu=[0, t],
        seq_lens_cpu=[t],
    )
    with torch.inference_mode():
        hidden = model(input_ids, torch.arange(t, dtype=torch.int64), kv_caches, metadata, inputs_embeds=inputs_embeds)
        return model.compute_logits(hidden)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("llava"))


def test_checkpoint_key_layout(tiny):
    """What transformers 5.24 writes: the hub layout, but the vision tower without `vision_model.`."""
    _, folder = tiny
    names = set(_saved(folder))
    assert "language_model.model.embed_tokens.weight" in names
    assert "language_model.lm_head.weight" in names
    assert "multi_modal_projector.linear_1.weight" in names
    assert any(n.startswith("vision_tower.") for n in names)


@pytest.mark.parametrize("layout", ["saved", "hub", "transformers5_modules"])
def test_matches_transformers(tiny, layout):
    hf, folder = tiny
    state = {
        "saved": lambda: _saved(folder),
        "hub": lambda: _hub_layout(hf.state_dict()),
        "transformers5_modules": lambda: dict(hf.state_dict()),
    }[layout]()
    model = _load(_pagoda(hf.config), state)
    assert model.supports_images and model.image_token_index == IMAGE_TOKEN
    assert model.kv_cache_spec is model.language_model.kv_cache_spec

    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ours = model.embed_images(pixel_values)
    ref = _hf_image_features(hf, pixel_values)
    assert ours.shape == (2, 16, 32) == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)

    # One image in a prompt: text, 16 image tokens, text.
    n_img = ours.shape[1]
    ids = [1, 5, 17, 42] + [IMAGE_TOKEN] * n_img + [7, 99, 123, 250, 3]
    input_ids = torch.tensor(ids, dtype=torch.int64)
    with torch.inference_mode():
        embeds = model.embed_input_ids(input_ids).clone()
        embeds[input_ids == IMAGE_TOKEN] = model.embed_images(pixel_values[:1])[0]
    logits = _prefill(model, input_ids, embeds)
    with torch.inference_mode():
        ref_logits = hf(input_ids=input_ids[None], pixel_values=pixel_values[:1]).logits[0]
    tol = 1e-4 * max(1.0, float(ref_logits.abs().max()) / 10)
    torch.testing.assert_close(logits, ref_logits, atol=tol, rtol=1e-4)

    # Without inputs_embeds the text path is the plain embedding lookup.
    text_ids = torch.tensor([1, 5, 17, 42, 7], dtype=torch.int64)
    with torch.inference_mode():
        ref_text = hf(input_ids=text_ids[None]).logits[0]
    torch.testing.assert_close(_prefill(model, text_ids, None), ref_text, atol=tol, rtol=1e-4)


def test_load_checkpoint_through_loader(tiny):
    from pagoda.model_executor.model_loader.loader import load_checkpoint

    hf, folder = tiny
    model = _pagoda(hf.config)
    loaded = load_checkpoint(model, str(folder))
    assert "vision_tower.vision_model.post_layernorm.weight" in loaded
    assert "language_model.lm_head.weight" in loaded


def test_missing_vision_weight_is_detected(tiny):
    hf, folder = tiny
    state = _saved(folder)
    state.pop(next(n for n in state if n.startswith("vision_tower.") and "layers.0.mlp.fc1.weight" in n))
    model = _pagoda(hf.config)
    loaded = model.load_weights(iter(state.items()))
    missing = [n for n, _ in model.named_parameters() if n not in loaded]
    assert missing == ["vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"vision_feature_layer": [-2, -1], "vision_feature_select_strategy": "full"},
        {"vision_feature_layer": 0, "vision_feature_select_strategy": "default"},
        {"text": {"tie_word_embeddings": True}, "tie_word_embeddings": True},
    ],
    ids=["layers-list-full", "layer0", "tied"],
)
def test_variants(tmp_path, overrides):
    hf, folder = _build(tmp_path, **overrides)
    model = _load(_pagoda(hf.config), _saved(folder))
    # transformers 5.24 captures only the hidden states `output_hidden_states=vision_feature_layer`
    # names, and vision_feature_layer=0 is falsy there (nothing captured): ask for all of them.
    extra = {"output_hidden_states": True} if overrides.get("vision_feature_layer") == 0 else {}
    torch.manual_seed(2)
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        ours = model.embed_images(pixel_values)
    ref = _hf_image_features(hf, pixel_values, **extra)
    assert ours.shape == ref.shape and ours.shape[1] == model.num_image_tokens
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    ids = [1, 5] + [IMAGE_TOKEN] * ours.shape[1] + [7, 99]
    input_ids = torch.tensor(ids, dtype=torch.int64)
    with torch.inference_mode():
        embeds = model.embed_input_ids(input_ids).clone()
        embeds[input_ids == IMAGE_TOKEN] = ours[0]
        ref_logits = hf(input_ids=input_ids[None], pixel_values=pixel_values, **extra).logits[0]
    tol = 1e-4 * max(1.0, float(ref_logits.abs().max()) / 10)
    torch.testing.assert_close(_prefill(model, input_ids, embeds), ref_logits, atol=tol, rtol=1e-4)


def test_unsupported_text_model_is_rejected():
    from transformers import CLIPVisionConfig, LlavaConfig, Qwen3Config

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4),
        text_config=Qwen3Config(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64),
    )
    with pytest.raises(ValueError, match="qwen3"):
        _pagoda(config)


def test_registered():
    from pagoda.model_executor.models.llava import LlavaForConditionalGeneration
    from pagoda.model_executor.models.registry import ModelRegistry

    assert ModelRegistry.resolve_model_cls(["LlavaForConditionalGeneration"]) is LlavaForConditionalGeneration
