"""The runner's speculative-decoding step: verify each request's drafts, append what was accepted,
propose the next drafts.

A verify step schedules request r's missing token plus its k_r drafts; the forward pass gives logits
at its last k_r + 1 positions. Requests without drafts in the step (k_r = 0) go through the ordinary
Sampler with all their rules; requests with drafts go through the rejection sampler
(sample/rejection_sampler.py): greedy ones keep the longest prefix the target's argmax agrees with
plus the target's next token (token-identical to decoding without speculation), random ones use
rejection sampling (the output distribution is exactly the target's). Then the proposer drafts each
request's next tokens. Under async scheduling that happens on the device, without a sync: the draft model
(worker/draft_proposer.py, which also runs a forward over every step's batch, `catch_up`, so that its
cache mirrors the target's), method ngram_gpu (spec_decode/ngram_gpu.py) or the benchmark's oracle write
`draft_ids`, and the step's tokens reach the host later (VerifiedTokens). Without it the step syncs, and
the n-gram proposer (spec_decode/ngram_proposer.py) drafts from the host tokens, or the device proposer's
drafts are copied to the host.

Invariants:
- Only rows with `InputBatch.can_speculate` get drafts: requests whose sampling needs nothing that
  depends on the position inside a run of drafts (no penalties, bad words, min_tokens, logits
  processors, allowed_token_ids or logit_bias). Other requests decode one token per step, exactly
  as without speculation ("served without speculation, never served wrong").
- Without async scheduling, after the step every sampled request's tokens are on the host in the
  InputBatch (no placeholder), its `num_computed` excludes its rejected positions, and the output carries
  its tokens (1 + accepted drafts), their logprobs (the target's raw logprobs, as without speculation)
  and its next drafts. With it, the same holds once the step's VerifiedTokens is filled; until then the
  output's drafts are placeholders (k per proposing request, the ids in `draft_ids`).
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
from pagoda.worker.step_output import PLACEHOLDER, StepOutput, VerifiedTokens


class SpecDecodeStep:
    def __init__(self, speculative_config, runner) -> None:
        self.num_speculative_tokens = speculative_config.num_speculative_tokens
        self.proposer = None  # proposes from one request's tokens: the n-gram one (or a benchmark's oracle)
        if speculative_config.method in ("ngram", "ngram_gpu"):
            self.proposer = NgramProposer(speculative_config.num_speculative_tokens,
                                          speculative_config.prompt_lookup_min, speculative_config.prompt_lookup_max)
        self.draft = None  # a DraftModelProposer (method "draft_model"), attached by the worker
        self.runner = runner
        # Async scheduling: the step's drafts are proposed on the device and read there by the next step (the
        # scheduler sends placeholders); without it they come to the host once per step.
        self.on_device = runner.config.scheduler.async_scheduling
        # The proposer that drafts on the device into `draft_ids` (the draft model, or the benchmark's oracle).
        self.device_proposer = None
        if speculative_config.method == "ngram_gpu" and self.on_device:  # the same lookup, on the device
            from pagoda.spec_decode.ngram_gpu import DeviceNgramProposer

            self.proposer = None
            self.device_proposer = DeviceNgramProposer(speculative_config.num_speculative_tokens,
                                                       speculative_config.prompt_lookup_min,
                                                       speculative_config.prompt_lookup_max, runner)
        if getattr(speculative_config, "oracle", False):
            from pagoda.spec_decode.oracle_proposer import DeviceOracle

            self.proposer = None
            self.device_proposer = DeviceOracle(self.num_speculative_tokens, runner)
        if self.on_device and self.proposer is not None:
            raise ValueError("speculative decoding with async scheduling needs drafts proposed on the device; "
                             f"method {speculative_config.method!r} proposes on the host (turn async scheduling off)")
        # Row r's newest drafts on the device: draft_ids[r, :k].
        self.draft_ids = torch.zeros((runner.batch.max_num_reqs, self.num_speculative_tokens), dtype=torch.int64,
                                     device=runner.device)

    def attach_draft_model(self, model, kv_caches) -> None:
        from pagoda.worker.draft_proposer import DraftModelProposer

        draft_config = self.runner.config.speculative.draft_model_config
        self.draft = DraftModelProposer(model, kv_caches, self.runner, self.num_speculative_tokens,
                                        draft_config.max_model_len)
        self.device_proposer = self.draft

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
               num_drafts: np.ndarray, drafts: dict[str, list[int]], hidden: torch.Tensor, positions: torch.Tensor,
               output: ModelRunnerOutput, propose: bool = True, grammar=None) -> StepOutput:
        """Sample the requests `sample_at` of the step (indices into req_ids), fill `output`, and (with
        `propose`: the scheduler will use drafts) propose the next drafts. `positions`: the step's positions on
        the device. `grammar`: the structured-output masks of the step (ModelRunner.apply_grammar), applied at
        every sampled position. With drafts on the device (async scheduling) nothing here waits for the
        device: the step's tokens reach the host through the returned handle."""
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
        num = len(sample_ids)
        out = torch.full((num, int(counts.max())), -1, dtype=torch.int64, device=device)
        logprob_sets: list[tuple[torch.Tensor, ...]] = []
        lp_set = np.full(num, -1, dtype=np.int64)
        lp_start = np.zeros(num, dtype=np.int64)
        lp_width = np.zeros(num, dtype=np.int64)

        plain = np.flatnonzero(k == 0)
        plain_metadata = None
        if plain.size:
            plain_metadata = runner.sampling_inputs.build(sample_rows[plain], [sample_ids[j] for j in plain],
                                                          runner.generators,
                                                          newest=(runner.last_sampled, runner.pending_src))
            result = runner.sampler.forward(logits[to_device(offsets[plain], device)], plain_metadata)
            out[to_device(plain, device), 0] = result.sampled_token_ids
            wanted = batch.num_logprobs[sample_rows[plain]]
            if result.logprobs is not None and (wanted >= 0).any():
                asked = wanted >= 0
                lp_set[plain[asked]] = len(logprob_sets)
                lp_start[plain] = np.arange(plain.size)
                lp_width[plain] = wanted + 1
                logprob_sets.append((result.logprob_token_ids, result.logprobs, result.sampled_ranks))
        verify = np.flatnonzero(k > 0)
        if verify.size:
            self._launch_verify(verify, k, offsets, counts, logits, sample_rows, sample_ids, drafts, out,
                                logprob_sets, lp_set, lp_start, lp_width)
        num_new = (out >= 0).sum(dim=1)
        record = VerifiedTokens(batch, sample_ids, sample_rows, counts, out, num_new, logprob_sets, lp_set,
                                lp_start, lp_width)
        if plain_metadata is not None:  # rows whose own sampling rules raised: failed after the record is made,
            for n, reason in plain_metadata.row_errors.items():  # so its fill leaves their dropped rows alone
                runner.fail(sample_ids[plain[n]], f"sampling request {sample_ids[plain[n]]} failed: {reason}", output)

        observe = getattr(self.device_proposer, "observe", None)
        if observe is not None:  # a proposer that keeps each request's tokens on the device sees the new ones
            seen = np.flatnonzero(batch.can_speculate[sample_rows])
            if seen.size:
                where = to_device(seen, device)
                observe(sample_rows[seen], record.positions[seen], out[where], num_new[where],
                        positions[to_device(first[seen], device)])
        proposing = [j for j, req_id in enumerate(sample_ids)
                     if propose and batch.can_speculate[sample_rows[j]] and req_id not in output.failed]
        if proposing and self.proposer is None:  # on the device: the draft model, ngram_gpu or the benchmark's oracle
            where = to_device(np.array(proposing, dtype=np.int64), device)
            last = out[where].gather(1, (num_new[where] - 1)[:, None])[:, 0]  # each request's newest token
            position = positions[to_device(first[proposing], device)] + num_new[where]  # ... and its position
            self.device_proposer.propose(sample_rows[proposing], last, position, self.draft_ids)
        if self.on_device:
            runner.add_in_flight(record)
            for j in proposing:
                output.draft_token_ids[sample_ids[j]] = [PLACEHOLDER] * self.num_speculative_tokens
            return StepOutput(output, record)
        record.fill(batch)
        record.write_output(output)
        for req_id in output.failed:
            output.sampled_token_ids.pop(req_id, None)
            output.logprobs.pop(req_id, None)
        if proposing:
            self._propose_on_host([sample_ids[j] for j in proposing], sample_rows[proposing], output)
        return StepOutput.ready(output)

    def _propose_on_host(self, req_ids: list[str], rows: np.ndarray, output: ModelRunnerOutput) -> None:
        """Without async scheduling: the next drafts as host ids (n-gram lookup, or the draft model's copied)."""
        batch = self.runner.batch
        if self.proposer is not None:
            drafts = [self.proposer.propose(batch.token_ids[row, : batch.num_tokens[row]]) for row in rows.tolist()]
        else:
            limits = self.device_proposer.num_drafts(rows)
            drafts = [ids[:n] for ids, n in zip(self.draft_ids[to_device(rows, self.runner.device)].tolist(),
                                                limits.tolist())]
        for req_id, proposed in zip(req_ids, drafts):
            if proposed:
                output.draft_token_ids[req_id] = proposed

    def _launch_verify(self, verify, k, offsets, counts, logits, sample_rows, sample_ids, drafts, out,
                       logprob_sets, lp_set, lp_start, lp_width) -> None:
        """Launch the rejection sampler (and the logprobs it needs) for the rows `verify`, into `out`; no host
        sync. Drafts that are placeholders (on the device) are read from `draft_ids`."""
        runner = self.runner
        batch, device = runner.batch, runner.device
        positions = np.concatenate([offsets[j] + np.arange(counts[j]) for j in verify])
        verify_logits = logits[to_device(positions, device)]
        verify_ids = [sample_ids[j] for j in verify]
        metadata = runner.sampling_inputs.build(sample_rows[verify], verify_ids, runner.generators,
                                                newest=(runner.last_sampled, runner.pending_src))
        verify_k = [int(k[j]) for j in verify]
        host_ids = np.array([t for r in verify_ids for t in drafts[r]], dtype=np.int64)
        if (host_ids == PLACEHOLDER).any():
            draft_rows = np.repeat(sample_rows[verify], k[verify])
            draft_cols = np.arange(host_ids.size) - np.repeat(np.cumsum(k[verify]) - k[verify], k[verify])
            draft_ids = self.draft_ids[to_device(draft_rows, device), to_device(draft_cols, device)]
        else:
            draft_ids = to_device(host_ids, device)
        verified = rejection_sample(verify_logits, verify_k, draft_ids, metadata)  # [Rv, max_k + 1], -1 padded
        out[to_device(verify, device), : verified.shape[1]] = verified
        wanted = batch.num_logprobs[sample_rows[verify]]
        if (wanted >= 0).any():
            # The token output at each verified position (0 past the first rejection: never reported).
            index = to_device(np.stack([np.repeat(np.arange(len(verify)), counts[verify]),
                                        np.concatenate([np.arange(counts[j]) for j in verify])]), device)
            chosen = verified[index[0], index[1]].clamp_min(0)
            raw = torch.log_softmax(verify_logits.to(torch.float32), dim=-1)
            asked = wanted >= 0
            lp_set[verify[asked]] = len(logprob_sets)
            lp_start[verify] = np.cumsum(counts[verify]) - counts[verify]
            lp_width[verify] = wanted + 1
            logprob_sets.append(gather_logprobs(raw, int(wanted.max()), chosen))
