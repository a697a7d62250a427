"""get_model: build the model class for a config on its device and dtype, then fill its weights.

Invariants:
- Parameters are created directly on the target device in the target dtype (torch.device context
  plus default dtype), so loading never holds a second full copy of the model on the host.
- The returned module is in eval mode, needs no grad, and every parameter it declares was filled
  from the checkpoint (or randomly, for load_format="dummy"); otherwise ValueError lists some
  missing names.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend
from pagoda.config import LoadConfig, ModelConfig
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
        model = model_cls(hf_config, attn_backend)
    if load_config.load_format == "dummy":
        initialize_dummy_weights(model, seed=model_config.seed or 0)
    else:
        load_checkpoint(model, model_config.model_path, load_config.load_format)
    model.eval().requires_grad_(False)
    logger.info(
        "Loaded %s (%s, %s) on %s in %.2f s",
        model_cls.__name__,
        model_config.dtype_name,
        load_config.load_format,
        device,
        time.perf_counter() - start,
    )
    return model


@torch.no_grad()
def load_checkpoint(model: nn.Module, folder: str, load_format: str = "auto") -> set[str]:
    """Load `folder`'s weight files into `model`; ValueError if the model expects weights it lacks."""
    files, use_safetensors = find_weight_files(folder, load_format)
    device = next(model.parameters()).device
    loaded = model.load_weights(iterate_weights(files, use_safetensors, device))
    missing = sorted(name for name, _ in model.named_parameters() if name not in loaded)
    if missing:
        raise ValueError(
            f"model={folder!r}: the checkpoint lacks {len(missing)} weight(s) the model expects, "
            f"e.g. {missing[:5]}"
        )
    return loaded
