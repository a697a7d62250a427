"""Shared checks for the tool-parser tests: run a parser whole and streamed in many chunkings."""

from __future__ import annotations

import json
import random
from typing import Any, Iterator, Optional

from pagoda.entrypoints.openai.tool_parsers import DeltaMessage, get_tool_parser


def parse(name: str, text: str):
    return get_tool_parser(name)(None).extract_tool_calls(text)


def chunkings(text: str, markers: tuple[str, ...] = ()) -> Iterator[list[str]]:
    yield [text]
    yield list(text)
    for seed in range(6):
        rng = random.Random(seed)
        chunks, i = [], 0
        while i < len(text):
            n = rng.randint(1, 9)
            chunks.append(text[i : i + n])
            i += n
        yield chunks
    for marker in markers:
        start = text.find(marker)
        while start >= 0:
            for cut in range(start + 1, start + len(marker)):
                yield [text[:cut], text[cut:]]
            start = text.find(marker, start + 1)


def stream(name: str, chunks: list[str]) -> tuple[Optional[str], list[tuple[str, str, str]]]:
    """Stream chunks through a fresh parser; returns (content or None, [(id, name, arguments)]),
    checking the delta shapes on the way."""
    parser = get_tool_parser(name)(None)
    previous = ""
    deltas: list[Optional[DeltaMessage]] = []
    for chunk in chunks:
        current = previous + chunk
        deltas.append(parser.extract_tool_calls_streaming(previous, current, chunk))
        previous = current
    deltas.append(parser.finish_streaming())
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for delta in deltas:
        if delta is None:
            continue
        assert delta.content is not None or delta.tool_calls, "an empty delta should be None"
        json.dumps(delta.to_dict())  # serializable
        if delta.content is not None:
            assert delta.content != ""
            content.append(delta.content)
        for call in delta.tool_calls:
            fn = call.function
            assert fn is not None
            if call.id is not None:  # the header: once per call, with its name
                assert call.index not in calls, "a call's header came twice"
                assert call.type == "function" and fn.name
                calls[call.index] = {"id": call.id, "name": fn.name, "args": []}
                order.append(call.index)
            else:
                assert call.index in calls, "argument fragments before the call's header"
                assert fn.name is None and call.type is None
            if fn.arguments is not None:
                calls[call.index]["args"].append(fn.arguments)
    assert order == list(range(len(order))), f"call indexes {order}"
    return "".join(content) or None, [(calls[i]["id"], calls[i]["name"], "".join(calls[i]["args"])) for i in order]


def check_stream_matches(name: str, text: str, markers: tuple[str, ...] = ()) -> None:
    """Every chunking of text streams to exactly the non-streamed result."""
    result = parse(name, text)
    want_calls = [(c.function.name, c.function.arguments) for c in result.tool_calls]
    for chunks in chunkings(text, markers):
        content, calls = stream(name, chunks)
        assert content == (result.content or None), (chunks, content, result.content)
        assert [(n, a) for _, n, a in calls] == want_calls, (chunks, calls)


def check_calls(name: str, text: str, content: Optional[str], calls: list[tuple[str, Any]],
                markers: tuple[str, ...] = ()) -> None:
    """text parses to content and calls [(name, arguments object)], whole and streamed."""
    result = parse(name, text)
    assert result.tools_called is bool(calls)
    assert result.content == content
    assert [c.function.name for c in result.tool_calls] == [n for n, _ in calls]
    for call, (_, args) in zip(result.tool_calls, calls):
        assert call.type == "function"
        assert json.loads(call.function.arguments) == args
        assert call.function.arguments == json.dumps(args, ensure_ascii=False)
    check_stream_matches(name, text, markers)


def check_plain(name: str, text: str, markers: tuple[str, ...] = ()) -> None:
    """No calls: the text is content, unchanged, whole and streamed."""
    result = parse(name, text)
    assert (result.tools_called, result.tool_calls, result.content) == (False, [], text)
    for chunks in chunkings(text, markers):
        assert stream(name, chunks) == ((text or None), [])


def check_malformed(name: str, text: str, markers: tuple[str, ...] = (), stream_is_content: bool = True) -> None:
    """A malformed call: whole, the output is content unchanged; streamed, nothing raises and (when
    it goes wrong before any call header) the stream is that same content."""
    result = parse(name, text)
    assert (result.tools_called, result.tool_calls, result.content) == (False, [], text)
    for chunks in chunkings(text, markers):
        content, calls = stream(name, chunks)
        if stream_is_content:
            assert (content, calls) == (text, []), chunks
