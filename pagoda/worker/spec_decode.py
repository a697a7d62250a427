"""The runner's speculative-decoding step: verify each request's drafts, append what was accepted,
propose the next drafts.

A verify step schedules request r's missing token plus its k_r drafts; the forward pass gives logits
at its last k_r + 1 positions. Requests without drafts in the step (k_r = 0) go through the ordinary
Sampler with all their rules; requests with drafts go through the rejection sampler
(sample/rejection_sampler.py): greedy ones keep the longest prefix the target's argmax agrees with
plus the target's next token (token-identical to decoding without speculation), random ones use
rejection sampling (the output distribution is exactly the target's). Then the step syncs, and the
proposer drafts each request's next tokens: the n-gram proposer (spec_decode/ngram_proposer.py) from
its tokens on the host, or the draft model (worker/draft_proposer.py), which also runs a forward over
every step's batch (`catch_up`) so that its cache mirrors the target's.

Invariants:
- Only rows with `InputBatch.can_speculate` get drafts: requests whose sampling needs nothing that
  depends on the position inside a run of drafts (no penalties, bad words, min_tokens, logits
  processors, allowed_token_ids or logit_bias). Other requests decode one token per step, exactly
  as without speculation ("served without speculation, never served wrong").
- After the step, every sampled request's tokens are on the host in the InputBatch (no placeholder),
  its `num_computed` excludes its rejected positions, and the output carries its tokens (1 + accepted
  drafts), their logprobs (the target's raw logprobs, as without speculation) and its next drafts.
- Drafts are written into the InputBatch past a row's known tokens, so the step's input ids read
  them like any token; they never count in `num_tokens` and are overwritten by what is accepted.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.core.sched_output import ModelRunnerOutput
from pagoda.sample.logprobs import gather_logprobs
from pagoda.sample.rejection_sampler import rejection_sample
from pagoda.spec_decode.ngram_proposer import NgramProposer
from pagoda.worker.input_batch import to_device


class SpecDecodeStep:
    def __init__(self, speculative_config, runner) -> None:
        self.num_speculative_tokens = speculative_config.num_speculative_tokens
        self.proposer = None  # proposes from one request's tokens: the n-gram one (or a benchmark's oracle)
        if speculative_config.method == "ngram":
            self.proposer = NgramProposer(speculative_config.num_speculative_tokens,
                                          speculative_config.prompt_lookup_min, speculative_config.prompt_lookup_max)
        self.draft = None  # a DraftModelProposer (method "draft_model"), attached by the worker
        self.runner = runner

    def attach_draft_model(self, model, kv_caches) -> None:
        from pagoda.worker.draft_proposer import DraftModelProposer

        draft_config = self.runner.config.speculative.draft_model_config
        self.draft = DraftModelProposer(model, kv_caches, self.runner, self.num_speculative_tokens,
                                        draft_config.max_model_len)

    def catch_up(self, input_ids, positions, metadata) -> None:
        """After every target forward: the draft model's forward over the same batch (no-op for n-gram)."""
        if self.draft is not None:
            self.draft.catch_up(input_ids, positions, metadata)

    def write_drafts(self, req_ids: list[str], rows: np.ndarray, drafts: dict[str, list[int]]) -> np.ndarray:
        """Put each request's drafts after its known tokens; returns the draft count per request."""
        batch = self.runner.batch
        num_drafts = np.zeros(len(req_ids), dtype=np.int64)
        for i, req_id in enumerate(req_ids):
            tokens = drafts.get(req_id)
            if tokens:
                row, start = int(rows[i]), int(batch.num_tokens[rows[i]])
                batch.token_ids[row, start:start + len(tokens)] = tokens
                num_drafts[i] = len(tokens)
        return num_drafts

    def sample(self, req_ids: list[str], rows: np.ndarray, sample_at: np.ndarray, query_end: np.ndarray,
               num_drafts: np.ndarray, drafts: dict[str, list[int]], hidden: torch.Tensor,
               output: ModelRunnerOutput, propose: bool = True, grammar=None) -> None:
        """Sample the requests `sample_at` of the step (indices into req_ids), fill `output`, and (with
        `propose`: the scheduler will use drafts) propose the next drafts. `grammar`: the structured-output
        masks of the step (ModelRunner.apply_grammar), applied at every sampled position."""
        runner = self.runner
        batch, device = runner.batch, runner.device
        k = num_drafts[sample_at]
        counts = k + 1
        first = query_end[sample_at] - counts  # each request's first sampled position in `hidden`
        offsets = np.cumsum(counts) - counts
        index = np.repeat(first, counts) + (np.arange(int(counts.sum())) - np.repeat(offsets, counts))
        logits = runner.model.compute_logits(hidden[to_device(index, device)])
        sample_rows = rows[sample_at]
        sample_ids = [req_ids[i] for i in sample_at]
        runner.apply_grammar(logits, sample_ids, offsets, grammar)
        tokens: list[list[int]] = [[] for _ in sample_ids]
        logprobs: list[list | None] = [None] * len(sample_ids)

        # Launch every sampling op first, then bring the results to the host (one sync for the step).
        plain = np.flatnonzero(k == 0)
        plain_result = plain_metadata = None
        if plain.size:
            plain_metadata = runner.sampling_inputs.build(sample_rows[plain], [sample_ids[j] for j in plain],
                                                          runner.generators)
            plain_result = runner.sampler.forward(logits[to_device(offsets[plain], device)], plain_metadata)
        verify = np.flatnonzero(k > 0)
        verified = self._launch_verify(verify, k, offsets, counts, logits, sample_rows, sample_ids, drafts) \
            if verify.size else None

        if plain_result is not None:
            result = plain_result
            ids = result.sampled_token_ids.tolist()
            wanted = batch.num_logprobs[sample_rows[plain]]
            host = None if result.logprobs is None else (result.logprob_token_ids.tolist(),
                                                         result.logprobs.tolist(), result.sampled_ranks.tolist())
            for n, j in enumerate(plain.tolist()):
                tokens[j] = [ids[n]]
                if host is not None and wanted[n] >= 0:
                    width = int(wanted[n]) + 1
                    logprobs[j] = [(host[0][n][:width], host[1][n][:width], host[2][n])]
            for n, reason in plain_metadata.row_errors.items():
                runner.fail(sample_ids[plain[n]], f"sampling request {sample_ids[plain[n]]} failed: {reason}", output)
        if verified is not None:
            self._finish_verify(verify, counts, sample_rows, verified, tokens, logprobs)

        proposing = []
        for j, req_id in enumerate(sample_ids):
            if req_id in output.failed:
                continue
            row, new = int(sample_rows[j]), tokens[j]
            start = int(batch.num_tokens[row])
            batch.token_ids[row, start:start + len(new)] = new
            batch.num_tokens[row] = start + len(new)
            batch.num_computed[row] -= int(k[j]) + 1 - len(new)  # the rejected draft positions
            output.sampled_token_ids[req_id] = new
            if logprobs[j] is not None:
                output.logprobs[req_id] = logprobs[j]
            if propose and batch.can_speculate[row]:
                proposing.append((req_id, row))
        if proposing:
            self._propose(proposing, output)

    def _propose(self, proposing: list[tuple[str, int]], output: ModelRunnerOutput) -> None:
        batch = self.runner.batch
        if self.proposer is not None:
            drafts = [self.proposer.propose(batch.token_ids[row, : batch.num_tokens[row]]) for _, row in proposing]
        else:
            drafts = self.draft.propose(np.array([row for _, row in proposing], dtype=np.int64))
        for (req_id, _), proposed in zip(proposing, drafts):
            if proposed:
                output.draft_token_ids[req_id] = proposed

    def _launch_verify(self, verify, k, offsets, counts, logits, sample_rows, sample_ids, drafts):
        """Launch the rejection sampler (and the logprobs it needs) for the rows `verify`; no host sync."""
        runner = self.runner
        batch, device = runner.batch, runner.device
        positions = np.concatenate([offsets[j] + np.arange(counts[j]) for j in verify])
        verify_logits = logits[to_device(positions, device)]
        verify_ids = [sample_ids[j] for j in verify]
        metadata = runner.sampling_inputs.build(sample_rows[verify], verify_ids, runner.generators)
        draft_ids = to_device(np.array([t for r in verify_ids for t in drafts[r]], dtype=np.int64), device)
        verify_k = [int(k[j]) for j in verify]
        out = rejection_sample(verify_logits, verify_k, draft_ids, metadata)  # [Rv, max_k + 1], -1 padded
        wanted = batch.num_logprobs[sample_rows[verify]]
        logprob_tensors = None
        if (wanted >= 0).any():
            # The token output at each verified position (0 past the first rejection: never reported).
            index = to_device(np.stack([np.repeat(np.arange(len(verify)), counts[verify]),
                                        np.concatenate([np.arange(counts[j]) for j in verify])]), device)
            chosen = out[index[0], index[1]].clamp_min(0)
            raw = torch.log_softmax(verify_logits.to(torch.float32), dim=-1)
            logprob_tensors = gather_logprobs(raw, int(wanted.max()), chosen)
        return out, wanted, logprob_tensors

    def _finish_verify(self, verify, counts, sample_rows, verified, tokens, logprobs) -> None:
        """The verified rows' tokens (1 + accepted drafts each) and logprobs, on the host."""
        out, wanted, logprob_tensors = verified
        out_host = out.tolist()
        host_lp = None if logprob_tensors is None else tuple(t.tolist() for t in logprob_tensors)
        cursor = 0
        for n, j in enumerate(verify.tolist()):
            new = [t for t in out_host[n] if t >= 0]
            tokens[j] = new
            if host_lp is not None and wanted[n] >= 0:
                width = int(wanted[n]) + 1
                logprobs[j] = [(host_lp[0][p][:width], host_lp[1][p][:width], host_lp[2][p])
                               for p in range(cursor, cursor + len(new))]
            cursor += int(counts[j])
