"""Qwen2.5-VL matches transformers on a tiny random checkpoint: windowed vision features of images
with different grids, M-RoPE positions, prefill logits of a prompt with images ([3, T] positions)
and the decode steps after it (1-D positions p + delta), the text-only 1-D path, and every
checkpoint key layout load_weights accepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagoda.attention.backend import AttentionMetadata
from pagoda.attention.torch_backend import TorchAttentionBackend

BLOCK_SIZE = 8
IMAGE, VIDEO, VISION_START, VISION_END = 290, 291, 292, 293
PATCH, TEMPORAL, MERGE = 4, 2, 2
ROW = 3 * TEMPORAL * PATCH * PATCH  # one patch row of the processor
# 96 patches each, three ways (windows of 2x2 merge blocks: the 6x16 image has partial windows);
# the last has two frames
GRIDS = [(1, 8, 12), (1, 12, 8), (1, 6, 16), (2, 4, 12)]
NUM_PATCHES = 96


def _config(**overrides):
    from transformers import Qwen2_5_VLConfig

    text = dict(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,  # head size 16: 8 rotary frequencies, split 2/3/3 over t/h/w
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    vision = dict(
        depth=4,
        fullatt_block_indexes=[1, 3],
        hidden_size=32,
        num_heads=4,
        intermediate_size=48,
        patch_size=PATCH,
        temporal_patch_size=TEMPORAL,
        spatial_merge_size=MERGE,
        window_size=16,  # 16 // 2 // 4 = 2 merge blocks a side
        out_hidden_size=64,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        **overrides,
    )


def _build(tmp_path, **overrides):
    from transformers import Qwen2_5_VLForConditionalGeneration as HFQwen

    torch.manual_seed(0)
    hf = HFQwen(_config(**overrides)).eval()
    with torch.no_grad():  # random norms/biases too, so a weight loaded in the wrong place shows
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path / "qwen2_5_vl"
    hf.save_pretrained(str(folder), safe_serialization=True)
    return hf, folder


def _pagoda(hf_config):
    from pagoda.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    with torch.device("cpu"):
        return Qwen2_5_VLForConditionalGeneration(hf_config, TorchAttentionBackend()).eval()


def _saved(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _load(model, state_dict):
    loaded = model.load_weights(iter(state_dict.items()))
    params = set(dict(model.named_parameters()))
    assert not sorted(params - loaded), sorted(params - loaded)
    assert loaded <= params, sorted(loaded - params)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("qwen2_5_vl"))


@pytest.fixture(scope="module")
def ours(tiny):
    hf, folder = tiny
    return _load(_pagoda(hf.config), _saved(folder))


def _pixels(num_images, seed=1):
    torch.manual_seed(seed)
    return torch.randn(num_images, NUM_PATCHES, ROW)


def _hf_features(hf, pixel_values, grids):
    with torch.inference_mode():
        out = hf.model.get_image_features(pixel_values.reshape(-1, ROW), torch.tensor(grids))
    return list(out.pooler_output)


def _prompt(grids, texts):
    """texts[0], <vision_start> image 0 <vision_end>, texts[1], ... as token ids."""
    ids = list(texts[0])
    for grid, text in zip(grids, texts[1:]):
        ids += [VISION_START] + [IMAGE] * (int(np.prod(grid)) // MERGE**2) + [VISION_END] + list(text)
    return ids


class _Cache:
    """One request's paged KV cache over contiguous blocks; `step` runs new tokens after the cached ones."""

    def __init__(self, model, max_len):
        spec = model.kv_cache_spec
        self.model = model
        self.num_blocks = (max_len + BLOCK_SIZE - 1) // BLOCK_SIZE
        shape = (2, self.num_blocks, BLOCK_SIZE, spec.num_kv_heads, spec.head_size)
        self.kv_caches = [torch.zeros(shape) for _ in range(spec.num_layers)]
        self.seq_len = 0

    def step(self, input_ids, positions, inputs_embeds=None):
        n = len(input_ids)
        start, self.seq_len = self.seq_len, self.seq_len + n
        metadata = AttentionMetadata(
            num_reqs=1,
            num_tokens=n,
            max_query_len=n,
            max_seq_len=self.seq_len,
            query_start_loc=torch.tensor([0, n], dtype=torch.int32),
            seq_lens=torch.tensor([self.seq_len], dtype=torch.int32),
            block_tables=torch.arange(self.num_blocks, dtype=torch.int32).view(1, -1),
            slot_mapping=torch.arange(start, self.seq_len, dtype=torch.int64),
            query_start_loc_cpu=[0, n],
            seq_lens_cpu=[self.seq_len],
        )
        with torch.inference_mode():
            hidden = self.model(input_ids, positions, self.kv_caches, metadata, inputs_embeds=inputs_embeds)
            return self.model.compute_logits(hidden)


