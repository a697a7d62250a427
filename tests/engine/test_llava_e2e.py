"""LLaVA-1.5 end to end offline: greedy tokens equal transformers' on a tiny random checkpoint with its real
processor, for one and several images, batched with text-only prompts, under chunked prefill (chunks cut
through an image's tokens) and prefix caching (the same image hits, another image never does)."""

import numpy as np
import pytest
import torch
from PIL import Image

from pagoda import LLM, SamplingParams
from pagoda.tiny_models import make_llava_checkpoint

MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


def _image(seed: int, size=(40, 50)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


IMAGES = [_image(1), _image(2, (64, 32)), _image(3, (32, 32))]
CASES = [
    ("describe <image> in words", [IMAGES[0]]),
    ("compare <image> and <image> please", [IMAGES[1], IMAGES[2]]),
    ("a text-only prompt between them", []),
    ("<image> starts this prompt", [IMAGES[2]]),
]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, test_tokenizer_dir):
    return make_llava_checkpoint(str(tmp_path_factory.mktemp("llava")), test_tokenizer_dir, seed=5)


def hf_vlm_greedy(folder: str, cases: list, max_new_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """transformers' greedy tokens for each (text, images) case, one request at a time, with the folder's
    processor and model class (AutoModelForImageTextToText)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    outputs = []
    for text, images in cases:
        inputs = processor(text=text, images=images or None, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        outputs.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    return outputs


@pytest.fixture(scope="module")
def reference(llava_dir):
    return hf_vlm_greedy(llava_dir, CASES)


def _prompts(cases=CASES):
    return [{"prompt": text, "multi_modal_data": {"image": images}} if images else text for text, images in cases]


def _tokens(llm, prompts):
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, GREEDY, use_tqdm=False)]


def _llm(folder, **kwargs):
    kwargs.setdefault("kv_cache_memory_bytes", 64 << 20)
    kwargs.setdefault("max_model_len", 256)
    return LLM(folder, dtype="float32", **kwargs)


def test_greedy_equals_transformers_batched_with_text(llava_dir, reference):
    llm = _llm(llava_dir)
    assert _tokens(llm, _prompts()) == reference
    assert _tokens(llm, _prompts()[:1]) == reference[:1]  # alone, too


@pytest.mark.parametrize("kwargs", [dict(max_num_batched_tokens=7, enable_prefix_caching=False, block_size=8),
                                    dict(max_num_batched_tokens=5, enable_prefix_caching=True, block_size=8)],
                         ids=["chunked-7", "chunked-5-cached"])
def test_chunked_prefill_cuts_through_image_tokens(llava_dir, reference, kwargs):
    llm = _llm(llava_dir, **kwargs)
    assert _tokens(llm, _prompts()) == reference


def test_prefix_cache_hits_the_same_image_and_never_another(llava_dir, reference):
    llm = _llm(llava_dir, enable_prefix_caching=True, block_size=8)
    first = CASES[0]
    assert _tokens(llm, _prompts([first])) == reference[:1]
    stats = llm.llm_engine.stats()
    hits = stats["prefix_cache_hits"]
    assert _tokens(llm, _prompts([first])) == reference[:1]  # the same image: its blocks are cached
    assert llm.llm_engine.stats()["prefix_cache_hits"] > hits
    hits = llm.llm_engine.stats()["prefix_cache_hits"]
    other = (first[0], [_image(99)])  # the same text with another image: no hit
    got = _tokens(llm, _prompts([other]))
    assert llm.llm_engine.stats()["prefix_cache_hits"] == hits
    fresh = _llm(llava_dir, enable_prefix_caching=False)
    assert got == _tokens(fresh, _prompts([other]))


def test_bad_multimodal_input_is_refused_naming_the_field(llava_dir, llama_dir):
    llm = _llm(llava_dir)
    with pytest.raises(ValueError, match=r"multi_modal_data\['image'\]\[0\] must be a PIL.Image.Image"):
        llm.generate({"prompt": "a <image>", "multi_modal_data": {"image": "not an image"}}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match=r"multi_modal_data\['video'\]: modality 'video' is not supported yet"):
        llm.generate({"prompt": "a", "multi_modal_data": {"video": []}}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="multi_modal_data"):
        llm.generate({"prompt": "no image token here", "multi_modal_data": {"image": IMAGES[0]}}, GREEDY,
                     use_tqdm=False)
    text_only = _llm(llama_dir)
    with pytest.raises(ValueError, match="does not take images"):
        text_only.generate({"prompt": "a <image>", "multi_modal_data": {"image": IMAGES[0]}}, GREEDY, use_tqdm=False)


def _data_url(image: Image.Image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_chat_with_image_parts_equals_transformers(llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    question = "what is in this picture"
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(IMAGES[0]),
                                                                                 "detail": "low"}},
                                             {"type": "text", "text": question}]}]
    llm = _llm(llava_dir)
    got = llm.chat(messages, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    pil = [{"role": "user", "content": [{"type": "image_pil", "image_pil": IMAGES[0]},
                                        {"type": "text", "text": question}]}]
    assert llm.chat(pil, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == got
    # transformers: the template's text with the image token where the part was (vLLM's "string" content format)
    processor = AutoProcessor.from_pretrained(llava_dir)
    text = processor.tokenizer.apply_chat_template([{"role": "user", "content": "<image>\n" + question}],
                                                   tokenize=False, add_generation_prompt=True)
    inputs = processor(text=text, images=[IMAGES[0]], return_tensors="pt", add_special_tokens=False)
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert list(got) == want.tolist()
    with pytest.raises(ValueError, match=r"messages\[0\].content\[0\]: the data is not an image"):
        llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}],
                 GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match=r"messages\[0\].content\[0\]: file:// URLs need"):
        llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
                 GREEDY, use_tqdm=False)


def test_limit_mm_per_prompt_refuses_more_images(llava_dir, llama_dir):
    for limit in ({"image": 1}, "image=1"):
        llm = _llm(llava_dir, limit_mm_per_prompt=limit)
        assert _tokens(llm, _prompts(CASES[:1])) is not None
        with pytest.raises(ValueError, match=r"2 images, more than the 1 a prompt may hold \(--limit-mm-per-prompt\)"):
            llm.generate(_prompts(CASES[1:2]), GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="takes no images"):
        _llm(llama_dir, limit_mm_per_prompt={"image": 2})
    assert _llm(llama_dir, limit_mm_per_prompt={"image": 0, "video": 0}) is not None  # text only: allowed


def test_preemption_recomputes_images(llava_dir, reference):
    # 8 blocks of 8 tokens: two requests cannot both grow to their ends (on a GPU, where steps are scheduled in
    # another order than on the CPU, 32 blocks did not always run out)
    llm = _llm(llava_dir, enable_prefix_caching=False, block_size=8, num_gpu_blocks_override=8, max_model_len=64)
    assert _tokens(llm, _prompts() * 2) == reference * 2
    assert llm.llm_engine.stats()["num_preemptions"] > 0
    _tokens(llm, ["text only"])  # the runner hears of the finished requests with the next step
    runner = llm.llm_engine.core.executor.worker.runner
    assert runner.mm.cache == {} and runner.mm.images == {}  # nothing held once every image request left


def test_encoder_budget_spreads_images_over_steps(llava_dir, reference, monkeypatch):
    """With max_num_batched_tokens 20 a step encodes one 16-token image at most: the two-image prompt's chunk
    stops before its second image, which the next step encodes; the tokens stay transformers'."""
    from pagoda.worker.mm_inputs import MultiModalInputs

    per_step = []
    original = MultiModalInputs._encode

    def encode(self, images):
        per_step.append(sum(image.length for image in images))
        return original(self, images)

    monkeypatch.setattr(MultiModalInputs, "_encode", encode)
    llm = _llm(llava_dir, max_num_batched_tokens=20, enable_prefix_caching=False)
    assert _tokens(llm, _prompts(CASES[1:2])) == reference[1:2]
    assert [n for n in per_step if n] == [16, 16]


@pytest.mark.parametrize("text_arch", ["MistralForCausalLM", "Qwen2ForCausalLM"])
def test_other_text_models_inside_llava(tmp_path, test_tokenizer_dir, text_arch):
    folder = make_llava_checkpoint(str(tmp_path / text_arch), test_tokenizer_dir, seed=7, text_arch=text_arch)
    assert _tokens(_llm(folder), _prompts([CASES[1]])) == hf_vlm_greedy(folder, [CASES[1]])


LOOPING_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% else %}"
                    "{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")


