"""llama3_json: {"name": ..., "parameters": {...}} at the start or after <|python_tag|>, ';'-separated."""

import pytest
from tool_parser_checks import check_calls, check_malformed, check_plain

NAME = "llama3_json"
MARKERS = ("<|python_tag|>",)


@pytest.mark.parametrize("text", ["The weather is sunny.", "", "Use {braces} freely", "a <|python and <|"])
def test_plain_text(text):
    check_plain(NAME, text, MARKERS)


def test_one_call():
    text = '{"name": "get_weather", "parameters": {"city": "San Francisco", "unit": "celsius"}}'
    check_calls(NAME, text, None, [("get_weather", {"city": "San Francisco", "unit": "celsius"})], MARKERS)


def test_python_tag_and_several_calls():
    text = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "arguments": {"y": [1, {"z": "é"}]}} ;{"name": "c", "parameters": {}}'
    check_calls(NAME, text, None, [("a", {"x": 1}), ("b", {"y": [1, {"z": "é"}]}), ("c", {})], MARKERS)


def test_text_before_tag_and_after_calls():
    text = 'Let me check.<|python_tag|>{"type": "function", "name": "f", "parameters": {"q": "日本"}}\nDone.'
    check_calls(NAME, text, "Let me check.Done.", [("f", {"q": "日本"})], MARKERS)


def test_leading_whitespace():
    check_calls(NAME, '\n  {"name": "f", "parameters": {"a": true}}', None, [("f", {"a": True})], MARKERS)


@pytest.mark.parametrize("text", [
    '{"answer": 42}',  # plain JSON: no name
    '{"name": "f", "parameters": {"a": 1}',
    '{"name": "f", "parameters": {}, "arguments": {}}',
    '<|python_tag|>brave_search.call(query="x")',
    "{not json at all}",
])
def test_malformed_is_content(text):
    check_malformed(NAME, text, MARKERS, stream_is_content=not text.startswith('{"name"'))
