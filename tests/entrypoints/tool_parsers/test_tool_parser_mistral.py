"""mistral: [TOOL_CALLS][{...}, ...] and [TOOL_CALLS]name{...}; 9-character ids."""

import pytest
from tool_parser_checks import check_calls, check_malformed, check_plain, parse, stream

NAME = "mistral"
MARKERS = ("[TOOL_CALLS]",)


@pytest.mark.parametrize("text", ["Bonjour !", "", "a list [1, 2] and [TOOL", "[TOOL_CALL] is close"])
def test_plain_text(text):
    check_plain(NAME, text, MARKERS)


def test_array_of_calls():
    text = '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}}, {"name": "add", "arguments": {"a": 3.5, "b": 4}}]'
    check_calls(NAME, text, None, [("get_current_weather", {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}), ("add", {"a": 3.5, "b": 4})], MARKERS)


def test_v11_name_and_arguments():
    text = 'Sure.[TOOL_CALLS]get_weather{"city": "Zürich", "opts": {"days": [1, 2]}}[TOOL_CALLS]add[ARGS]{"a": 1, "b": -2}'
    check_calls(NAME, text, "Sure.", [("get_weather", {"city": "Zürich", "opts": {"days": [1, 2]}}), ("add", {"a": 1, "b": -2})], MARKERS)


def test_ids_are_nine_alphanumerics():
    text = '[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}]'
    for call in parse(NAME, text).tool_calls:
        assert len(call.id) == 9 and call.id.isalnum()
    for call_id, _, _ in stream(NAME, list(text))[1]:
        assert len(call_id) == 9 and call_id.isalnum()


@pytest.mark.parametrize("text", [
    "[TOOL_CALLS] I cannot call tools right now.",
    '[TOOL_CALLS][{"arguments": {}}]',
    "[TOOL_CALLS][]",
    '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}',
])
def test_malformed_is_content(text):
    check_malformed(NAME, text, MARKERS, stream_is_content='"name"' not in text)
