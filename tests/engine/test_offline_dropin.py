"""vLLM's offline API surface: every prompt key and keyword takes effect or is refused by name."""

import pytest

from pagoda import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, max_model_len=128)


def test_images_for_a_text_model_and_stray_processor_options_are_refused(llm):
    with pytest.raises(ValueError, match="'multi_modal_data'.*does not take images"):
        llm.generate({"prompt": "import os", "multi_modal_data": {"image": None}}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="'mm_processor_kwargs'.*only with multi_modal_data"):
        llm.generate({"prompt": "import os", "mm_processor_kwargs": {}}, GREEDY, use_tqdm=False)


@pytest.mark.parametrize("key", ["prompt_embeds", "cache_salt"])
def test_unimplemented_prompt_keys_are_refused(llm, key):
    with pytest.raises(ValueError, match=f"'{key}'.*not supported yet"):
        llm.generate({"prompt": "import os", key: {"image": None}}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match=f"'{key}'"):
        llm.generate([{"prompt_token_ids": [1, 2, 3], key: 1}], GREEDY, use_tqdm=False)


def test_unknown_prompt_key_is_refused_with_the_allowed_keys(llm):
    with pytest.raises(ValueError, match=r"unknown prompt key 'promt'.*\['prompt', 'prompt_token_ids'\]"):
        llm.generate({"promt": "import os"}, GREEDY, use_tqdm=False)
    # nothing of the refused call stays behind
    assert llm.llm_engine.get_num_unfinished_requests() == 0


def test_token_prompt_with_display_text_still_works(llm):
    ids = llm.get_tokenizer().encode("import os")
    by_ids = llm.generate({"prompt_token_ids": ids, "prompt": "import os"}, GREEDY, use_tqdm=False)[0]
    by_text = llm.generate("import os", GREEDY, use_tqdm=False)[0]
    assert by_ids.outputs[0].token_ids == by_text.outputs[0].token_ids
    assert by_ids.prompt == "import os"


def test_lora_request_is_refused_everywhere(llm):
    from pagoda import BeamSearchParams

    lora = object()
    with pytest.raises(ValueError, match="lora_request.*not supported yet"):
        llm.generate("import os", GREEDY, lora_request=lora, use_tqdm=False)
    with pytest.raises(ValueError, match="lora_request.*not supported yet"):
        llm.chat([{"role": "user", "content": "hi"}], GREEDY, lora_request=lora, use_tqdm=False)
    with pytest.raises(ValueError, match="lora_request.*not supported yet"):
        llm.beam_search(["import os"], BeamSearchParams(beam_width=2, max_tokens=2), lora_request=lora)
    # None (the default) is fine
    assert llm.generate("import os", GREEDY, lora_request=None, use_tqdm=False)[0].outputs[0].token_ids


def test_priority_needs_the_priority_policy(llm, llama_dir):
    with pytest.raises(ValueError, match="priority=1 needs scheduling_policy='priority'"):
        llm.generate(["import os"], GREEDY, priority=[1], use_tqdm=False)
    assert llm.llm_engine.get_num_unfinished_requests() == 0
    assert llm.generate(["import os"], GREEDY, priority=[0], use_tqdm=False)[0].outputs[0].token_ids
    ranked = LLM(llama_dir, max_model_len=128, scheduling_policy="priority")
    with pytest.raises(ValueError, match="priority must be a 64-bit integer"):
        ranked.generate(["import os"], GREEDY, priority=[2**70], use_tqdm=False)
    outs = ranked.generate(["import os", "x = 1"], GREEDY, priority=[5, -3], use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [4, 4]


def test_chat_takes_text_parts_and_tools(llm):
    tokenizer = llm.get_tokenizer()
    plain = llm.chat([{"role": "user", "content": "hello there"}], GREEDY, use_tqdm=False)[0]
    parts = llm.chat([{"role": "user", "content": [{"type": "text", "text": "hello there"}]}], GREEDY,
                     use_tqdm=False)[0]
    assert parts.prompt_token_ids == plain.prompt_token_ids
    assert parts.outputs[0].token_ids == plain.outputs[0].token_ids
    with pytest.raises(ValueError, match=r"messages\[0\]\.content\[0\]\.type 'image_url' is not supported"):
        llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], GREEDY,
                 use_tqdm=False)
    with pytest.raises(ValueError, match="mm_processor_kwargs: it takes effect only for a model that takes images"):
        llm.chat([{"role": "user", "content": "hi"}], GREEDY, mm_processor_kwargs={"x": 1}, use_tqdm=False)
    with pytest.raises(ValueError, match="chat_template_content_format='xml' is not one of"):
        llm.chat([{"role": "user", "content": "hi"}], GREEDY, chat_template_content_format="xml", use_tqdm=False)
    # tools reach the template
    template = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}"
                "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    out = llm.chat([{"role": "user", "content": "hi"}], GREEDY, chat_template=template, tools=tools,
                   use_tqdm=False)[0]
    assert tokenizer.decode(out.prompt_token_ids).startswith("TOOLS:get_weather;")
    # the "openai" content format hands the template a list of parts
    loop = "{% for m in messages %}{% for p in m.content %}[{{ p.text }}]{% endfor %}{% endfor %}"
    out = llm.chat([{"role": "user", "content": "ab"}], GREEDY, chat_template=loop,
                   chat_template_content_format="openai", use_tqdm=False)[0]
    assert tokenizer.decode(out.prompt_token_ids) == "[ab]"


@pytest.mark.parametrize("params, field", [
    (dict(stop_token_ids=[99999], min_tokens=2, max_tokens=3), "stop_token_ids"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
    (dict(seed=2**70), "seed"),
])
def test_out_of_range_ids_are_refused_before_admission(llm, params, field):
    with pytest.raises(ValueError, match=field):
        llm.generate("import os", SamplingParams(**params), use_tqdm=False)
    assert llm.llm_engine.get_num_unfinished_requests() == 0
    # the engine carries on
    assert len(llm.generate("import os", GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 4


def test_logprobs_minus_one_means_the_whole_vocabulary(llama_dir):
    llm = LLM(llama_dir, max_model_len=128, max_logprobs=100000)
    vocab = llm.model_config.vocab_size
    out = llm.generate("import os", SamplingParams(temperature=0, max_tokens=2, logprobs=-1, prompt_logprobs=-1),
                       use_tqdm=False)[0]
    assert all(len(position) == vocab for position in out.outputs[0].logprobs)
    assert all(len(position) == vocab for position in out.prompt_logprobs[1:])
    small = LLM(llama_dir, max_model_len=128, max_logprobs=5)
    with pytest.raises(ValueError, match=r"logprobs=-1 \(the whole vocabulary"):
        small.generate("import os", SamplingParams(logprobs=-1), use_tqdm=False)
