"""Tool-call parsers: the base class, the result types and the registry (vLLM's `--tool-call-parser`).

A parser turns a chat completion's generated text into OpenAI tool calls, whole
(`extract_tool_calls`) or while it streams (`extract_tool_calls_streaming`, then `finish_streaming`).
One parser instance serves one choice of one request: streaming keeps state between calls.

Invariants:
- Both paths run the same character-at-a-time machine (`_machine.py`) over the text, so a stream cut
  into any chunks gives what the whole text gives: the content deltas join to the non-streamed
  `content` ("" where that is None), each call's header (`index`, `id`, `type`, `function.name`)
  comes exactly once, before any of its argument fragments, and its fragments join to exactly the
  non-streamed `function.arguments`. Call indexes are 0, 1, ... in the order the calls start.
- `function.arguments` is always a JSON text: the call's arguments re-serialized with `json.dumps`'s
  separators (", " and ": "), non-ASCII kept as is; numbers keep their written form; a call without
  arguments gets "{}". Argument fragments are sent as soon as they are final (string characters as
  they arrive, a number or literal once it ends), never a part that could still change.
- Content is the text outside the calls. Whitespace that touches a call (before it or after it) is
  not content, so a reply that is only calls has `content` None. Text that could still be the start
  of a tool-call marker is held back until it is known not to be one (or the output ends), so a
  partial tag never reaches the client as content.
- Malformed calls never raise. Non-streamed: any malformed call makes the whole output plain content
  (`tools_called` False, `content` the output unchanged), as vLLM does. Streamed: the raw text of the
  malformed call, from its marker on, is sent as content (call deltas already sent for it stay
  sent: a stream cannot take deltas back); parsing goes on after it.
- An unexpected error inside a parser is logged, and the output (or the rest of the stream) is
  passed on as plain content.
- A call still open when the output ends is kept if its JSON is complete (the closing tag was cut
  off by a stop string or the length limit), else it is malformed.

Writing a parser: subclass `ToolParser`, set `start_markers` (and `start_chars` for formats whose
calls begin at the very start of the output with no marker), and write `_region`, a generator that
reads one call region character by character through the machine's helpers (see hermes_tool_parser.py
for the smallest one). A plugin may instead override `extract_tool_calls` and
`extract_tool_calls_streaming` itself; register it with `@ToolParserManager.register_module("name")`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional, Union

logger = logging.getLogger(__name__)


def make_tool_call_id() -> str:
    """vLLM's default tool-call id: "chatcmpl-tool-" and 32 hex digits."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------------------------
# Result types (plain dataclasses; `to_dict` gives the OpenAI JSON shape, None fields left out).


@dataclass
class FunctionCall:
    name: str
    arguments: str  # a JSON text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ToolCall:
    function: FunctionCall
    id: str = field(default_factory=make_tool_call_id)
    type: str = "function"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "function": self.function.to_dict()}


@dataclass
class DeltaFunctionCall:
    name: Optional[str] = None
    arguments: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.arguments is not None:
            out["arguments"] = self.arguments
        return out


@dataclass
class DeltaToolCall:
    index: int
    id: Optional[str] = None
    type: Optional[str] = None
    function: Optional[DeltaFunctionCall] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
        if self.type is not None:
            out["type"] = self.type
        if self.function is not None:
            out["function"] = self.function.to_dict()
        return out


