"""Pagoda: an LLM inference and serving engine with vLLM's public names."""

from pagoda.engine_args import EngineArgs
from pagoda.inputs import TextPrompt, TokensPrompt
from pagoda.outputs import (
    CompletionOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagoda.pooling_params import PoolingParams
from pagoda.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "EngineArgs",
    "SamplingParams",
    "BeamSearchParams",
    "PoolingParams",
    "RequestOutputKind",
    "RequestOutput",
    "PoolingOutput",
    "PoolingRequestOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "ScoringOutput",
    "ScoringRequestOutput",
    "CompletionOutput",
    "Logprob",
    "TokensPrompt",
    "TextPrompt",
    "ModelRegistry",
    "__version__",
]


def __getattr__(name: str):
    # Heavy modules (torch, models) load only when these names are first used.
    if name == "LLM":
        from pagoda.entrypoints.llm import LLM

        return LLM
    if name == "ModelRegistry":
        from pagoda.model_executor.models import ModelRegistry

        return ModelRegistry
    raise AttributeError(f"module 'pagoda' has no attribute {name!r}")