def test_chat_openai_content_format_puts_images_where_the_template_says(llava_dir):
    """A template that loops over content parts ("openai" format, detected): each image part reaches it as
    {"type": "image"}, and the template writes the image token there (here: after the text)."""
    question = "what is in this picture"
    messages = [{"role": "user", "content": [{"type": "text", "text": question},
                                             {"type": "image_pil", "image_pil": IMAGES[0]}]}]
    llm = _llm(llava_dir)
    got = llm.chat(messages, GREEDY, chat_template=LOOPING_TEMPLATE, use_tqdm=False)[0]
    text = f"<|im_start|>user\n{question}<image><|im_end|>\n<|im_start|>assistant"  # Jinja drops the last newline
    want = llm.generate({"prompt": text, "multi_modal_data": {"image": IMAGES[0]}},
                        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)[0]
    # the chat adds no special tokens beyond the template's; generate() adds the tokenizer's BOS
    assert list(got.prompt_token_ids) == list(want.prompt_token_ids)[1:]


def test_engine_mm_processor_kwargs_are_the_processor_defaults(llava_dir, llama_dir, reference):
    """--mm-processor-kwargs reach the processor for every request; a request's own keys win, key by key."""
    off = {"do_normalize": False}
    engine = _llm(llava_dir, mm_processor_kwargs=off)
    plain = _llm(llava_dir)
    unnormalized = [{**p, "mm_processor_kwargs": off} for p in _prompts(CASES[:1])]
    assert _tokens(engine, _prompts(CASES[:1])) == _tokens(plain, unnormalized) != reference[:1]
    back_on = [{**p, "mm_processor_kwargs": {"do_normalize": True}} for p in _prompts(CASES[:1])]
    assert _tokens(engine, back_on) == reference[:1]
    with pytest.raises(ValueError, match=r"mm_processor_kwargs \(--mm-processor-kwargs\): the model .* takes no "
                                         "images"):
        _llm(llama_dir, mm_processor_kwargs=off)
