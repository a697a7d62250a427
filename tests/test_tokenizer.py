"""get_tokenizer, chat-template loading and rendering, on a byte-level BPE trained in the session."""

import os

import pytest

from pagoda.tokenizer import apply_chat_template, get_tokenizer, load_chat_template, render_chat_template

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [{"role": "user", "content": "héllo 😀"}, {"role": "assistant", "content": "def f(x):"}]


@pytest.fixture(scope="module")
def tok_dir(test_tokenizer_dir):
    return test_tokenizer_dir


@pytest.fixture
def tok(tok_dir):
    tokenizer = get_tokenizer(tok_dir)
    tokenizer.chat_template = None
    return tokenizer


def test_get_tokenizer_loads_fast_tokenizer(tok):
    assert tok.is_fast
    ids = tok.encode("héllo 😀 世界", add_special_tokens=False)
    assert tok.decode(ids) == "héllo 😀 世界"


def test_get_tokenizer_missing_path_names_field(tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        get_tokenizer(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="tokenizer"):
        get_tokenizer(str(empty))
    with pytest.raises(ValueError, match="tokenizer_mode"):
        get_tokenizer(str(empty), tokenizer_mode="fastest")


def test_template_read_from_chat_template_jinja(tok_dir, tmp_path):
    tokenizer = get_tokenizer(tok_dir)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(tmp_path))
    assert os.path.isfile(tmp_path / "chat_template.jinja")
    assert get_tokenizer(str(tmp_path)).chat_template == TEMPLATE
    assert load_chat_template(get_tokenizer(str(tmp_path)), None) == TEMPLATE


def test_apply_chat_template_renders_and_tokenizes(tok):
    text = render_chat_template(tok, MESSAGES, chat_template=TEMPLATE)
    bos = tok.bos_token
    assert text == f"{bos}<|im_start|>user\nhéllo 😀<|im_end|>\n<|im_start|>assistant\ndef f(x):<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    ids = apply_chat_template(tok, MESSAGES, chat_template=TEMPLATE)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # BOS once, from the template


def test_apply_chat_template_uses_tokenizer_template_and_continue(tok):
    tok.chat_template = TEMPLATE
    text = render_chat_template(tok, MESSAGES, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\ndef f(x):")
    ids = apply_chat_template(tok, MESSAGES, add_generation_prompt=False, continue_final_message=True)
    assert tok.decode(ids) == text


def test_chat_template_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="chat_template"):
        apply_chat_template(tok, MESSAGES)
    with pytest.raises(ValueError, match="add_generation_prompt"):
        apply_chat_template(tok, MESSAGES, chat_template=TEMPLATE, add_generation_prompt=True,
                            continue_final_message=True)
    with pytest.raises(ValueError, match="chat_template"):
        load_chat_template(tok, str(tmp_path / "missing.jinja"))


def test_load_chat_template_file_and_inline(tok, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(TEMPLATE, encoding="utf-8")
    assert load_chat_template(tok, str(path)) == TEMPLATE
    assert load_chat_template(tok, "{{ messages[0]['content'] }}\\n") == "{{ messages[0]['content'] }}\n"
    assert load_chat_template(tok, None) is None
    text = render_chat_template(tok, MESSAGES, chat_template=str(path), add_generation_prompt=False)
    assert "héllo 😀" in text and not text.endswith("assistant\n")
