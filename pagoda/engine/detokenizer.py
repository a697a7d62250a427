"""Incremental detokenization: token ids in, text deltas out, one request at a time.

Invariants:
- `output_text` is always the concatenation of every delta `add_tokens` has returned.
- A delta never ends inside a character: bytes of a UTF-8 sequence that byte-level BPE (or byte
  fallback) split over several tokens are held back until the character completes, so U+FFFD is
  never emitted for an incomplete sequence.
- For ordinary text, `output_text` equals `tokenizer.decode(token_ids, skip_special_tokens=...)` once
  the tokens are all in. Decoding starts from a few prompt tokens of context, so that tokenizers whose
  decode of a suffix differs from the joined decode (leading-space rules) produce the continuation's
  text as it reads after the prompt.
- `token_ids` holds the output ids only (never the prompt's), in the order they were added.

Two backends give the same results on fast tokenizers: the Rust `tokenizers.decoders.DecodeStream`
(used for fast tokenizers) and vLLM's prefix_offset/read_offset window over
`convert_ids_to_tokens` + `convert_tokens_to_string` (used for slow ones, or on request).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"
_INVALID_PREFIX_ERR = "Invalid prefix encountered"
# How many prompt tokens to keep as context: enough for any decoder's leading-space rule.
_PROMPT_CONTEXT = 5


def decode_token(tokenizer: Any, token_id: int) -> str:
    """The text of one token on its own, for `Logprob.decoded_token` (as vLLM writes it).

    A token holding part of a UTF-8 character decodes to U+FFFD; an id outside the vocabulary gives "".
    """
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if token is None:
        return ""
    return tokenizer.convert_tokens_to_string([token])


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids that `decode(..., skip_special_tokens=True)` drops: declared special tokens and special added ones."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return ids


def _added_tokens(tokenizer: Any) -> dict[int, str]:
    return {int(i): str(t) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}


class _StreamBackend:
    """Rust DecodeStream, primed with a prompt suffix that decodes cleanly (vLLM V1's fast path)."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool,
                 spaces_between_special_tokens: bool) -> None:
        from tokenizers.decoders import DecodeStream

        self._make_stream = lambda: DecodeStream(skip_special_tokens=skip_special_tokens)
        self._rust = tokenizer.backend_tokenizer
        self._vocab_size = len(tokenizer)
        self._stream = self._make_stream()
        for token_id in _clean_prompt_suffix(self._rust.decode, prompt_token_ids):
            self._step(token_id)
        # Only without skipping can two special tokens meet; the Rust decoders may put a space between.
        self._added = (_added_tokens(tokenizer)
                       if not (skip_special_tokens or spaces_between_special_tokens) else {})
        self._last_added = False

    def _step(self, token_id: int) -> str | None:
        if not 0 <= token_id < self._vocab_size:
            return None  # padded-vocabulary ids have no text
        try:
            return self._stream.step(self._rust, token_id)
        except Exception as exc:
            if str(exc) != _INVALID_PREFIX_ERR:
                raise
            # Decoders that produce non-monotonic text break the stream's prefix; start over.
            logger.warning("detokenizer: invalid prefix from the decode stream; resetting it")
            self._stream = self._make_stream()
            return self._stream.step(self._rust, token_id)

    def step(self, token_id: int) -> str:
        text = self._step(token_id)
        if self._added:
            added = self._added.get(token_id)
            if added is not None and self._last_added:
                text = added
            self._last_added = added is not None
        return text or ""


def _clean_prompt_suffix(decode, prompt_token_ids: list[int]) -> list[int]:
    """The shortest prompt tail of >= 4 tokens (up to 23) that starts on a character boundary.

    Its decode may end in U+FFFD only when the prompt itself ends inside a character: priming the
    stream with it then leaves those bytes pending, and the character they start becomes output text.
    """
    if len(prompt_token_ids) <= 4:
        return list(prompt_token_ids)
    for n in range(4, min(len(prompt_token_ids), 23) + 1):
        suffix = list(prompt_token_ids[-n:])
        text = decode(suffix).rstrip(_REPLACEMENT)
        if text and _REPLACEMENT not in text:
            return suffix
    return list(prompt_token_ids[-4:])


