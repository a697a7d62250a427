"""Reasoning between text markers: `<think>` ... `</think>`, "Here is my thought process:" ... and the like.

`MarkerReasoningParser` is configured by three class attributes:
- `start_markers`: markers that open the reasoning when the output begins with one (leading whitespace and
  the marker are dropped);
- `end_markers`: markers that close it (the first one found is dropped; everything after is content);
- `starts_in_reasoning`: where an output that does not begin with a start marker is (True: reasoning, as
  DeepSeek-R1 whose template put `<think>` in the prompt; False: content, as Qwen3 without thinking).

Invariants:
- Markers are matched in the text, not as token ids, so they are found wherever the tokenizer splits them
  and also where they are not single tokens. A start marker counts only at the beginning of the output; a
  later one is reasoning text.
- Streaming holds back at most a partial marker: at the beginning, text that may still become a start
  marker; in the reasoning, the longest end of the text that is a proper prefix of an end marker. The rest
  goes out at once; `final=True` releases what was held, classified as where it stands.
- One `_Splitter` does both the whole output and the stream, so they always agree.
- `is_reasoning_end` reads decoded ids as vLLM reads token ids: an end marker after the last start marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pagoda.entrypoints.openai.reasoning.abs_reasoning_parsers import ReasoningParser

_OPEN, _REASONING, _CONTENT = "open", "reasoning", "content"


class _Splitter:
    """Classifies text fed in order into reasoning and content."""

    __slots__ = ("starts", "ends", "in_reasoning_first", "mode", "held", "entered")

    def __init__(self, starts: tuple[str, ...], ends: tuple[str, ...], in_reasoning_first: bool) -> None:
        self.starts, self.ends, self.in_reasoning_first = starts, ends, in_reasoning_first
        self.mode = _OPEN if starts else (_REASONING if in_reasoning_first else _CONTENT)
        self.entered = self.mode == _REASONING  # whether the output has a reasoning part (even an empty one)
        self.held = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        reasoning, content = [], []
        buf = self.held + text
        while True:
            if self.mode == _OPEN:
                rest = buf.lstrip()
                marker = next((m for m in self.starts if rest.startswith(m)), None)
                if marker is not None:
                    buf, self.mode, self.entered = rest[len(marker):], _REASONING, True
                    continue
                if not final and (not rest or any(m.startswith(rest) for m in self.starts)):
                    break  # may still become a start marker
                self.mode = _REASONING if self.in_reasoning_first else _CONTENT
                self.entered = self.entered or self.mode == _REASONING
                continue
            if self.mode == _REASONING:
                found = [(i, m) for m in self.ends if (i := buf.find(m)) >= 0]
                if found:
                    at, marker = min(found, key=lambda f: (f[0], -len(f[1])))
                    reasoning.append(buf[:at])
                    buf, self.mode = buf[at + len(marker):], _CONTENT
                    continue
                keep = 0 if final else _partial_marker_len(buf, self.ends)
                reasoning.append(buf[:len(buf) - keep])
                buf = buf[len(buf) - keep:]
                break
            content.append(buf)
            buf = ""
            break
        self.held = buf
        return "".join(reasoning), "".join(content)


def _partial_marker_len(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper prefix of one of `markers`."""
    longest = max((len(m) for m in markers), default=1) - 1
    for size in range(min(longest, len(text)), 0, -1):
        tail = text[-size:]
        if any(m.startswith(tail) for m in markers):
            return size
    return 0


class MarkerReasoningParser(ReasoningParser):
    start_markers: ClassVar[tuple[str, ...]] = ()
    end_markers: ClassVar[tuple[str, ...]] = ()
    starts_in_reasoning: ClassVar[bool] = True

    def __init__(self, tokenizer: Any, prompt: str = "") -> None:
        super().__init__(tokenizer, prompt)
        if not self.end_markers:
            raise ValueError(f"{type(self).__name__} needs at least one end marker")
        self._stream = self._splitter()

    def reasoning_first(self) -> bool:
        """Whether an output without a start marker begins in the reasoning (may read self.prompt)."""
        return self.starts_in_reasoning

    def _splitter(self) -> _Splitter:
        return _Splitter(tuple(self.start_markers), tuple(self.end_markers), self.reasoning_first())

    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        splitter = self._splitter()
        reasoning, content = splitter.feed(model_output, final=True)
        return (reasoning if splitter.entered else None), (content or None)

    def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                    previous_token_ids: Sequence[int] = (), current_token_ids: Sequence[int] = (),
                                    delta_token_ids: Sequence[int] = (), *,
                                    final: bool = False) -> tuple[str | None, str | None]:
        reasoning, content = self._stream.feed(delta_text, final=final)
        return reasoning or None, content or None

    def is_reasoning_end(self, token_ids: Sequence[int]) -> bool:
        """True when an end marker comes after the last start marker (vLLM's backward scan, on the text)."""
        text = self.model_tokenizer.decode(list(token_ids), skip_special_tokens=False)
        last_end = max(text.rfind(m) for m in self.end_markers)
        last_start = max((text.rfind(m) for m in self.start_markers), default=-1)
        return last_end >= 0 and last_end > last_start
