"""The reasoning-parser interface, the registry of parsers by name, and --reasoning-parser-plugin.

vLLM's interface in spirit (vllm/reasoning/abs_reasoning_parsers.py), text in and text out:

- `ReasoningParser(tokenizer, prompt="")`: one instance per response choice. `prompt` is the rendered chat
  prompt, for parsers whose format depends on it (qwen3: a template that already opened `<think>`).
- `extract_reasoning(model_output) -> (reasoning, content)` for a whole output: reasoning is None when the
  output has no reasoning part ("" when it has an empty one); content is None when empty.
- `extract_reasoning_streaming(previous_text, current_text, delta_text, ..., final=False)
  -> (reasoning_delta, content_delta)`, each None when empty. Calls come in order for one output
  (`current_text == previous_text + delta_text`); the instance keeps the state. A parser may hold back text
  that could be the start of a marker split across deltas; `final=True` (the last delta) releases it.
- `is_reasoning_end(token_ids)`: whether these ids (a prompt, or a prompt and output) have left reasoning.

Invariants (each parser, checked by tests/entrypoints/reasoning):
- The streamed deltas of an output, however it is chunked, join to exactly what `extract_reasoning` gives
  for the whole output (reasoning "" and None both join to nothing).
- `ReasoningParserManager` maps vLLM's names to classes; `register_module` is vLLM's decorator (a later
  registration of a name replaces the earlier one, as vLLM's default force=True). Unknown names raise
  KeyError listing the registered ones.
- `import_reasoning_parser(path)` runs a Python file that registers parsers (vLLM's
  ReasoningParserManager.import_reasoning_parser); a missing file or a failing import is a ValueError naming
  the flag (vLLM logs it and goes on; Pagoda stops at start instead).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar


class ReasoningParser:
    """Base of every reasoning parser; subclasses implement the three methods."""

    def __init__(self, tokenizer: Any, prompt: str = "") -> None:
        self.model_tokenizer = tokenizer
        self.prompt = prompt or ""

    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        raise NotImplementedError

    def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                    previous_token_ids: Sequence[int] = (), current_token_ids: Sequence[int] = (),
                                    delta_token_ids: Sequence[int] = (), *,
                                    final: bool = False) -> tuple[str | None, str | None]:
        raise NotImplementedError

    def is_reasoning_end(self, token_ids: Sequence[int]) -> bool:
        raise NotImplementedError


class ReasoningParserManager:
    """Reasoning parsers by name (vLLM's class of the same name)."""

    reasoning_parsers: ClassVar[dict[str, type[ReasoningParser]]] = {}

    @classmethod
    def register_module(cls, name: str | list[str] | None = None, force: bool = True,
                        module: type[ReasoningParser] | None = None) -> Callable | type[ReasoningParser]:
        """Register `module` under `name` (or its class name); without `module`, a class decorator."""

        def register(parser: type[ReasoningParser]) -> type[ReasoningParser]:
            if not (isinstance(parser, type) and issubclass(parser, ReasoningParser)):
                raise TypeError(f"a reasoning parser must subclass ReasoningParser, got {parser!r}")
            names = [parser.__name__] if name is None else [name] if isinstance(name, str) else list(name)
            for key in names:
                if not force and key in cls.reasoning_parsers:
                    raise KeyError(f"reasoning parser {key!r} is already registered")
                cls.reasoning_parsers[key] = parser
            return parser

        return register if module is None else register(module)

    @classmethod
    def get_reasoning_parser(cls, name: str) -> type[ReasoningParser]:
        if name not in cls.reasoning_parsers:
            raise KeyError(f"reasoning parser {name!r} is not registered; registered: {', '.join(cls.names())}")
        return cls.reasoning_parsers[name]

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls.reasoning_parsers)


def import_reasoning_parser(plugin_path: str) -> None:
    """Run the Python file `plugin_path` (it registers parsers with ReasoningParserManager.register_module)."""
    path = os.path.abspath(os.path.expanduser(plugin_path))
    if not os.path.isfile(path):
        raise ValueError(f"--reasoning-parser-plugin {plugin_path!r} is not a file")
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = f"pagoda_reasoning_plugin_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--reasoning-parser-plugin {plugin_path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the plugin's own error, reported with the flag that named it
        sys.modules.pop(module_name, None)
        raise ValueError(f"--reasoning-parser-plugin {plugin_path!r} failed to import: "
                         f"{type(exc).__name__}: {exc}") from exc