def _hf_logits(hf, ids, grids=None, pixel_values=None):
    input_ids = torch.tensor([ids])
    kwargs = {}
    if grids:
        kwargs = dict(pixel_values=pixel_values.reshape(-1, ROW), image_grid_thw=torch.tensor(grids),
                      mm_token_type_ids=(input_ids == IMAGE).int())
    with torch.inference_mode():
        return hf(input_ids=input_ids, **kwargs).logits[0]


def _close(ours, ref, msg=""):
    tol = 1e-4 * max(1.0, float(ref.abs().max()) / 10)
    torch.testing.assert_close(ours, ref, atol=tol, rtol=1e-4, msg=lambda m: f"{msg}{m}")


def test_image_features_match_transformers(tiny, ours):
    from transformers.vision_utils import get_vision_window_index

    hf, _ = tiny
    grid_t = torch.tensor(GRIDS)
    _, cu_windows = get_vision_window_index(grid_t, MERGE, hf.config.vision_config.window_size, PATCH)
    lengths = set(torch.diff(cu_windows).tolist())
    assert len(cu_windows) - 1 > 2 * len(GRIDS) and len(lengths) > 1, "windows must split the images unevenly"

    pixel_values = _pixels(len(GRIDS))
    with torch.inference_mode():
        features = ours.embed_images(pixel_values, grid_t)
    ref = _hf_features(hf, pixel_values, GRIDS)
    assert len(features) == len(ref) == len(GRIDS)
    for i, (mine, theirs) in enumerate(zip(features, ref)):
        assert mine.shape == theirs.shape == (NUM_PATCHES // MERGE**2, 64)
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5, msg=lambda m: f"image {i}: {m}")

    # One image alone gives the same rows as in the batch (images never interact).
    with torch.inference_mode():
        alone = ours.embed_images(pixel_values[2:3], grid_t[2:3])
    torch.testing.assert_close(alone[0], features[2], atol=1e-5, rtol=1e-5)


def test_mrope_positions_match_get_rope_index(tiny):
    from pagoda.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration, mrope_positions

    hf, _ = tiny
    grids = [(1, 8, 12), (1, 12, 8)]
    ids = _prompt(grids, [[5, 6, 7], [8, 9], [10, 11, 12, 13]])
    positions, delta = Qwen2_5_VLForConditionalGeneration.mrope_positions(hf.config, ids, grids)
    input_ids = torch.tensor([ids])
    ref, ref_delta = hf.model.get_rope_index(input_ids, (input_ids == IMAGE).int(), image_grid_thw=torch.tensor(grids))
    assert positions.dtype == np.int64 and positions.shape == (3, len(ids))
    np.testing.assert_array_equal(positions, ref[:, 0].numpy())
    assert delta == int(ref_delta) < 0
    # numpy input and text-only prompts
    again, _ = mrope_positions(hf.config, np.asarray(ids), np.asarray(grids))
    np.testing.assert_array_equal(again, positions)
    text, text_delta = mrope_positions(hf.config, [5, 6, 7], [])
    np.testing.assert_array_equal(text, np.tile(np.arange(3), (3, 1)))
    assert text_delta == 0
    with pytest.raises(ValueError):
        mrope_positions(hf.config, ids, grids[:1])
    with pytest.raises(ValueError):
        mrope_positions(hf.config, ids[:-10], grids)  # the second run is cut short


def test_prefill_and_decode_match_transformers(tiny, ours):
    hf, _ = tiny
    grids = [(1, 8, 12), (1, 6, 16)]
    pixel_values = _pixels(len(grids), seed=3)
    ids = _prompt(grids, [[3, 14, 15, 92, 65], [35, 89, 79], [32, 38, 46, 26]])
    positions, delta = ours.mrope_positions(hf.config, ids, grids)
    input_ids = torch.tensor(ids)
    with torch.inference_mode():
        embeds = ours.embed_input_ids(input_ids).clone()
        embeds[input_ids == IMAGE] = ours.embed_images(pixel_values, torch.tensor(grids)).reshape(-1, 64)

    decode_steps = 3
    cache = _Cache(ours, len(ids) + decode_steps)
    logits = cache.step(input_ids, torch.from_numpy(positions), embeds)
    ref = _hf_logits(hf, ids, grids, pixel_values)
    _close(logits, ref, "prefill: ")

    # M-RoPE matters here: plain 1-D positions give other logits.
    with torch.inference_mode():
        plain = _Cache(ours, len(ids)).step(input_ids, torch.arange(len(ids)), embeds)
    assert not torch.allclose(plain, ref, atol=1e-3)

    for step in range(decode_steps):
        token = int(logits[-1].argmax())
        position = torch.tensor([len(ids) + delta])
        ids.append(token)
        logits = cache.step(torch.tensor([token]), position)
        _close(logits[0], _hf_logits(hf, ids, grids, pixel_values)[-1], f"decode {step}: ")


