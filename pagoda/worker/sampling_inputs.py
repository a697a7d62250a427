"""The runner's sampling inputs: SamplingMetadata for a step's sampling rows, from the InputBatch.

This is the one place per-request SamplingParams become sampler tensors: `SamplingInputs.build` per
step, and `build_sampling_metadata` (tests, one-shot use such as memory profiling), which adds its
params to a fresh InputBatch exactly as the model runner adds requests and calls the same `build`.

Invariants:
- A row's settings use SamplingMetadata's encodings (sample/metadata.py) from the request's arrival:
  InputBatch.add writes them, and `add` here rewrites the one InputBatch cannot know without the
  vocabulary, a top_k >= vocab_size, as 0 ("no top-k", as vLLM), so such a row keeps its batch on
  the fused sampling path. Per step, rows are only gathered, never re-encoded.
- Nothing here is rebuilt per step that could live across steps: a request's static bias vector
  (allowed_token_ids, logit_bias) is made once when the request arrives and kept on the device
  until it leaves; per step, only the rows that use it are stacked.
- Penalty token tensors are cut from the InputBatch's persistent token array for the rows that have a
  penalty only; a row's newest token, still a placeholder while the step that samples it is in flight,
  is taken from that step's ids on the device (so penalties never make a step wait for the host copy);
  bad words and user logits processors read output ids for their rows only. A batch
  without any of these builds exactly what the plain sampler needs (the free fast path).
- A row whose rules cannot be built (min_tokens, bad words, logits processors) gets no rules and its
  reason in `SamplingMetadata.row_errors`; the runner fails that request, the others are unaffected.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pagoda.core.sched_output import NewRequestData
from pagoda.sample.logits_processors import RowProcessors, bad_words_bans, static_bias_vector
from pagoda.sample.metadata import SamplingMetadata
from pagoda.sample.penalties import PenaltyInputs
from pagoda.sampling_params import SamplingParams, SamplingType
from pagoda.worker.input_batch import InputBatch, to_device
from pagoda.worker.step_output import PLACEHOLDER


class SamplingInputs:
    def __init__(self, batch: InputBatch, vocab_size: int, device: torch.device) -> None:
        self.batch = batch
        self.vocab_size = vocab_size
        self.device = device
        self.bias: dict[str, torch.Tensor] = {}  # req_id -> [V] float32 on device

    def add(self, req_id: str, params: SamplingParams | None) -> None:
        """Per-request state made once on arrival, after InputBatch.add filled the request's row."""
        if params is None:
            return
        if params.top_k >= self.vocab_size:  # keeps every token: "no top-k" (see the module docstring)
            self.batch.top_k[self.batch.row_of[req_id]] = 0
        if req_id in self.bias:
            return
        bias = static_bias_vector(params, self.vocab_size, self.device)
        if bias is not None:
            self.bias[req_id] = bias

    def remove(self, req_id: str) -> None:
        self.bias.pop(req_id, None)

    def build(self, rows: np.ndarray, req_ids: list[str], generators: dict[str, torch.Generator],
              newest: tuple[torch.Tensor | None, np.ndarray] | None = None) -> SamplingMetadata:
        """Metadata for sampling rows `rows` of the InputBatch (request `req_ids[j]` in row rows[j]).
        `newest` = (the step in flight's sampled ids on the device, row -> index in them): where a penalty
        row's newest token is still a placeholder, it is read from there (see `_penalties`)."""
        batch, device = self.batch, self.device
        temperature = batch.temperature[rows]
        top_p, top_k, min_p = batch.top_p[rows], batch.top_k[rows], batch.min_p[rows]
        masks: dict[int, list[int]] = {}
        bad_words: dict[int, list[int]] = {}
        processors: dict[int, RowProcessors] = {}
        errors: dict[int, str] = {}
        for j in np.flatnonzero(batch.has_row_rules[rows]).tolist():
            row = int(rows[j])
            p = batch.params[row]
            try:
                if p.min_tokens and batch.num_output_tokens(row) < p.min_tokens and p.all_stop_token_ids:
                    masks[j] = sorted(p.all_stop_token_ids)
                if p.bad_words_token_ids:
                    banned = bad_words_bans(p.bad_words_token_ids, batch.output_ids(row))
                    if banned:
                        bad_words[j] = banned
                if p.logits_processors:
                    processors[j] = RowProcessors.of(p, batch.prompt_ids(row), batch.output_ids(row))
            except Exception as exc:  # noqa: BLE001 - one request's rules fail that request only
                masks.pop(j, None)
                bad_words.pop(j, None)
                errors[j] = f"building its sampling rules raised {type(exc).__name__}: {exc}"
        biased = [j for j, r in enumerate(req_ids) if r in self.bias] if self.bias else []
        requested = int(batch.num_logprobs[rows].max(initial=-1))
        random = temperature > 0
        with_top_k = (top_k > 0) & random
        mixed = with_top_k.any() and not with_top_k[random].all()
        return SamplingMetadata(
            temperature=to_device(temperature, device),
            top_p=to_device(top_p, device),
            top_k=to_device(top_k, device),
            min_p=to_device(min_p, device),
            all_greedy=bool((temperature == 0).all()),
            all_random=bool(random.all()),
            # Over the random rows only: a greedy row's top-k/top-p/min-p never change its argmax.
            no_top_p=bool((top_p[random] >= 1.0).all()),
            no_top_k=bool((top_k[random] == 0).all()),
            no_min_p=bool((min_p[random] <= 0).all()),
            max_top_k=int(top_k[random].max(initial=0)),
            random_rows_top_k=bool(with_top_k[random].all()),
            top_k_rows=to_device(np.flatnonzero(with_top_k), device) if mixed else None,
            generators={j: generators[r] for j, r in enumerate(req_ids) if r in generators} if generators else {},
            max_num_logprobs=requested if requested >= 0 else None,
            min_tokens_masks=masks,
            bad_words_masks=bad_words,
            logits_processors=processors,
            bias_rows=to_device(np.array(biased, dtype=np.int64), device) if biased else None,
            bias=torch.stack([self.bias[req_ids[j]] for j in biased]) if biased else None,
            penalties=self._penalties(rows, newest),
            row_errors=errors,
        )

    def _penalties(self, rows: np.ndarray, newest) -> PenaltyInputs | None:
        batch = self.batch
        selected = np.nonzero(batch.has_penalty[rows])[0]
        if selected.size == 0:
            return None
        penalty_rows = rows[selected]
        num_tokens = batch.num_tokens[penalty_rows]
        width = max(int(num_tokens.max()), 1)
        tokens = batch.token_ids[penalty_rows, :width]
        inputs = PenaltyInputs.from_arrays(
            selected, tokens, batch.num_prompt_tokens[penalty_rows], num_tokens,
            batch.presence_penalty[penalty_rows], batch.frequency_penalty[penalty_rows],
            batch.repetition_penalty[penalty_rows], self.device,
        )
        hole_rows, hole_cols = np.nonzero((tokens == PLACEHOLDER) & (np.arange(width) < num_tokens[:, None]))
        if hole_rows.size:  # newest tokens sampled by the step in flight: read them on the device, no wait
            last, src = newest if newest is not None else (None, None)
            if last is None or not (hole_cols == num_tokens[hole_rows] - 1).all():
                raise RuntimeError("a penalty row's token history has a placeholder the step in flight did not sample")
            inputs.token_ids[to_device(hole_rows, self.device), to_device(hole_cols, self.device)] = \
                last[to_device(src[penalty_rows[hole_rows]], self.device)]
        return inputs


