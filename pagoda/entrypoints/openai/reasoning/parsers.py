"""The built-in reasoning parsers, registered under vLLM's names.

- `deepseek_r1` (DeepSeek-R1 and its distills, QwQ): `<think>` reasoning `</think>` content. The start tag
  may be missing (R1's newer chat template puts `<think>\\n` in the prompt): everything before `</think>` is
  then reasoning, and an output with no `</think>` is all reasoning (vLLM's DeepSeekR1ReasoningParser).
- `qwen3` (Qwen3): the same tags, but an output that does not begin with `<think>` has no reasoning (all
  content: vLLM's Qwen3ReasoningParser, which "needs both start and end tokens", and Qwen3 with
  enable_thinking=False). Unlike vLLM before its Qwen3.5 rewrite, a prompt that ends with an open `<think>`
  (templates of Qwen3-Thinking-2507 and later) starts the output in the reasoning, as vLLM's current parser
  does.
- `granite` (IBM Granite 3.2 with chat_template_kwargs thinking=True): "Here is my thought process:"
  reasoning "Here is my response:" content, "Here's" accepted for "Here is" in both (vLLM's
  GraniteReasoningParser). An output that does not begin with a thought-process marker is all content.

Where vLLM's whole-output and streaming paths disagree, Pagoda does what vLLM's stream does, in both:
qwen3 `<think>` with no `</think>` is reasoning (vLLM's whole output: all content); granite with a thought
process but no response marker is reasoning (vLLM's whole output: all content).
"""

from __future__ import annotations

from pagoda.entrypoints.openai.reasoning.abs_reasoning_parsers import ReasoningParserManager
from pagoda.entrypoints.openai.reasoning.marker_parser import MarkerReasoningParser

THINK_START, THINK_END = "<think>", "</think>"


@ReasoningParserManager.register_module("deepseek_r1")
class DeepSeekR1ReasoningParser(MarkerReasoningParser):
    start_markers = (THINK_START,)
    end_markers = (THINK_END,)
    starts_in_reasoning = True


@ReasoningParserManager.register_module("qwen3")
class Qwen3ReasoningParser(MarkerReasoningParser):
    start_markers = (THINK_START,)
    end_markers = (THINK_END,)
    starts_in_reasoning = False

    def reasoning_first(self) -> bool:
        return self.prompt.rstrip().endswith(THINK_START)


@ReasoningParserManager.register_module("granite")
class GraniteReasoningParser(MarkerReasoningParser):
    start_markers = ("Here is my thought process:", "Here's my thought process:")
    end_markers = ("Here is my response:", "Here's my response:")
    starts_in_reasoning = False
