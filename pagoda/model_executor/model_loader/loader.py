"""get_model: build the model class for a config on its device and dtype, then fill its weights.

Invariants:
- Parameters are created directly on the target device in the target dtype (torch.device context
  plus default dtype), so loading never holds a second full copy of the model on the host.
- With `model_config.quantization` the model is built with its QuantizationConfig (the model
  class's `packed_modules_mapping` set on it, skip lists translated to the model's module names with
  the class's `module_name` where it has one); without, it is built as before, `model_cls(hf_config,
  attn_backend)`, so classes that take no quant_config still load.
- The returned module is in eval mode, needs no grad, and every parameter it declares was filled
  from the checkpoint (or randomly, for load_format="dummy"), every piece of a fused parameter too;
  otherwise ValueError names what is missing. A checkpoint tensor that does not fit its parameter is
  a ValueError naming the tensor.
- After loading, every linear layer's method ran `process_weights_after_loading` once (e.g. FP8
  quantization of an unquantized checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend
from pagoda.config import LoadConfig, ModelConfig
from pagoda.model_executor.layers.linear import LinearBase
from pagoda.model_executor.layers.quantization import build_quant_config
from pagoda.model_executor.model_loader.weight_utils import (
    find_weight_files,
    initialize_dummy_weights,
    iterate_weights,
)
from pagoda.model_executor.models.registry import ModelRegistry

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def get_quant_config(model_config: ModelConfig, model_cls: type) -> Any:
    """The QuantizationConfig `model_cls` is built with (None for an unquantized model)."""
    quant_config = build_quant_config(model_config.quantization, model_config.quantization_config)
    if quant_config is not None:
        quant_config.packed_modules_mapping = dict(getattr(model_cls, "packed_modules_mapping", {}) or {})
        to_module_name = getattr(model_cls, "module_name", None)
        if to_module_name is not None:
            quant_config.map_checkpoint_names(to_module_name)
    return quant_config


def instantiate_model(model_cls: type, model_config: ModelConfig, attn_backend: AttentionBackend) -> nn.Module:
    """`model_cls` for `model_config`, with its quantization config when quantized, weights not loaded; the
    caller sets the device and default dtype (get_model: the target device; a weights-fit check: "meta")."""
    quant_config = get_quant_config(model_config, model_cls)
    if quant_config is None:
        return model_cls(model_config.hf_config, attn_backend)
    return model_cls(model_config.hf_config, attn_backend, quant_config=quant_config)


def get_model(
    model_config: ModelConfig,
    load_config: LoadConfig,
    device: str,
    attn_backend: AttentionBackend,
) -> nn.Module:
    """The model for `model_config`, weights loaded, on `device` in `model_config.torch_dtype`, eval mode."""
    start = time.perf_counter()
    hf_config = model_config.hf_config
    architectures = list(getattr(hf_config, "architectures", None) or [model_config.architecture])
    model_cls = ModelRegistry.resolve_model_cls(architectures)
    with _default_dtype(model_config.torch_dtype), torch.device(device):
        model = instantiate_model(model_cls, model_config, attn_backend)
    if load_config.load_format == "dummy":
        initialize_dummy_weights(model, seed=model_config.seed or 0)
    else:
        load_checkpoint(model, model_config.model_path, load_config.load_format)
    process_weights_after_loading(model)
    model.eval().requires_grad_(False)
    logger.info(
        "Loaded %s (%s%s, %s) on %s in %.2f s",
        model_cls.__name__,
        model_config.dtype_name,
        f", quantization={model_config.quantization}" if model_config.quantization else "",
        load_config.load_format,
        device,
        time.perf_counter() - start,
    )
    return model


def _named(weights: Iterable[tuple[str, torch.Tensor]], current: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors, remembering the name of the one being loaded (models load lazily)."""
    for name, tensor in weights:
        current[0] = name
        yield name, tensor


@torch.no_grad()
def load_checkpoint(model: nn.Module, folder: str, load_format: str = "auto") -> set[str]:
    """Load `folder`'s weight files into `model`; ValueError if the model expects weights it lacks."""
    files, use_safetensors = find_weight_files(folder, load_format)
    device = next(model.parameters()).device
    current = [""]
    try:
        loaded = model.load_weights(_named(iterate_weights(files, use_safetensors, device), current))
    except ValueError as exc:
        raise ValueError(f"model={folder!r}: checkpoint tensor {current[0]!r}: {exc}") from None
    missing = sorted(name for name, _ in model.named_parameters() if name not in loaded)
    if missing:
        raise ValueError(
            f"model={folder!r}: the checkpoint lacks {len(missing)} weight(s) the model expects, "
            f"e.g. {missing[:5]}"
        )
    _check_pieces(model, folder)
    return loaded


def _check_pieces(model: nn.Module, folder: str) -> None:
    """ValueError naming the first checkpoint piece of a fused parameter (q/k/v, gate/up) never loaded."""
    mappings = [entry for module in model.modules() for entry in getattr(module, "stacked_params_mapping", ())]
    for name, param in model.named_parameters():
        expected = getattr(param, "shard_ids", ())
        missing = [sid for sid in expected if sid not in getattr(param, "loaded_shards", ())]
        if not missing:
            continue
        pieces = [name.replace(fused, piece) for fused, piece, sid in mappings if sid == missing[0] and fused in name]
        piece = pieces[0] if pieces else f"piece {missing[0]!r} of {name}"
        raise ValueError(f"model={folder!r}: the checkpoint lacks {piece!r} (shard {missing[0]!r} of the fused "
                         f"parameter {name})")


@torch.no_grad()
def process_weights_after_loading(model: nn.Module) -> None:
    """Let every linear layer's method finish its weights (quantize, repack) now that all are loaded."""
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.linear_method.process_weights_after_loading(module)
