"""Stop-string matching on a sequence's growing output text (vLLM's semantics).

Invariants:
- Only text that could hold a stop string touching the newest characters is searched: the last
  `new_char_count + len(stop) - 1` characters for each stop string, so a whole generation costs
  time linear in its length, and a match that lies entirely in older text is never reported again.
- A match spanning token boundaries is found: the search window reaches back into older text.
- When several stop strings match in the new text, the one that starts first wins (ties: the one
  listed first). Truncating to it then leaves no complete stop string in the text.
"""

from __future__ import annotations


def check_stop_strings(
    output_text: str,
    new_char_count: int,
    stop: list[str],
    include_stop_str_in_output: bool,
) -> tuple[str, int] | None:
    """Look for a stop string that ends within the last `new_char_count` characters of `output_text`.

    Returns None, or `(stop_string, truncate_to)`: the text to keep is `output_text[:truncate_to]`,
    which ends just before the stop string, or just after it when `include_stop_str_in_output`.
    (vLLM returns -1 for "no truncation needed"; here that case is simply `len(output_text)`.)
    """
    if new_char_count <= 0 or not stop:
        return None
    best: tuple[int, str] | None = None
    for stop_str in stop:
        start_at = max(len(output_text) - new_char_count - len(stop_str) + 1, 0)
        index = output_text.find(stop_str, start_at)
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop_str)
    if best is None:
        return None
    index, stop_str = best
    return stop_str, index + len(stop_str) if include_stop_str_in_output else index
