"""--reasoning-parser through the real server: chat responses split into `reasoning` / `reasoning_content` and
`content`, full and streamed; `include_reasoning: false`; /v1/completions and servers without a parser
unchanged; the flags' errors (an unknown name stops the server at start, naming the registered ones).

The tiny random model writes random text, so each response is checked against the parser applied to the text
the model really generated (its token ids, decoded by the model's tokenizer). One server runs deepseek_r1 (on
random text: all reasoning); a second loads a --reasoning-parser-plugin whose end marker is a piece of that
server's greedy output, so the same greedy request there is split in the middle, end to end.
"""

import json
import logging
import os
import subprocess
import sys

import pytest

from openai_server_utils import REPO, output
from pagoda.entrypoints.cli.main import build_parser
from pagoda.entrypoints.openai import cli_args
from pagoda.entrypoints.openai.reasoning import MarkerReasoningParser, ReasoningParserManager

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "temperature": 0,
        "max_tokens": 40, "return_token_ids": True}


def validated(argv):
    args = build_parser().parse_args(["serve", *argv])
    cli_args.validate_args(args)
    return args


def server_args(model_dir, *extra):
    return ["--model", model_dir, "--served-model-name", "tiny", "--max-model-len", "512", "--disable-log-requests",
            "--disable-uvicorn-access-log", *extra]


