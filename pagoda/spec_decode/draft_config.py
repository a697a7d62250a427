"""A speculative config's draft model -> its ModelConfig, built the way the target's is and checked against it.

Invariants:
- The draft is resolved offline from the folder or hub id the user gave, in the target's dtype, with every
  target-only option (max_model_len, overrides, quantization, the speculative options) reset; its own
  quantization is read from its checkpoint.
- A draft Pagoda cannot run, an embedding model, or another vocabulary than the target's is a ValueError naming
  the user's option; the draft's max_model_len is the smaller of the target's limit and its own.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pagoda import config as cfg
from pagoda.spec_decode.args import LEGACY_SPECULATIVE_FLAGS, option_namer

logger = logging.getLogger(__name__)


def with_draft_model(args: Any, speculative: cfg.SpeculativeConfig, target: cfg.ModelConfig,
                     device: str) -> cfg.SpeculativeConfig:
    """`speculative` (method "draft_model") with the draft's folder resolved, its ModelConfig built the way the
    target's is (offline, the target's dtype) and checked against the target (ValueError naming the option)."""
    name = option_namer(args.speculative_config)
    given = speculative.model
    draft_args = dataclasses.replace(
        args, model=given, tokenizer=given, revision=None, tokenizer_revision=None, dtype=target.dtype_name,
        max_model_len=None, served_model_name=None, hf_overrides={}, rope_scaling={}, rope_theta=None,
        task="auto", runner="auto", convert="auto", generation_config="none", override_generation_config={},
        override_pooler_config={}, pooler_config={}, speculative_config=None, quantization=None,
        **{flag: None for flag in LEGACY_SPECULATIVE_FLAGS})
    try:
        draft = draft_args._model_config(device)
    except ValueError as exc:
        raise ValueError(f"the draft model of {name('model')}: {exc}") from None
    from pagoda.model_executor.models import ModelRegistry

    architectures = list(getattr(draft.hf_config, "architectures", None) or [])
    if not any(ModelRegistry.is_supported(arch) for arch in architectures):
        raise ValueError(f"{name('model')}: the draft model {given!r} has architectures {architectures}, which "
                         f"Pagoda does not run; supported: {ModelRegistry.get_supported_archs()}")
    if draft.runner_type != "generate":
        raise ValueError(f"{name('model')}: the draft model {given!r} ({draft.architecture}) is an embedding "
                         "(pooling) model; a draft model must be a generative decoder with an LM head")
    draft_vocab, target_vocab = getattr(draft.hf_config, "vocab_size", None), getattr(target.hf_config,
                                                                                    "vocab_size", None)
    if draft_vocab != target_vocab:
        raise ValueError(f"{name('model')}: the draft model {given} has a vocabulary of {draft_vocab} tokens, the "
                         f"target model {target_vocab}; speculative decoding needs the same vocabulary (tokenizer)")
    limit = speculative.max_model_len or target.max_model_len  # the user's is <= the target's (checked)
    draft_len = min(limit, draft.max_model_len)  # draft.max_model_len: the draft's own position limit
    if draft_len < limit:
        logger.info("speculative decoding: no drafts past %d tokens, the draft model's limit (the target "
                    "serves up to %d)", draft_len, target.max_model_len)
    draft = dataclasses.replace(draft, max_model_len=draft_len)
    spec_len = draft_len if draft_len < target.max_model_len else speculative.max_model_len
    return dataclasses.replace(speculative, model=draft.model_path, max_model_len=spec_len,
                               draft_model_config=draft)
