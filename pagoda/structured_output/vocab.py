"""What a Hugging Face tokenizer's ids stand for: which are special, and the bytes of every other one.

xgrammar and llguidance read the tokenizer themselves; outlines_core needs the bytes table from here.

Invariants:
- `special_token_ids` holds every id a grammar must never produce as text: the tokenizer's special
  tokens and added tokens flagged special (EOS is among them; it is handled apart).
- `token_bytes` maps each non-special id to the exact bytes it adds to the output: byte-level BPE
  tokens through GPT-2's byte-to-unicode table, SentencePiece pieces with '▁' as a space and
  '<0xHH>' as one byte, added tokens as their UTF-8 content, and anything else as its decoded text.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPIECE_SPACE = "\u2581"


def special_token_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return ids


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to 256+n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _decoder_kinds(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return {part.get("type", "") for part in parts if isinstance(part, dict)}


def token_bytes(tokenizer: Any) -> dict[int, bytes]:
    """Bytes of every non-special token id (see the module docstring)."""
    kinds = _decoder_kinds(tokenizer)
    special = special_token_ids(tokenizer)
    added = {int(i): t.content for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    to_byte = _unicode_to_byte()
    table: dict[int, bytes] = {}
    for piece, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        if token_id in added:
            table[token_id] = added[token_id].encode("utf-8")
        elif "ByteLevel" in kinds and all(c in to_byte for c in piece):
            table[token_id] = bytes(to_byte[c] for c in piece)
        elif kinds & {"ByteFallback", "Metaspace", "Replace"} and (m := _BYTE_PIECE.match(piece)):
            table[token_id] = bytes([int(m.group(1), 16)])
        elif kinds & {"ByteFallback", "Metaspace", "Replace"}:
            table[token_id] = piece.replace(_SPIECE_SPACE, " ").encode("utf-8")
        else:
            table[token_id] = tokenizer.convert_tokens_to_string([piece]).encode("utf-8")
    return {i: b for i, b in table.items() if b}
