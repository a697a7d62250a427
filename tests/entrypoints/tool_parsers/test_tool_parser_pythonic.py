"""pythonic: [f(a=1), g(b="x")] read with ast (literals only)."""

import pytest
from tool_parser_checks import check_calls, check_malformed, check_plain

NAME = "pythonic"


@pytest.mark.parametrize("text", ["No tools needed.", "", "The answer is [1, 2]."])
def test_plain_text(text):
    check_plain(NAME, text)


def test_one_call():
    check_calls(NAME, '[get_weather(city="San Francisco", metric="celsius")]', None,
                [("get_weather", {"city": "San Francisco", "metric": "celsius"})])


def test_several_calls_literals_and_text_after():
    text = ("[get_weather(city='SF', days=3, hourly=True, extra=None), "
            "search(query=\"a, b) c\", tags=['x', \"y\"], opts={'k': (1, 2.5), 'n': -4}, note='''multi\nline'''), now()]\n"
            "I called three tools.")
    check_calls(NAME, text, "I called three tools.", [
        ("get_weather", {"city": "SF", "days": 3, "hourly": True, "extra": None}),
        ("search", {"query": "a, b) c", "tags": ["x", "y"], "opts": {"k": [1, 2.5], "n": -4}, "note": "multi\nline"}),
        ("now", {}),
    ])


def test_unicode_and_escapes():
    check_calls(NAME, "  [translate(text='Grüße, 世界 😀', sep=\"\\t\", empty='', q=\"it's\")]", None,
                [("translate", {"text": "Grüße, 世界 😀", "sep": "\t", "empty": "", "q": "it's"})])


@pytest.mark.parametrize("text", [
    "[1, 2, 3] are numbers",
    "[link](http://example.com)",
    "[f(1, 2)]",  # positional arguments
    "[f(a=x)]",  # a name, not a literal
    "[f(a=1, a=2)]",
    "[f(a=1)",
    "[f(a={1, 2})]",  # a set: not JSON
    "[f(a=float('nan'))]",
    "[obj.method(a=1)]",
])
def test_malformed_is_content(text):
    check_malformed(NAME, text, stream_is_content=False)