def test_text_only_one_dim_positions(tiny, ours):
    hf, _ = tiny
    ids = [1, 5, 17, 42, 7, 99, 123, 250, 3]
    n = len(ids)
    logits = _Cache(ours, n).step(torch.tensor(ids), torch.arange(n))
    _close(logits, _hf_logits(hf, ids))
    # [3, T] with equal rows is plain rotary
    same = _Cache(ours, n).step(torch.tensor(ids), torch.arange(n).expand(3, n).contiguous())
    torch.testing.assert_close(same, logits, atol=1e-5, rtol=1e-5)


def test_checkpoint_key_layouts(tiny):
    """transformers 5.24 saves the hub layout (visual.*, model.layers.*, lm_head.*); its modules are named
    model.visual.* and model.language_model.*. Both load to the same outputs."""
    hf, folder = tiny
    saved = _saved(folder)
    assert "visual.blocks.0.attn.qkv.weight" in saved and "model.layers.0.self_attn.q_proj.weight" in saved
    assert "model.embed_tokens.weight" in saved and "lm_head.weight" in saved
    assert saved["visual.patch_embed.proj.weight"].dim() == 5  # Conv3d [out, C, T, p, p]
    modules = dict(hf.state_dict())
    assert "model.language_model.embed_tokens.weight" in modules and "model.visual.merger.ln_q.weight" in modules

    a, b = _load(_pagoda(hf.config), saved), _load(_pagoda(hf.config), modules)
    ids, grids, pixel_values = _prompt([GRIDS[0]], [[5, 6], [7]]), [GRIDS[0]], _pixels(1)
    for model in (a, b):
        positions, _ = model.mrope_positions(hf.config, ids, grids)
        input_ids = torch.tensor(ids)
        with torch.inference_mode():
            embeds = model.embed_input_ids(input_ids).clone()
            embeds[input_ids == IMAGE] = model.embed_images(pixel_values, torch.tensor(grids))[0]
        _close(_Cache(model, len(ids)).step(input_ids, torch.from_numpy(positions), embeds),
               _hf_logits(hf, ids, grids, pixel_values))


def test_missing_and_extra_weights(tiny):
    hf, folder = tiny
    state = _saved(folder)
    state.pop("visual.blocks.0.mlp.gate_proj.weight")
    state["visual.blocks.0.attn.unknown.weight"] = torch.zeros(1)  # skipped, not an error
    state["something.else"] = torch.zeros(1)
    model = _pagoda(hf.config)
    loaded = model.load_weights(iter(state.items()))
    missing = [n for n, _ in model.named_parameters() if n not in loaded]
    assert missing == ["visual.blocks.0.mlp.gate_proj.weight"]
    assert loaded <= set(dict(model.named_parameters()))


def test_load_checkpoint_through_loader(tiny):
    from pagoda.model_executor.model_loader.loader import load_checkpoint

    hf, folder = tiny
    loaded = load_checkpoint(_pagoda(hf.config), str(folder))
    assert "visual.patch_embed.proj.weight" in loaded and "language_model.lm_head.weight" in loaded


def test_tied_embeddings(tmp_path):
    hf, folder = _build(tmp_path, tie_word_embeddings=True)
    assert hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()
    model = _load(_pagoda(hf.config), _saved(folder))
    assert model.language_model.lm_head is model.language_model.model.embed_tokens
    ids = [1, 5, 17, 42, 7]
    _close(_Cache(model, len(ids)).step(torch.tensor(ids), torch.arange(len(ids))), _hf_logits(hf, ids))


def test_rejects_bad_mrope_section():
    config = _config()
    config.text_config.rope_parameters = {**config.text_config.rope_parameters, "mrope_section": [2, 2, 2]}
    with pytest.raises(ValueError, match="mrope_section"):
        _pagoda(config)