@dataclass
class DeltaMessage:
    content: Optional[str] = None
    tool_calls: list[DeltaToolCall] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.content is not None:
            out["content"] = self.content
        if self.tool_calls:
            out["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        return out


@dataclass
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: Optional[str]


ExtractedToolCallInformation = ExtractedToolCalls  # vLLM's name


# ---------------------------------------------------------------------------------------------


class ToolParser:
    """Base of every parser; see the module docstring for what a parser guarantees."""

    # Strings that open a call region anywhere in the output.
    start_markers: ClassVar[tuple[str, ...]] = ()
    # Characters that open a call region when they are the first non-whitespace of the output.
    start_chars: ClassVar[str] = ""
    # Keys of a call object that hold the arguments (the first one found is used).
    argument_keys: ClassVar[tuple[str, ...]] = ("arguments",)
    # The markers are special tokens: detokenizing must keep them (vLLM's adjust_request).
    markers_are_special_tokens: ClassVar[bool] = False

    def __init__(self, tokenizer: Any = None):
        self.model_tokenizer = tokenizer
        # vLLM-compatible streaming state, kept for callers that look at it.
        self.prev_tool_call_arr: list[dict[str, Any]] = []
        self.streamed_args_for_tool: list[str] = []
        self.current_tool_id: int = -1
        self._stream: Any = None
        self._stream_len = 0
        self._stream_broken = False

    @property
    def vocab(self) -> dict[str, int]:
        get_vocab = getattr(self.model_tokenizer, "get_vocab", None)
        return get_vocab() if get_vocab is not None else {}

    def make_tool_call_id(self) -> str:
        return make_tool_call_id()

    def adjust_request(self, request: Any) -> Any:
        """Keep special tokens in the detokenized text when the markers are special tokens."""
        if self.markers_are_special_tokens and getattr(request, "tools", None) and getattr(
            request, "tool_choice", None
        ) != "none":
            try:
                request.skip_special_tokens = False
            except Exception:  # a request type without the field: nothing to adjust
                pass
        return request

    def _region(self, m: Any, marker: str, c: Any) -> Iterator[None]:
        """Generator reading one call region after `marker` (c: its first character, or NEXT)."""
        raise NotImplementedError
        yield  # pragma: no cover

    # -- whole output ---------------------------------------------------------------------------

    def _could_call(self, text: str) -> bool:
        if any(marker in text for marker in self.start_markers):
            return True
        stripped = text.lstrip()
        return bool(stripped) and stripped[0] in self.start_chars

    def extract_tool_calls(self, model_output: str, request: Any = None) -> ExtractedToolCalls:
        from pagoda.entrypoints.openai.tool_parsers._machine import Machine

        if not self._could_call(model_output):
            return ExtractedToolCalls(False, [], model_output)
        try:
            machine = Machine(self)
            for ch in model_output:
                machine.feed(ch)
            machine.feed(None)
        except Exception:
            logger.exception("%s: error extracting tool calls; the output stays content", type(self).__name__)
            return ExtractedToolCalls(False, [], model_output)
        calls: dict[int, list[Any]] = {}
        content: list[str] = []
        for event in machine.events:
            if event[0] == "content":
                content.append(event[1])
            elif event[0] == "call":
                calls[event[1]] = [event[2], event[3], []]
            else:
                calls[event[1]][2].append(event[2])
        if machine.failed or not calls:
            return ExtractedToolCalls(False, [], model_output)
        tool_calls = [
            ToolCall(id=call_id, function=FunctionCall(name=name, arguments="".join(args)))
            for call_id, name, args in (calls[i] for i in sorted(calls))
        ]
        text = "".join(content)
        return ExtractedToolCalls(True, tool_calls, text or None)

    # -- streaming ------------------------------------------------------------------------------

    def extract_tool_calls_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Any = None,
        current_token_ids: Any = None,
        delta_token_ids: Any = None,
        request: Any = None,
    ) -> Optional[DeltaMessage]:
        """The delta to send for `delta_text` (None: nothing to send yet). current_text is
        previous_text + delta_text; only the text after what this parser has seen is read."""
        from pagoda.entrypoints.openai.tool_parsers._machine import Machine

        if len(current_text) >= self._stream_len:
            new = current_text[self._stream_len :]
        else:
            new = delta_text
        self._stream_len += len(new)
        if self._stream_broken:
            return DeltaMessage(content=new) if new else None
        if self._stream is None:
            self._stream = Machine(self)
        try:
            for ch in new:
                self._stream.feed(ch)
            return self._drain()
        except Exception:
            logger.exception("%s: error in streamed tool parsing; the rest is content", type(self).__name__)
            self._stream_broken = True
            return DeltaMessage(content=new) if new else None

    def finish_streaming(self) -> Optional[DeltaMessage]:
        """Call once when the output has ended: releases held-back text (and closes open calls)."""
        if self._stream is None or self._stream_broken:
            return None
        try:
            self._stream.feed(None)
            return self._drain()
        except Exception:
            logger.exception("%s: error finishing streamed tool parsing", type(self).__name__)
            self._stream_broken = True
            return None

    @property
    def tools_called_streaming(self) -> bool:
        """True once a call header was sent (the finish_reason is then "tool_calls")."""
        return self.current_tool_id >= 0

    def _drain(self) -> Optional[DeltaMessage]:
        events = self._stream.take_events()
        if not events:
            return None
        content: list[str] = []
        deltas: list[DeltaToolCall] = []
        for event in events:
            kind = event[0]
            if kind == "content":
                content.append(event[1])
            elif kind == "call":
                index, call_id, name = event[1], event[2], event[3]
                deltas.append(DeltaToolCall(index, call_id, "function", DeltaFunctionCall(name=name)))
                self.current_tool_id = index
                self.prev_tool_call_arr.append({"name": name, "arguments": ""})
                self.streamed_args_for_tool.append("")
            else:
                index, fragment = event[1], event[2]
                if not fragment:
                    continue
                self.streamed_args_for_tool[index] += fragment
                self.prev_tool_call_arr[index]["arguments"] += fragment
                last = deltas[-1] if deltas else None
                if last is not None and last.index == index and last.function is not None:
                    last.function.arguments = (last.function.arguments or "") + fragment
                else:
                    deltas.append(DeltaToolCall(index, function=DeltaFunctionCall(arguments=fragment)))
        text = "".join(content)
        if not text and not deltas:
            return None
        return DeltaMessage(content=text or None, tool_calls=deltas)


