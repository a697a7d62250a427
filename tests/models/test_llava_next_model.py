"""LLaVA-NeXT (any-resolution tiles + CLIP + projector + image_newline + Llama) matches transformers on the tiny
random checkpoint of pagoda.tiny_models.make_llava_next_checkpoint: packed image features per image (and their
count equals the processor's image-token expansion), and the logits of a prefill whose image-token embeddings
are replaced by them, for every checkpoint key layout load_weights accepts."""

from __future__ import annotations

import pytest
import torch

from tests.models.test_llava_model import _prefill

# (width, height) of PIL images: 2 or 3 tiles, portrait / landscape / tall, so unpadding cuts rows or columns
IMAGE_SIZES = [(40, 50), (64, 32), (30, 90), (20, 20)]


def _images():
    from PIL import Image

    gen = torch.Generator().manual_seed(3)
    return [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())
        for w, h in IMAGE_SIZES
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, test_tokenizer_dir):
    from transformers import AutoProcessor
    from transformers import LlavaNextForConditionalGeneration as HFLlavaNext

    from pagoda.tiny_models import make_llava_next_checkpoint

    folder = make_llava_next_checkpoint(str(tmp_path_factory.mktemp("llava-next")), test_tokenizer_dir)
    hf = HFLlavaNext.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    return hf, processor, folder


def _pagoda(hf_config):
    from pagoda.attention.torch_backend import TorchAttentionBackend
    from pagoda.model_executor.models.llava_next import LlavaNextForConditionalGeneration

    with torch.device("cpu"):
        return LlavaNextForConditionalGeneration(hf_config, TorchAttentionBackend()).eval()


def _load(model, state_dict):
    loaded = model.load_weights(iter(state_dict.items()))
    params = set(dict(model.named_parameters()))
    assert not sorted(params - loaded), sorted(params - loaded)
    assert loaded <= params, sorted(loaded - params)
    return model


def _saved(folder):
    from safetensors.torch import load_file

    return load_file(f"{folder}/model.safetensors")


def _hub_layout(state_dict):
    """llava-hf/llava-v1.6-*-hf names: image_newline, vision_tower.vision_model.*, language_model.model.*, ..."""
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


def _hf_packed(hf, pixel_values, image_sizes):
    """transformers 5.24: get_image_features packs; pooler_output is one [tokens_i, H] tensor per image."""
    with torch.inference_mode():
        out = hf.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes)
    return list(getattr(out, "pooler_output", out))


def test_checkpoint_layout_and_processor(tiny):
    hf, processor, folder = tiny
    names = set(_saved(folder))
    assert "image_newline" in names and "language_model.lm_head.weight" in names
    assert type(processor).__name__ == "LlavaNextProcessor"
    inputs = processor(text="a <image> b", images=_images()[:1], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 3, 32, 32)  # [images, tiles (padded), 3, S, S]
    assert inputs["image_sizes"].tolist() == [[50, 40]]  # (height, width)


@pytest.mark.parametrize("layout", ["saved", "hub", "transformers5_modules"])
def test_matches_transformers(tiny, layout):
    hf, processor, folder = tiny
    state = {
        "saved": lambda: _saved(folder),
        "hub": lambda: _hub_layout(hf.state_dict()),
        "transformers5_modules": lambda: dict(hf.state_dict()),
    }[layout]()
    model = _load(_pagoda(hf.config), state)
    image_token = hf.config.image_token_index
    assert model.supports_images and model.image_token_index == image_token
    assert model.kv_cache_spec is model.language_model.kv_cache_spec

    images = _images()
    # (a) all images in one batch: pixel_values padded to the most tiles; features per image as transformers'
    batch = processor(text=["x <image> " * len(images)], images=images, return_tensors="pt")
    pixel_values, image_sizes = batch["pixel_values"], batch["image_sizes"]
    assert pixel_values.shape[:2] == (len(images), 3)  # the 20x20 image has 2 tiles, padded to 3
    with torch.inference_mode():
        ours = model.embed_images(pixel_values, image_sizes)
    ref = _hf_packed(hf, pixel_values, image_sizes)
    assert isinstance(ours, list) and len(ours) == len(ref) == len(images)
    counts = []
    for image, mine, theirs in zip(images, ours, ref):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
        alone = processor(text="x <image> y", images=[image], return_tensors="pt")
        n = int((alone["input_ids"] == image_token).sum())
        assert mine.shape[0] == n
        counts.append(n)
        with torch.inference_mode():  # one image on its own (its own tile count, no batch padding)
            single = model.embed_images(alone["pixel_values"], alone["image_sizes"])
        assert len(single) == 1  # equal up to the float error of a different batch shape
        torch.testing.assert_close(single[0], mine, atol=1e-4, rtol=1e-4)
    assert len(set(counts)) > 1, counts  # sizes differ, so do token counts

    # (b) one prefill with all images in the prompt: merged embeddings through our forward == transformers' logits
    input_ids = batch["input_ids"][0]
    with torch.inference_mode():
        embeds = model.embed_input_ids(input_ids).clone()
        embeds[input_ids == image_token] = torch.cat(ours, dim=0)
        ref_logits = hf(**batch).logits[0]
    logits = _prefill(model, input_ids, embeds)
    tol = 1e-4 * max(1.0, float(ref_logits.abs().max()) / 10)
    torch.testing.assert_close(logits, ref_logits, atol=tol, rtol=1e-4)


def test_load_checkpoint_through_loader(tiny):
    from pagoda.model_executor.model_loader.loader import load_checkpoint

    hf, _, folder = tiny
    model = _pagoda(hf.config)
    loaded = load_checkpoint(model, folder)
    assert "image_newline" in loaded and "vision_tower.vision_model.post_layernorm.weight" in loaded
    torch.testing.assert_close(model.image_newline.detach(), hf.model.image_newline.detach())


def test_registered():
    from pagoda.model_executor.models.llava_next import LlavaNextForConditionalGeneration
    from pagoda.model_executor.models.registry import ModelRegistry, accepts_images

    assert ModelRegistry.resolve_model_cls(["LlavaNextForConditionalGeneration"]) is LlavaNextForConditionalGeneration
    assert accepts_images("LlavaNextForConditionalGeneration")