def chat(server, **extra):
    response = server.post("/v1/chat/completions", json={**CHAT, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def stream_chat(server, **extra):
    """(joined reasoning, joined reasoning_content, joined content, the deltas) of a streamed chat."""
    response = server.post("/v1/chat/completions", json={**CHAT, "stream": True, **extra})
    assert response.status_code == 200, response.text
    deltas = [json.loads(line[6:])["choices"] for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [c[0]["delta"] for c in deltas if c]
    joined = {key: "".join(d.get(key) or "" for d in deltas) for key in ("reasoning", "reasoning_content", "content")}
    seen_content = False
    for d in deltas:
        seen_content = seen_content or bool(d.get("content"))
        assert not (seen_content and d.get("reasoning")), "reasoning after content"
        assert d.get("reasoning") == d.get("reasoning_content")
    return joined["reasoning"], joined["reasoning_content"], joined["content"], deltas


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def generated_text(tokenizer, body):
    """The text of the generated token ids (special tokens skipped, as the server's output text)."""
    return tokenizer.decode(body["choices"][0]["token_ids"], skip_special_tokens=True)


def check_split(server, tokenizer, parser_cls):
    """Full and streamed responses equal the parser applied to the generated text; returns that text."""
    body = chat(server)
    message = body["choices"][0]["message"]
    text = generated_text(tokenizer, body)
    reasoning, content = parser_cls(None).extract_reasoning(text)
    assert (message["reasoning"], message["reasoning_content"], message["content"]) == (reasoning, reasoning, content)
    streamed_reasoning, streamed_reasoning_content, streamed_content, _ = stream_chat(server)
    assert streamed_reasoning == streamed_reasoning_content == (reasoning or "")
    assert streamed_content == (content or "")
    return text, reasoning, content


@pytest.fixture(scope="module")
def r1_server(start_server, model_dir):
    return start_server(server_args(model_dir, "--reasoning-parser", "deepseek_r1", "--enable-reasoning"))


@pytest.fixture(scope="module")
def marker(r1_server, tokenizer):
    """A piece of the greedy output, not at its start: the plugin parser's end marker."""
    text = generated_text(tokenizer, chat(r1_server))
    for start in range(len(text) // 2, len(text) - 3):
        piece = text[start:start + 3]
        if piece.strip() and text.find(piece) > 0:
            return piece
    pytest.fail(f"no usable marker in the generated text {text!r}")


@pytest.fixture(scope="module")
def plugin_server(start_server, model_dir, marker, tmp_path_factory):
    plugin = tmp_path_factory.mktemp("reasoning-plugin") / "split_plugin.py"
    plugin.write_text(
        "from pagoda.entrypoints.openai.reasoning import MarkerReasoningParser, ReasoningParserManager\n\n"
        "@ReasoningParserManager.register_module('test_split')\n"
        "class Split(MarkerReasoningParser):\n"
        f"    end_markers = ({marker!r},)\n")
    return start_server(server_args(model_dir, "--reasoning-parser-plugin", str(plugin), "--reasoning-parser",
                                    "test_split"))


def test_deepseek_r1_server_splits_what_the_model_generated(r1_server, tokenizer):
    text, reasoning, content = check_split(r1_server, tokenizer, ReasoningParserManager.get_reasoning_parser("deepseek_r1"))
    assert text and reasoning  # random text has no </think>: all of it is reasoning, content null
    if "</think>" not in text:
        assert reasoning == text and content is None


def test_plugin_parser_splits_in_the_middle_end_to_end(plugin_server, tokenizer, marker):
    class Split(MarkerReasoningParser):
        end_markers = (marker,)

    text, reasoning, content = check_split(plugin_server, tokenizer, Split)
    assert marker in text, "greedy output differed between two servers of the same model"
    assert reasoning and content and reasoning + marker + content == text


def test_include_reasoning_false_drops_the_reasoning(plugin_server):
    full = chat(plugin_server)["choices"][0]["message"]
    dropped = chat(plugin_server, include_reasoning=False)["choices"][0]["message"]
    assert dropped["reasoning"] is None and dropped["reasoning_content"] is None
    assert dropped["content"] == full["content"]
    reasoning, reasoning_content, content, deltas = stream_chat(plugin_server, include_reasoning=False)
    assert reasoning == reasoning_content == "" and content == (full["content"] or "")
    assert not any("reasoning" in d or "reasoning_content" in d for d in deltas)


def test_n_choices_and_echo_with_a_parser(plugin_server, tokenizer, marker):
    class Split(MarkerReasoningParser):
        end_markers = (marker,)

    body = chat(plugin_server, n=2, temperature=1.0, seed=7, max_tokens=16)
    assert len(body["choices"]) == 2
    for choice in body["choices"]:
        text = generated_text(tokenizer, {"choices": [choice]})
        message = choice["message"]
        assert (message["reasoning"], message["content"]) == Split(None).extract_reasoning(text)
    echo = chat(plugin_server, echo=True, add_generation_prompt=False,
                messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Begun: "}])
    message = echo["choices"][0]["message"]
    reasoning, content = Split(None).extract_reasoning(generated_text(tokenizer, echo))
    assert message["reasoning"] == reasoning and message["content"] == "Begun: " + (content or "")


def test_completions_are_not_parsed(plugin_server):
    response = plugin_server.post("/v1/completions", json={"model": "tiny", "prompt": "Why", "max_tokens": 8,
                                                           "temperature": 0})
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert "reasoning" not in choice and "reasoning_content" not in choice and isinstance(choice["text"], str)


def test_without_a_parser_the_fields_are_absent(server):
    response = server.post("/v1/chat/completions", json={**CHAT, "model": None})
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert "reasoning" not in message and "reasoning_content" not in message and isinstance(message["content"], str)


# ---- flags ------------------------------------------------------------------------------------------------
def test_reasoning_parser_flag_takes_the_registered_names(model_dir):
    for name in ("deepseek_r1", "qwen3", "granite"):
        assert validated([model_dir, "--reasoning-parser", name]).reasoning_parser == name
    assert validated([model_dir]).reasoning_parser == ""


def test_unknown_reasoning_parser_lists_the_registered_ones(model_dir):
    with pytest.raises(ValueError, match="--reasoning-parser 'deepseek-r1' is not a registered reasoning parser; "
                                         "choose one of: deepseek_r1, granite, qwen3"):
        validated([model_dir, "--reasoning-parser", "deepseek-r1"])


def test_enable_reasoning_needs_a_parser_and_has_no_effect(model_dir, caplog):
    with pytest.raises(ValueError, match="--enable-reasoning needs --reasoning-parser"):
        validated([model_dir, "--enable-reasoning"])
    with caplog.at_level(logging.WARNING, logger="pagoda.entrypoints.openai.cli_args"):
        args = validated([model_dir, "--enable-reasoning", "--reasoning-parser", "qwen3"])
    assert args.reasoning_parser == "qwen3"
    assert any("--enable-reasoning has no effect" in r.getMessage() for r in caplog.records)


def test_reasoning_parser_plugin_flag(model_dir, tmp_path):
    with pytest.raises(ValueError, match="--reasoning-parser-plugin .* is not a file"):
        validated([model_dir, "--reasoning-parser-plugin", str(tmp_path / "none.py"), "--reasoning-parser", "x"])
    plugin = tmp_path / "flag_plugin.py"
    plugin.write_text("from pagoda.entrypoints.openai.reasoning import MarkerReasoningParser, ReasoningParserManager\n"
                      "ReasoningParserManager.register_module('test_flag_plugin', module=type('P', "
                      "(MarkerReasoningParser,), {'end_markers': ('|',)}))\n")
    try:
        args = validated([model_dir, "--reasoning-parser-plugin", str(plugin), "--reasoning-parser",
                          "test_flag_plugin"])
        assert args.reasoning_parser == "test_flag_plugin"
    finally:
        ReasoningParserManager.reasoning_parsers.pop("test_flag_plugin", None)


def test_unknown_reasoning_parser_stops_the_real_server_before_loading(model_dir):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "pagoda.entrypoints.cli.main", "serve", model_dir, "--port", "0",
                             "--reasoning-parser", "nope"], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env=env)
    assert result.returncode == 1
    assert "--reasoning-parser 'nope'" in output(result) and "deepseek_r1, granite, qwen3" in output(result)
    assert "engine core" not in output(result)
