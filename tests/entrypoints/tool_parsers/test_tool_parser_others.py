"""granite, granite-20b-fc, internlm, jamba: whole and streamed."""

import pytest
from tool_parser_checks import check_calls, check_malformed, check_plain

W = {"city": "Boston", "unit": "°F"}
N = {"q": "東京", "deep": {"list": [1, {"x": None}], "ok": False}}

CASES = {
    "granite": (
        ("<|tool_call|>", "<tool_call>"),
        [
            ('<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Boston", "unit": "°F"}}]', None, [("get_weather", W)]),
            ('Checking.<tool_call>[{"name": "a", "arguments": {"city": "Boston", "unit": "°F"}}, {"name": "b", "arguments": {"q": "東京", "deep": {"list": [1, {"x": null}], "ok": false}}}]\nOK',
             "Checking.OK", [("a", W), ("b", N)]),
        ],
        ["<|tool_call|>nope", '<tool_call>[{"name": "f", "arguments": {]'],
    ),
    "granite-20b-fc": (
        ("<function_call>",),
        [
            ('<function_call> {"name": "get_weather", "arguments": {"city": "Boston", "unit": "°F"}}', None, [("get_weather", W)]),
            ('Sure <function_call> {"name": "a", "arguments": {"city": "Boston", "unit": "°F"}} <function_call> {"name": "b", "arguments": {"q": "東京", "deep": {"list": [1, {"x": null}], "ok": false}}}',
             "Sure", [("a", W), ("b", N)]),
        ],
        ["<function_call> not json", '<function_call> {"name": "f", "arguments": {"a": 1}'],
    ),
    "internlm": (
        ("<|action_start|><|plugin|>", "<|action_end|>"),
        [
            ('<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Boston", "unit": "°F"}}<|action_end|>', None, [("get_weather", W)]),
            ('I need two tools.<|action_start|><|plugin|>{"name": "a", "parameters": {"city": "Boston", "unit": "°F"}}<|action_end|>\n<|action_start|><|plugin|>{"name": "b", "arguments": {"q": "東京", "deep": {"list": [1, {"x": null}], "ok": false}}}<|action_end|>',
             "I need two tools.", [("a", W), ("b", N)]),
        ],
        ["<|action_start|><|plugin|>oops<|action_end|>", '<|action_start|><|plugin|>{"name": "f"}<|action_end|> extra <|action_start|><|plugin|>{"name": 1}'],
    ),
    "jamba": (
        ("<tool_calls>", "</tool_calls>"),
        [
            ('<tool_calls>[{"name": "get_weather", "arguments": {"city": "Boston", "unit": "°F"}}]</tool_calls>', None, [("get_weather", W)]),
            ('Here.\n<tool_calls>[\n  {"name": "a", "arguments": {"city": "Boston", "unit": "°F"}},\n  {"name": "b", "arguments": {"q": "東京", "deep": {"list": [1, {"x": null}], "ok": false}}}\n]</tool_calls>\nBye',
             "Here.Bye", [("a", W), ("b", N)]),
        ],
        ["<tool_calls>{}</tool_calls>", '<tool_calls>[{"name": "f", "arguments": {}}]</tool_call>'],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("text", ["Just an answer.", "", "angle <brackets> and <| bars |> <function"])
def test_plain_text(name, text):
    check_plain(name, text, CASES[name][0])


@pytest.mark.parametrize("name,case", [(n, i) for n in sorted(CASES) for i in range(2)])
def test_calls(name, case):
    markers, good, _ = CASES[name]
    text, content, calls = good[case]
    check_calls(name, text, content, calls, markers)


@pytest.mark.parametrize("name,case", [(n, i) for n in sorted(CASES) for i in range(2)])
def test_malformed(name, case):
    markers, _, bad = CASES[name]
    check_malformed(name, bad[case], markers, stream_is_content=False)
