"""Pipeline parallelism as the models see it: which decoder layers this stage holds, placeholders for the
others, and the tensors one stage hands to the next.

Invariants:
- `stage_layer_range(n)` is this rank's [start, end) of a model's n decoder layers. An even split, the
  remainder going one layer each to the stages just before the last (the last one also runs the final norm
  and the LM head), unless PAGODA_PP_LAYER_PARTITION (or vLLM's VLLM_PP_LAYER_PARTITION) gives the layers
  per stage ("5,3"): then it must have one positive count per stage, summing to n (else ValueError naming it).
  With one stage it is [0, n).
- `make_layers` builds only this stage's layers; the others are `MissingLayer`s, which hold no parameters
  (so the loader never expects their weights, and their checkpoint tensors are skipped) and raise if called.
  A stage's KV cache has one entry per layer it holds: layer i reads kv_caches[i - start].
- Between stages travel the model's `intermediate_names` (e.g. ("hidden_states", "residual")), each
  [num_tokens, hidden width] in the model's dtype; a stage that is not the last returns them as a dict, and
  every stage but the first takes them (`intermediate_tensors`) instead of token ids. `empty_intermediate`
  allocates what a stage receives into (and, filled with zeros, what a profiling or warm-up forward of a
  later stage runs on: `local_forward`).
- Embeddings live on the first stage; with tied word embeddings the last stage holds its own copy too (as
  its LM head). A model whose piece is absent on a stage holds a MissingLayer there instead.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from pagoda.distributed import get_pp_rank, get_pp_size, is_first_stage, is_last_stage

PARTITION_ENVS = ("PAGODA_PP_LAYER_PARTITION", "VLLM_PP_LAYER_PARTITION")

__all__ = ["MissingLayer", "empty_intermediate", "is_first_stage", "is_last_stage", "local_forward", "make_layers",
           "stage_layer_range"]


class MissingLayer(nn.Module):
    """A layer another pipeline stage holds (no parameters; never called)."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this layer lives on another pipeline stage")


def layer_partition(num_layers: int, num_stages: int) -> list[int]:
    """Layers per stage (see the module docstring)."""
    for name in PARTITION_ENVS:
        text = os.environ.get(name)
        if text:
            try:
                sizes = [int(part) for part in text.split(",")]
            except ValueError:
                raise ValueError(f"{name}={text!r} must be comma-separated layer counts, one per pipeline stage") from None
            if len(sizes) != num_stages or sum(sizes) != num_layers or min(sizes) < 1:
                raise ValueError(f"{name}={text!r} must give {num_stages} positive layer counts (one per pipeline "
                                 f"stage) that sum to the model's {num_layers} layers")
            return sizes
    if num_layers < num_stages:
        raise ValueError(f"pipeline_parallel_size={num_stages} (--pipeline-parallel-size) is larger than the "
                         f"model's {num_layers} layers: every stage needs at least one")
    sizes = [num_layers // num_stages] * num_stages
    for i in range(num_layers % num_stages):  # the stages before the last take the remainder
        sizes[-2 - i] += 1
    return sizes


def stage_layer_range(num_layers: int) -> tuple[int, int]:
    """[start, end) of the layers this rank's pipeline stage holds."""
    sizes = layer_partition(num_layers, get_pp_size())
    rank = get_pp_rank()
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def make_layers(num_layers: int, build: Callable[[int], nn.Module]) -> tuple[int, int, nn.ModuleList]:
    """(start, end, layers): build(i) for this stage's layers, MissingLayer for the others."""
    start, end = stage_layer_range(num_layers)
    layers = nn.ModuleList(build(i) if start <= i < end else MissingLayer() for i in range(num_layers))
    return start, end, layers


def empty_intermediate(model: nn.Module, num_tokens: int, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Buffers for the tensors a stage receives: each of `model.intermediate_names`, [num_tokens, width]."""
    width = model.intermediate_width
    return {name: torch.zeros(num_tokens, width, dtype=dtype, device=device) for name in model.intermediate_names}


def local_forward(model: nn.Module, dtype: torch.dtype, input_ids: torch.Tensor, positions: torch.Tensor,
                  kv_caches: list[torch.Tensor], metadata) -> torch.Tensor | None:
    """A forward of this stage's layers alone, for profiling and warm-up: zeros stand in for what the previous
    stage would send; None on a stage before the last (nothing to compute logits from)."""
    received = None
    if not is_first_stage():
        received = empty_intermediate(model, input_ids.shape[0], dtype, input_ids.device)
    if received is None:
        return model(input_ids, positions, kv_caches, metadata)
    out = model(input_ids, positions, kv_caches, metadata, intermediate_tensors=received)
    return out if is_last_stage() else None
