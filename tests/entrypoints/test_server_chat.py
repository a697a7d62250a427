"""/v1/chat/completions through the official openai client: plain and streamed, content parts, logprobs,
n, and vLLM's extra parameters (echo, add_generation_prompt, continue_final_message, chat_template...)."""

from openai_server_utils import MODEL_NAME

MESSAGES = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "Write a loop."},
    {"role": "assistant", "content": "for i in range(3):"},
    {"role": "user", "content": "Now print i."},
]


def chat(client, messages=MESSAGES, **kwargs):
    kwargs.setdefault("max_tokens", 12)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL_NAME, messages=messages, **kwargs)


def test_chat(client):
    out = chat(client)
    choice = out.choices[0]
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion" and out.model == MODEL_NAME
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_deltas_join_to_the_full_message(client):
    full = chat(client, max_tokens=20)
    chunks = list(chat(client, max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


def test_stream_without_usage(client):
    chunks = list(chat(client, max_tokens=5, stream=True))
    assert all(c.choices for c in chunks)


def test_content_parts_equal_string_content(client):
    parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in MESSAGES]
    assert chat(client, messages=parts).choices[0].message.content == chat(client).choices[0].message.content


def test_max_completion_tokens(client):
    out = chat(client, max_tokens=None, max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"
    assert chat(client, max_tokens=4, extra_body={"ignore_eos": True}).usage.completion_tokens == 4


def test_logprobs(client):
    out = chat(client, logprobs=True, top_logprobs=2, max_tokens=5, extra_body={"ignore_eos": True})
    content = out.choices[0].logprobs.content
    assert len(content) == 5
    assert "".join(c.token for c in content) == out.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token  # greedy
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert bytes(entry.bytes).decode() == entry.token
    streamed = chat(client, logprobs=True, top_logprobs=2, max_tokens=5, stream=True, extra_body={"ignore_eos": True})
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert tokens == [c.token for c in content]


def test_n(client):
    out = chat(client, n=2, temperature=1.0, seed=11, max_tokens=6)
    assert [c.index for c in out.choices] == [0, 1]
    streamed = chat(client, n=2, temperature=1.0, seed=11, max_tokens=6, stream=True)
    texts = {0: "", 1: ""}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert [texts[0], texts[1]] == [c.message.content for c in out.choices]


def test_continue_final_message_and_echo(client, server):
    messages = MESSAGES + [{"role": "assistant", "content": "print("}]
    out = chat(client, messages=messages, max_tokens=5, extra_body={
        "add_generation_prompt": False, "continue_final_message": True, "echo": True})
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content.startswith("print(")
    rendered = server.post("/tokenize", {"messages": messages, "add_generation_prompt": False,
                                         "continue_final_message": True}).json()
    assert out.usage.prompt_tokens == rendered["count"]


def test_request_chat_template_kwargs_and_documents(client):
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if documents %}docs: {{ documents | length }}\n{% endif %}"
                "{% if shout %}LOUD\n{% endif %}assistant:")
    base = chat(client, max_tokens=1, extra_body={"chat_template": template})
    with_docs = chat(client, max_tokens=1, extra_body={"chat_template": template,
                                                       "documents": [{"title": "a", "text": "b"}],
                                                       "chat_template_kwargs": {"shout": True}})
    assert with_docs.usage.prompt_tokens > base.usage.prompt_tokens
    default = chat(client, max_tokens=1)
    assert default.usage.prompt_tokens != base.usage.prompt_tokens


def test_response_format_text_and_user(client):
    out = chat(client, max_tokens=2, response_format={"type": "text"}, user="u-1")
    assert out.choices[0].message.content is not None


def test_content_format_is_detected_from_the_template(server):
    # This template loops over content parts, so "auto" hands it OpenAI-style parts even for string content.
    template = "{% for m in messages %}{% for p in m['content'] %}[{{ p['text'] }}]{% endfor %}{% endfor %}"
    for content in ("hello there", [{"type": "text", "text": "hello there"}]):
        rendered = server.post("/tokenize", {"messages": [{"role": "user", "content": content}],
                                             "chat_template": template}).json()
        plain = server.post("/tokenize", {"prompt": "[hello there]", "add_special_tokens": False}).json()
        assert rendered["tokens"] == plain["tokens"]
