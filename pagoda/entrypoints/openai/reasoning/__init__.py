"""Reasoning parsers: split a chat response into its reasoning and its content (vLLM's --reasoning-parser).

`ReasoningParserManager` holds the parsers by vLLM's names (`deepseek_r1`, `qwen3`, `granite`) and those a
`--reasoning-parser-plugin FILE` registers. The server makes one parser per response choice (it keeps the
streaming state of that choice); see abs_reasoning_parsers.py for the interface and its invariants.
"""

from pagoda.entrypoints.openai.reasoning.abs_reasoning_parsers import (
    ReasoningParser,
    ReasoningParserManager,
    import_reasoning_parser,
)
from pagoda.entrypoints.openai.reasoning.marker_parser import MarkerReasoningParser
from pagoda.entrypoints.openai.reasoning import parsers as _parsers  # noqa: F401  (registers the built-in names)

__all__ = ["MarkerReasoningParser", "ReasoningParser", "ReasoningParserManager", "import_reasoning_parser"]
