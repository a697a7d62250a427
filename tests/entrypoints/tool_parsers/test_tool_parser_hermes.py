"""hermes: <tool_call>{...}</tool_call>, whole and streamed."""

import pytest
from tool_parser_checks import check_calls, check_malformed, check_plain, parse, stream

NAME = "hermes"
MARKERS = ("<tool_call>", "</tool_call>")
WEATHER = {"location": "San Francisco, CA", "unit": "fahrenheit"}


@pytest.mark.parametrize("text", [
    "Hello! How can I help you today?",
    "",
    "  leading and trailing spaces \n",
    "Use a <tool> tag or <tool_ and < signs, then a tool_call> word.",
    "I will not call a tool: </tool_call> is just text here.",
])
def test_plain_text(text):
    check_plain(NAME, text, MARKERS)


def test_one_call():
    text = '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "San Francisco, CA", "unit": "fahrenheit"}}\n</tool_call>'
    check_calls(NAME, text, None, [("get_current_weather", WEATHER)], MARKERS)


def test_several_calls_with_text_around():
    text = (
        "Let me look that up.\n"
        '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "San Francisco, CA", "unit": "fahrenheit"}}\n</tool_call>\n'
        '<tool_call>\n{"arguments": {"city": "Paris"}, "name": "get_time"}\n</tool_call>\n'
        "Done."
    )
    check_calls(NAME, text, "Let me look that up.Done.",
                [("get_current_weather", WEATHER), ("get_time", {"city": "Paris"})], MARKERS)


def test_unicode_and_nested_arguments():
    args = {"query": "Zürich \"Altstadt\" 東京 😀\n\ttab \\ slash", "filters": {"tags": ["a", {"deep": [1, 2.5, -3e2, True, None]}], "empty": {}, "list": []}}
    text = ('<tool_call>{"name": "search", "arguments": {"query": "Z\\u00fcrich \\"Altstadt\\" 東京 \\ud83d\\ude00\\n\\ttab \\\\ slash",'
            ' "filters": {"tags": ["a", {"deep": [1, 2.5, -3e2, true, null]}], "empty": {}, "list": []}}}</tool_call>')
    result = parse(NAME, text)
    import json
    assert json.loads(result.tool_calls[0].function.arguments) == args
    assert result.tool_calls[0].function.arguments == (
        '{"query": "Zürich \\"Altstadt\\" 東京 😀\\n\\ttab \\\\ slash", '
        '"filters": {"tags": ["a", {"deep": [1, 2.5, -3e2, true, null]}], "empty": {}, "list": []}}')
    from tool_parser_checks import check_stream_matches
    check_stream_matches(NAME, text, MARKERS)


def test_no_arguments_and_extra_keys():
    check_calls(NAME, '<tool_call>{"name": "now", "id": 7}</tool_call>', None, [("now", {})], MARKERS)


def test_unterminated_but_complete_call_is_kept():
    check_calls(NAME, 'Sure.\n<tool_call>{"name": "f", "arguments": {"x": 1}}\n', "Sure.", [("f", {"x": 1})], MARKERS)


def test_ids_and_shapes():
    result = parse(NAME, '<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": "g", "arguments": {}}</tool_call>')
    ids = [c.id for c in result.tool_calls]
    assert all(i.startswith("chatcmpl-tool-") and len(i) == 14 + 32 for i in ids) and len(set(ids)) == 2
    assert result.tool_calls[0].to_dict() == {"id": ids[0], "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize("text", [
    "<tool_call>this is not json</tool_call>",
    'Hi <tool_call>{"name": "f", "arguments": {"a": }}</tool_call>',
    '<tool_call>{"arguments": {"a": 1}}</tool_call>',
    '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"a": 1}',
    '<tool_call>{"name": "f", "arguments": {"a": "unterminated',
    "text then <tool_call>",
    '<tool_call>{"name": "f", "arguments": {}} trailing junk</tool_call>',
])
def test_malformed_is_content(text):
    check_malformed(NAME, text, MARKERS, stream_is_content=False)


@pytest.mark.parametrize("text", ["<tool_call>this is not json</tool_call>", '<tool_call>{"arguments": {"a": 1}}</tool_call>', "text then <tool_call>"])
def test_malformed_before_any_header_streams_as_content(text):
    check_malformed(NAME, text, MARKERS)


def test_one_good_one_bad_call():
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": "g", "arguments": [}</tool_call>'
    check_malformed(NAME, text, MARKERS, stream_is_content=False)
    content, calls = stream(NAME, list(text))
    assert [c[1] for c in calls] == ["f", "g"]  # already sent: a stream cannot take them back
    assert content == '<tool_call>{"name": "g", "arguments": [}</tool_call>'  # the bad call's raw text


def test_partial_marker_is_held_back():
    from pagoda.entrypoints.openai.tool_parsers import get_tool_parser
    parser = get_tool_parser(NAME)()
    assert parser.extract_tool_calls_streaming("", "Hi <tool_", "Hi <tool_").content == "Hi"
    assert parser.extract_tool_calls_streaming("Hi <tool_", "Hi <tool_c", "c") is None
    delta = parser.extract_tool_calls_streaming("Hi <tool_c", "Hi <tool_cx", "x")
    assert delta.content == " <tool_cx"
