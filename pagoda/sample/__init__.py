"""Sampling: per-row settings as tensors (SamplingMetadata), the batched Sampler, logprob gathering,
per-request logits processing (logits_processors.py) and penalties (penalties.py).

Invariant: nothing here depends on the scheduler or the model; the model runner builds the metadata
and calls `Sampler()(logits, metadata)`.
"""

from pagoda.sample.logprobs import compute_prompt_logprobs, gather_logprobs
from pagoda.sample.metadata import SamplingMetadata
from pagoda.sample.sampler import Sampler, SamplerOutput

__all__ = ["Sampler", "SamplerOutput", "SamplingMetadata", "compute_prompt_logprobs", "gather_logprobs"]
