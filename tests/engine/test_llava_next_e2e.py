"""LLaVA-NeXT (any-resolution tiling, image_newline) end to end offline: greedy tokens equal transformers' on a
tiny random checkpoint with its real processor; images of different sizes expand to different token counts."""

import pytest

from pagoda import LLM, SamplingParams
from pagoda.tiny_models import make_llava_next_checkpoint
from tests.engine.test_llava_e2e import _image, hf_vlm_greedy

MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
CASES = [
    ("describe <image> in words", [_image(1, (50, 40))]),
    ("compare <image> and <image> please", [_image(2, (32, 64)), _image(3, (90, 30))]),
    ("a text-only prompt between them", []),
]


@pytest.fixture(scope="module")
def next_dir(tmp_path_factory, test_tokenizer_dir):
    return make_llava_next_checkpoint(str(tmp_path_factory.mktemp("llava-next")), test_tokenizer_dir, seed=6)


@pytest.fixture(scope="module")
def reference(next_dir):
    return hf_vlm_greedy(next_dir, CASES, MAX_TOKENS)


def _prompts():
    return [{"prompt": text, "multi_modal_data": {"image": images}} if images else text for text, images in CASES]


@pytest.mark.parametrize("kwargs", [dict(), dict(max_num_batched_tokens=9, enable_prefix_caching=True, block_size=8)],
                         ids=["whole", "chunked-9-cached"])
def test_greedy_equals_transformers(next_dir, reference, kwargs):
    llm = LLM(next_dir, dtype="float32", max_model_len=256, kv_cache_memory_bytes=64 << 20, **kwargs)
    outs = llm.generate(_prompts(), GREEDY, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == reference
    lengths = [image.length for image in llm.llm_engine.processor.parse_prompt_and_images(_prompts()[1])[2]]
    assert len(set(lengths)) == 2  # the two images expand to different numbers of tokens
