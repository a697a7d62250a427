"""Per-request limits the server checks before it tokenizes or admits anything (issue 16).

- n / best_of: the sequences one request samples (`max(n, best_of)`, vLLM's num_sequences) are at most
  `max_n_sequences` (--max-n-sequences; default $VLLM_MAX_N_SEQUENCES, vLLM's variable for this cap,
  else 128, OpenAI's limit on n) and at most --max-pending-requests. Either is a 400 naming the
  field: a request that can never be admitted must not get a 503, which tells clients to retry forever.
- Capacity: the engine requests one call adds (num_sequences per prompt, summed over its prompts) must
  fit under --max-pending-requests right now, else 503 + Retry-After. This is where best_of children
  are counted (AsyncLLM.add_request counts n only), checked again just before registering.
- Prompt size: a text of more than `max_prompt_chars` characters is refused before it is tokenized.
  The default is max_model_len times the longest token of the vocabulary in characters (at least
  `MIN_CHARS_PER_TOKEN`): no text longer than that can tokenize into max_model_len tokens, so the
  refusal only ever answers early what tokenizing would have answered late.
- Response size: the logprob entries a response may carry (per returned choice and token position:
  the chosen token plus the top k; prompt positions too with echo or prompt_logprobs) are at most
  `max_response_logprobs` (--max-response-logprobs); by default twice one max_model_len sequence at
  the server's max_logprobs, so every single full-length request still fits.

Invariants: the checks are pure — they neither register, tokenize nor await — and each failure is an
APIError naming the field and the limit (and the flag that sets it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagoda.entrypoints.openai.errors import RETRY_AFTER_S, APIError

MAX_N_SEQUENCES_ENV = "VLLM_MAX_N_SEQUENCES"  # vLLM's variable for the same cap (its default: 16384)
DEFAULT_MAX_N_SEQUENCES = 128  # OpenAI's own limit on n
MIN_CHARS_PER_TOKEN = 16
RESPONSE_LOGPROBS_SEQUENCES = 2  # the default response cap, in full-length sequences at max_logprobs


def longest_token_chars(tokenizer: Any) -> int:
    """An upper bound on the characters one token stands for: its longest vocabulary string (byte-level
    and SentencePiece token strings are at least as long as the text they decode to)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary listing: use the floor
        return MIN_CHARS_PER_TOKEN
    return max(MIN_CHARS_PER_TOKEN, max((len(t) for t in vocab), default=0))


@dataclass(frozen=True)
class RequestLimits:
    max_n_sequences: int = DEFAULT_MAX_N_SEQUENCES
    max_prompt_chars: int | None = None  # None: no limit (no tokenizer, or turned off)
    max_response_logprobs: int | None = None  # None: no limit

    @classmethod
    def resolve(cls, *, max_n_sequences: int, max_prompt_chars: int | None, max_response_logprobs: int | None,
                max_model_len: int, max_logprobs: int, vocab_size: int, tokenizer: Any) -> "RequestLimits":
        """The limits with their defaults filled in (None: automatic; -1: no limit)."""
        if max_prompt_chars is None and tokenizer is not None:
            max_prompt_chars = max_model_len * longest_token_chars(tokenizer)
        if max_response_logprobs is None:
            per_token = 1 + (vocab_size if max_logprobs == -1 else max_logprobs)
            max_response_logprobs = RESPONSE_LOGPROBS_SEQUENCES * max_model_len * per_token
        return cls(max_n_sequences=max_n_sequences,
                   max_prompt_chars=None if max_prompt_chars in (None, -1) else max_prompt_chars,
                   max_response_logprobs=None if max_response_logprobs == -1 else max_response_logprobs)

    # ---- n / best_of --------------------------------------------------------------------------------
    def num_sequences(self, request: Any, max_pending: int | None, num_prompts: int = 1) -> int:
        """Sequences per prompt, max(n, best_of); 400 naming the field when over either cap."""
        n, best_of = request.n, getattr(request, "best_of", None)
        if not isinstance(n, int) or n < 1:
            raise APIError(f"n must be an integer >= 1, got {n!r}", 400, "n")
        field, count = ("best_of", best_of) if isinstance(best_of, int) and best_of > n else ("n", n)
        if count > self.max_n_sequences:
            raise APIError(f"{field}={count} is more than this server allows per request; allowed: 1 to "
                           f"{self.max_n_sequences} (--max-n-sequences)", 400, field)
        if max_pending is not None and count * num_prompts > max_pending:
            what = f"{field}={count}" + (f" for each of {num_prompts} prompts" if num_prompts > 1 else "")
            raise APIError(f"{what} needs {count * num_prompts} engine requests, more than the server ever runs "
                           f"at once ({max_pending}, --max-pending-requests); allowed: at most {max_pending} in all",
                           400, field)
        return count

    @staticmethod
    def check_capacity(engine: Any, needed: int) -> None:
        """503 + Retry-After when `needed` more engine requests do not fit under the pending limit now."""
        limit = getattr(engine, "max_pending_requests", None)
        if limit is None:
            return
        unfinished = engine.num_unfinished_requests
        if unfinished + needed > limit:
            raise APIError(f"the server has {unfinished} unfinished requests and this one needs {needed} more; its "
                           f"limit is {limit}; retry later", 503, headers={"Retry-After": RETRY_AFTER_S})

    # ---- sizes --------------------------------------------------------------------------------------
    def check_prompt_chars(self, text: str, field: str, max_model_len: int) -> None:
        """400 for a text too long to fit in max_model_len tokens, judged by its length alone."""
        limit = self.max_prompt_chars
        if limit is not None and len(text) > limit:
            raise APIError(f"{field} has {len(text)} characters; at most {limit} characters can fit in this model's "
                           f"maximum context length of {max_model_len} tokens (--max-prompt-chars), so it was not "
                           f"tokenized. Please reduce the length of the input.", 400, field)

    def check_response_logprobs(self, parts: list[tuple[int, int, int | None]], field: str) -> None:
        """`parts`: (choices, token positions, top-k or None) for each kind of position a response returns
        logprobs for; 400 naming `field` when their entries, choices * positions * (1 + k), are too many."""
        limit = self.max_response_logprobs
        if limit is None:
            return
        total = sum(choices * positions * (1 + k) for choices, positions, k in parts if k is not None)
        if total > limit:
            detail = " + ".join(f"{c} x {p} x (1 + {k})" for c, p, k in parts if k is not None)
            raise APIError(f"this request could return {total} logprob entries (choices x token positions x (1 + "
                           f"top logprobs): {detail}), more than the server's limit of {limit} "
                           "(--max-response-logprobs); lower n, max_tokens or the number of logprobs", 400, field)
