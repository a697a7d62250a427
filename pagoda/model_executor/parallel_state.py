"""Tensor-parallel rank and size as the model layers see them, and the collectives they call.

Invariants:
- The state lives in `pagoda.distributed`: in a single process (tensor_parallel_size 1, or before the
  multiprocessing executor joined the group) `get_tp_rank()` is 0, `get_tp_size()` is 1 and every
  collective here returns its input, costing one attribute check. Layers shard by (rank, size) through
  these functions at construction, so the group must exist before the model is built.
- `check_parallel` (EngineArgs, before anything is built) is where a model that cannot be split into tp x pp
  ranks, or too few visible GPUs for the local executors, becomes a ValueError naming the field.
"""

from __future__ import annotations

from typing import Any

import torch

from pagoda import distributed


def get_tp_rank() -> int:
    """This process's rank in its tensor-parallel group."""
    return distributed.get_tp_rank()


def get_tp_size() -> int:
    """How many processes a layer is split over."""
    return distributed.get_tp_size()


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    """Exact division; a remainder means the model cannot be split this way."""
    if numerator % denominator != 0:
        raise ValueError(f"{what}={numerator} is not divisible by tensor_parallel_size={denominator}")
    return numerator // denominator


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the tensor-parallel group (identity with one rank)."""
    return distributed.all_reduce(x)


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim` (identity with one rank)."""
    return distributed.all_gather(x, dim)


def check_tensor_parallel(text_config: Any, tp: int, architecture: str) -> None:
    """ValueError naming tensor_parallel_size when the model's heads (or MLP) cannot be split over `tp` ranks
    (vLLM's rules: tp divides the attention heads; tp > KV heads needs KV heads dividing tp, each rank then
    holds one replica of a KV head)."""
    if tp == 1:
        return
    heads = getattr(text_config, "num_attention_heads", None) or getattr(text_config, "n_head", None)
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    flag = f"tensor_parallel_size={tp} (--tensor-parallel-size)"
    if heads and heads % tp:
        raise ValueError(f"{flag} must divide the model's num_attention_heads={heads} ({architecture})")
    if kv_heads and tp > kv_heads and tp % kv_heads:
        raise ValueError(f"{flag} is larger than num_key_value_heads={kv_heads} and not a multiple of it "
                         f"({architecture}); each rank must hold one replica of a KV head")
    if kv_heads and tp < kv_heads and kv_heads % tp:
        raise ValueError(f"{flag} must divide the model's num_key_value_heads={kv_heads} ({architecture})")
    for name in ("intermediate_size", "ffn_dim", "n_inner"):
        size = getattr(text_config, name, None)
        if isinstance(size, int) and size % tp:
            raise ValueError(f"{flag} must divide the model's {name}={size} ({architecture})")


def check_pipeline_parallel(model_config: Any, pp: int) -> None:
    """ValueError naming pipeline_parallel_size when the model cannot be split into `pp` stages: more stages than
    decoder layers, a bad PAGODA_PP_LAYER_PARTITION, or a model family whose stages are not built yet."""
    from pagoda.model_executor.models.pipeline import layer_partition
    from pagoda.model_executor.models.registry import accepts_images

    flag = f"pipeline_parallel_size={pp} (--pipeline-parallel-size)"
    if accepts_images(model_config.architecture):
        raise ValueError(f"{flag} is not supported yet for vision-language models ({model_config.architecture})")
    text = model_config.hf_text_config
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    if not layers:
        raise ValueError(f"{flag}: the model's config gives no number of layers ({model_config.architecture})")
    layer_partition(layers, pp)


def check_parallel(model_config: Any, tp: int, pp: int, backend: str | None, device: str) -> int:
    """The world size tp x pp, after checking that the model splits that way and, for the local executors on CUDA,
    that as many GPUs are visible (Ray places ranks on any node of its cluster); ValueError naming the field."""
    check_tensor_parallel(model_config.hf_text_config, tp, model_config.architecture)
    if pp > 1:
        check_pipeline_parallel(model_config, pp)
    world_size = tp * pp
    if world_size > 1 and device == "cuda" and backend != "ray":
        import torch

        if torch.cuda.device_count() < world_size:
            raise ValueError(f"tensor_parallel_size={tp} x pipeline_parallel_size={pp} needs {world_size} GPUs, but "
                             f"{torch.cuda.device_count()} are visible (CUDA_VISIBLE_DEVICES)")
    return world_size