def build_sampling_metadata(
    params: Sequence[SamplingParams],
    vocab_size: int,
    device: torch.device | str = "cpu",
    generators: dict[int, torch.Generator] | None = None,
    prompt_token_ids: Sequence[Sequence[int]] | None = None,
    output_token_ids: Sequence[Sequence[int]] | None = None,
) -> SamplingMetadata:
    """Metadata for rows sampled with `params` (one SamplingParams per row), through the runner's path.

    `generators`: per-row generators for seeded rows, carried over from earlier steps; rows with a
    seed and no entry get a fresh generator seeded with `SamplingParams.seed` (right for a first step
    only: pass `metadata.generators` back on later steps). `prompt_token_ids` / `output_token_ids`
    (one list per row, default empty) feed penalties, bad words, logits processors and min_tokens
    (a row has generated len(output_token_ids[r]) tokens so far).
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    rows = len(params)
    prompts = [list(p) for p in prompt_token_ids] if prompt_token_ids is not None else [[] for _ in params]
    outputs = [list(o) for o in output_token_ids] if output_token_ids is not None else [[] for _ in params]
    if len(prompts) != rows or len(outputs) != rows:
        raise ValueError(f"prompt_token_ids and output_token_ids must have one entry per row ({rows})")
    device = torch.device(device)
    max_len = max([len(p) + len(o) for p, o in zip(prompts, outputs)] + [1])
    batch = InputBatch(max(rows, 1), max_len, block_size=max_len)
    inputs = SamplingInputs(batch, vocab_size, device)
    req_ids = [str(row) for row in range(rows)]
    gens = {req_ids[row]: g for row, g in (generators or {}).items()}
    for req_id, p, prompt, output in zip(req_ids, params, prompts, outputs):
        batch.add(NewRequestData(req_id=req_id, token_ids=prompt + output, num_prompt_tokens=len(prompt),
                                 sampling_params=p, block_ids=[], num_computed_tokens=0))
        inputs.add(req_id, p)
        if p.sampling_type == SamplingType.RANDOM_SEED and req_id not in gens:
            gens[req_id] = torch.Generator(device=device).manual_seed(p.seed)
    return inputs.build(np.arange(rows, dtype=np.int64), req_ids, gens)