# ---------------------------------------------------------------------------------------------
# Registry


class UnknownToolParserError(KeyError, ValueError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ToolParserManager:
    """Parsers by name, as vLLM's ToolParserManager."""

    tool_parsers: ClassVar[dict[str, type[ToolParser]]] = {}

    @classmethod
    def list_tool_parsers(cls) -> list[str]:
        return sorted(cls.tool_parsers)

    @classmethod
    def get_tool_parser(cls, name: str) -> type[ToolParser]:
        try:
            return cls.tool_parsers[name]
        except KeyError:
            raise UnknownToolParserError(
                f"unknown tool call parser {name!r}; choose one of: {', '.join(cls.list_tool_parsers())}"
                " (or load one with --tool-parser-plugin)"
            ) from None

    @classmethod
    def _register(cls, module: type, names: Union[str, list[str], None], force: bool) -> None:
        if not (isinstance(module, type) and issubclass(module, ToolParser)):
            raise TypeError(f"a tool parser must subclass ToolParser, not {module!r}")
        if names is None:
            names = [module.__name__]
        elif isinstance(names, str):
            names = [names]
        for name in names:
            if not force and name in cls.tool_parsers:
                raise KeyError(f"tool parser {name!r} is already registered ({cls.tool_parsers[name].__name__})")
            cls.tool_parsers[name] = module

    @classmethod
    def register_module(
        cls,
        name: Union[str, list[str], None] = None,
        force: bool = True,
        module: Optional[type] = None,
    ) -> Callable[[type], type]:
        """Register a class: `register_module("x", module=C)` or as a decorator `@register_module("x")`."""
        if module is not None:
            cls._register(module, name, force)
            return module  # type: ignore[return-value]

        def decorator(klass: type) -> type:
            cls._register(klass, name, force)
            return klass

        return decorator

    @classmethod
    def import_tool_parser(cls, plugin_path: str) -> list[str]:
        """Run a Python file that registers parsers (vLLM's --tool-parser-plugin).

        Returns the names it added. ToolParser subclasses that the file defines but does not
        register are registered under their class attribute `name` when they have one.
        Raises ImportError naming the file when it cannot be loaded.
        """
        path = os.path.abspath(os.path.expanduser(plugin_path))
        module_name = "pagoda_tool_parser_plugin_" + os.path.splitext(os.path.basename(path))[0]
        before = dict(cls.tool_parsers)
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"not a Python file: {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ImportError(f"cannot load tool parser plugin {plugin_path!r}: {exc}") from exc
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, ToolParser)
                and value.__module__ == module_name
                and value not in cls.tool_parsers.values()
                and isinstance(getattr(value, "name", None), str)
            ):
                cls.tool_parsers[value.name] = value  # type: ignore[attr-defined]
        return sorted(k for k, v in cls.tool_parsers.items() if before.get(k) is not v)


def get_tool_parser(name: str) -> type[ToolParser]:
    return ToolParserManager.get_tool_parser(name)


def list_tool_parsers() -> list[str]:
    return ToolParserManager.list_tool_parsers()


def import_tool_parser(plugin_path: str) -> list[str]:
    return ToolParserManager.import_tool_parser(plugin_path)
