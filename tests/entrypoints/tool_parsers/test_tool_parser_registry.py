"""The registry by vLLM's names, unknown names, and --tool-parser-plugin files."""

import pytest

from pagoda.entrypoints.openai.tool_parsers import (
    ToolParser,
    ToolParserManager,
    UnknownToolParserError,
    get_tool_parser,
    import_tool_parser,
    list_tool_parsers,
)

VLLM_NAMES = ["hermes", "llama3_json", "mistral", "pythonic", "granite", "granite-20b-fc", "internlm", "jamba"]


def test_vllm_names_registered():
    assert set(VLLM_NAMES) <= set(list_tool_parsers())
    for name in VLLM_NAMES:
        assert issubclass(get_tool_parser(name), ToolParser)
        get_tool_parser(name)(None)  # no tokenizer needed


def test_unknown_name_lists_choices():
    with pytest.raises(UnknownToolParserError) as info:
        get_tool_parser("nope")
    assert "nope" in str(info.value) and "hermes" in str(info.value) and "pythonic" in str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_plugin_file(tmp_path):
    plugin = tmp_path / "my_parser.py"
    plugin.write_text(
        "from pagoda.entrypoints.openai.tool_parsers import ToolParser, ToolParserManager, ExtractedToolCalls\n"
        "@ToolParserManager.register_module(['my_plugin', 'my_plugin_alias'])\n"
        "class MyParser(ToolParser):\n"
        "    def extract_tool_calls(self, model_output, request=None):\n"
        "        return ExtractedToolCalls(False, [], model_output.upper())\n"
        "class Unregistered(ToolParser):\n"
        "    name = 'my_auto'\n"
    )
    try:
        assert import_tool_parser(str(plugin)) == ["my_auto", "my_plugin", "my_plugin_alias"]
        assert get_tool_parser("my_plugin")(None).extract_tool_calls("hi").content == "HI"
        assert get_tool_parser("my_auto").__name__ == "Unregistered"
    finally:
        for name in ("my_plugin", "my_plugin_alias", "my_auto"):
            ToolParserManager.tool_parsers.pop(name, None)


def test_plugin_errors(tmp_path):
    with pytest.raises(ImportError, match="missing.py"):
        import_tool_parser(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ImportError, match="boom"):
        import_tool_parser(str(broken))


def test_adjust_request_keeps_special_tokens():
    class Request:
        tools = [{"type": "function"}]
        tool_choice = "auto"
        skip_special_tokens = True

    request = get_tool_parser("mistral")(None).adjust_request(Request())
    assert request.skip_special_tokens is False
    request = get_tool_parser("hermes")(None).adjust_request(Request())
    assert request.skip_special_tokens is True


def test_unexpected_error_never_raises(monkeypatch):
    parser_cls = get_tool_parser("hermes")

    def broken(self, m, marker, c):
        raise RuntimeError("bug")
        yield

    monkeypatch.setattr(parser_cls, "_region", broken)
    parser = parser_cls(None)
    text = '<tool_call>{"name": "f"}</tool_call>'
    assert parser.extract_tool_calls(text).content == text
    assert parser.extract_tool_calls_streaming("", text, text).content == text
    assert parser.extract_tool_calls_streaming(text, text + "x", "x").content == "x"
    assert parser.finish_streaming() is None
