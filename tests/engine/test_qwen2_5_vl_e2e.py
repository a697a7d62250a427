"""Qwen2.5-VL end to end offline and through LLM.chat: greedy tokens equal transformers' on a tiny random
checkpoint with its real processor (dynamic resolution: images of different sizes expand to different token
counts; M-RoPE positions in the text model), for one and several images, batched with text-only prompts, under
chunked prefill, prefix caching and preemption."""

import pytest
import torch

from pagoda import LLM, SamplingParams
from pagoda.tiny_models import make_qwen2_5_vl_checkpoint
from tests.engine.test_llava_e2e import _data_url, _image

MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGES = [_image(1, (40, 56)), _image(2, (24, 64)), _image(3, (32, 32))]
CASES = [
    (f"describe {IMAGE} in words", [IMAGES[0]]),
    (f"compare {IMAGE} and {IMAGE} please", [IMAGES[1], IMAGES[2]]),
    ("a text-only prompt between them", []),
    (f"{IMAGE} starts this prompt", [IMAGES[2]]),
]


@pytest.fixture(scope="module")
def qwen_vl_dir(tmp_path_factory, test_tokenizer_dir):
    return make_qwen2_5_vl_checkpoint(str(tmp_path_factory.mktemp("qwen2_5_vl")), test_tokenizer_dir, seed=7)


def _hf(folder):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from pagoda.multimodal.processing import load_processor

    return load_processor(folder), Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def _hf_greedy(processor, model, text, images, **kwargs):
    inputs = processor(text=text, images=images or None, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def reference(qwen_vl_dir):
    processor, model = _hf(qwen_vl_dir)
    return [_hf_greedy(processor, model, text, images) for text, images in CASES]


def _prompts(cases=CASES):
    return [{"prompt": text, "multi_modal_data": {"image": images}} if images else text for text, images in cases]


def _tokens(llm, prompts):
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, GREEDY, use_tqdm=False)]


def _llm(folder, **kwargs):
    kwargs.setdefault("kv_cache_memory_bytes", 64 << 20)
    kwargs.setdefault("max_model_len", 512)
    return LLM(folder, dtype="float32", **kwargs)


def test_greedy_equals_transformers_batched_with_text(qwen_vl_dir, reference):
    llm = _llm(qwen_vl_dir)
    assert _tokens(llm, _prompts()) == reference
    images = llm.llm_engine.processor.parse_prompt_and_images(_prompts()[1])[2]
    assert images[0].length != images[1].length  # dynamic resolution: different sizes, different token counts
    _tokens(llm, ["text only"])  # the runner hears of the finished requests with the next step
    assert llm.llm_engine.core.executor.worker.runner.mrope.prompts == {}


@pytest.mark.parametrize("kwargs", [dict(max_num_batched_tokens=7, enable_prefix_caching=False),
                                    dict(max_num_batched_tokens=5, enable_prefix_caching=True, block_size=8)],
                         ids=["chunked-7", "chunked-5-cached"])
def test_chunked_prefill_cuts_through_image_tokens(qwen_vl_dir, reference, kwargs):
    """Chunks of 7 or 5 tokens start and end inside images (of 35, 24 and 16 tokens): each chunk's M-RoPE rows
    are sliced from its prompt's."""
    llm = _llm(qwen_vl_dir, **kwargs)
    assert _tokens(llm, _prompts()) == reference


def test_prefix_cache_hits_the_same_image_and_never_another(qwen_vl_dir, reference):
    llm = _llm(qwen_vl_dir, enable_prefix_caching=True, block_size=8)
    assert _tokens(llm, _prompts(CASES[:1])) == reference[:1]
    again = llm.generate(_prompts(CASES[:1]), GREEDY, use_tqdm=False)[0]
    assert list(again.outputs[0].token_ids) == reference[0] and again.num_cached_tokens > 0
    other = llm.generate([{"prompt": CASES[0][0], "multi_modal_data": {"image": [IMAGES[1]]}}], GREEDY,
                         use_tqdm=False)[0]
    assert other.num_cached_tokens == 0
    processor, model = _hf(qwen_vl_dir)
    assert list(other.outputs[0].token_ids) == _hf_greedy(processor, model, CASES[0][0], [IMAGES[1]])


def test_preemption_recomputes_images_and_positions(qwen_vl_dir, reference):
    llm = _llm(qwen_vl_dir, enable_prefix_caching=False, block_size=8, num_gpu_blocks_override=10, max_model_len=80)
    assert _tokens(llm, _prompts() * 2) == reference * 2
    assert llm.llm_engine.stats()["num_preemptions"] > 0


def test_chat_with_image_parts_equals_transformers(qwen_vl_dir):
    """The template loops over content parts ("openai" content format): each image part becomes the vision
    tokens where the template puts them."""
    question = "what is in this picture"
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(IMAGES[0])}},
                                             {"type": "text", "text": question}]}]
    llm = _llm(qwen_vl_dir)
    got = llm.chat(messages, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    processor, model = _hf(qwen_vl_dir)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": question}]}],
                                         tokenize=False, add_generation_prompt=True)
    assert IMAGE + question in text
    assert list(got) == _hf_greedy(processor, model, text, [IMAGES[0]], add_special_tokens=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_decode_steps_replay_cuda_graphs(qwen_vl_dir, reference):
    """Decode steps of image requests use 1-D positions p + delta, so they replay the graphs."""
    llm = _llm(qwen_vl_dir)
    assert _tokens(llm, _prompts()) == reference
    assert llm.llm_engine.core.executor.worker.runner.cuda_graphs.num_replays[1] > 0