class _OffsetBackend:
    """vLLM's window: decode tokens[prefix_offset:] and emit what goes past tokens[prefix_offset:read_offset]."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool,
                 spaces_between_special_tokens: bool) -> None:
        self._tok = tokenizer
        self._vocab_size = len(tokenizer)
        self._skip = _special_ids(tokenizer) if skip_special_tokens else set()
        self._spaces = spaces_between_special_tokens
        added = set() if getattr(tokenizer, "is_fast", False) else set(_added_tokens(tokenizer).values())
        self._added_strings = added
        self._tokens: list[str] = [self._to_token(i) for i in prompt_token_ids[-(_PROMPT_CONTEXT + 2):]]
        self._tokens = [t for t in self._tokens if t is not None]
        self._read_offset = len(self._tokens)
        self._prefix_offset = max(self._read_offset - _PROMPT_CONTEXT, 0)
        # A prompt ending inside a character: its bytes are pending, the character becomes output.
        while (self._read_offset > self._prefix_offset
               and self._to_string(self._tokens[self._prefix_offset:self._read_offset]).endswith(_REPLACEMENT)):
            self._read_offset -= 1

    def _to_token(self, token_id: int) -> str | None:
        if token_id in self._skip:
            return None
        if not 0 <= token_id < self._vocab_size:
            return ""
        token = self._tok.convert_ids_to_tokens(int(token_id))
        return "" if token is None else token

    def _to_string(self, tokens: list[str]) -> str:
        if not self._added_strings:
            return self._tok.convert_tokens_to_string(tokens)
        # Slow tokenizers: added tokens are not in the sentencepiece/BPE model; join them around it.
        parts, run = [], []
        for token in tokens:
            if token in self._added_strings:
                if run:
                    parts.append(self._tok.convert_tokens_to_string(run))
                    run = []
                parts.append(token)
            else:
                run.append(token)
        if run:
            parts.append(self._tok.convert_tokens_to_string(run))
        return (" " if self._spaces else "").join(parts)

    def step(self, token_id: int) -> str:
        token = self._to_token(token_id)
        if token is None:
            return ""
        self._tokens.append(token)
        prefix_text = self._to_string(self._tokens[self._prefix_offset:self._read_offset])
        new_text = self._to_string(self._tokens[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""  # an unfinished character (or nothing new) so far
        self._prefix_offset, self._read_offset = self._read_offset, len(self._tokens)
        return new_text[len(prefix_text):]


class IncrementalDetokenizer:
    """Turns one sequence's output tokens into text, a delta per call."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        use_decode_stream: bool | None = None,
    ) -> None:
        """`use_decode_stream`: None picks DecodeStream for fast tokenizers; False forces the offset window."""
        fast = getattr(tokenizer, "is_fast", False) and hasattr(tokenizer, "backend_tokenizer")
        if use_decode_stream is None:
            use_decode_stream = fast
        elif use_decode_stream and not fast:
            raise ValueError("use_decode_stream=True needs a fast tokenizer (one with a backend_tokenizer)")
        backend = _StreamBackend if use_decode_stream else _OffsetBackend
        self._backend = backend(tokenizer, list(prompt_token_ids), skip_special_tokens,
                                spaces_between_special_tokens)
        self.token_ids: list[int] = []
        self.output_text = ""

    def add_tokens(self, new_token_ids: list[int]) -> str:
        """Append output tokens; return the text they complete (possibly "")."""
        delta = []
        for token_id in new_token_ids:
            token_id = int(token_id)
            self.token_ids.append(token_id)
            delta.append(self._backend.step(token_id))
        text = "".join(delta)
        self.output_text += text
        return text
