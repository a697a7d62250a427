"""Copying checkpoint tensors into parameters: the checks and slicing every layer's loader shares.

Invariants:
- Nothing is cast between FP8 and another dtype: an FP8 tensor loads only into a parameter of the
  same FP8 dtype, and no other tensor loads into an FP8 parameter (`check_dtype`). Other dtypes are
  converted by `copy_` as before (a bf16 checkpoint into an fp32 model).
- A tensor of the wrong shape is a ValueError stating the shape found and the shape expected; the
  loader (model_loader/loader.py) adds the checkpoint tensor's name.
- Parameter kinds are attributes set by the layer or its linear method: `output_dim` / `input_dim`
  (sharded rows / columns, either may be dim 0 or 1), `broadcast_scalar` (a per-row scale [rows, 1]
  that also takes one value for a whole piece), `per_piece` (one value per logical piece of a fused
  layer), and `packed_dim` / `packed_factor` (int4 formats: `packed_factor` logical values per stored
  element along `packed_dim`). Layers give offsets and sizes in logical units; `load_rows` converts
  them along a packed dimension, and refuses a slice that does not start and end on a packed element.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def set_weight_attrs(param: torch.Tensor, attrs: dict) -> None:
    """Attach loading metadata (output_dim, input_dim, weight_loader) to a parameter."""
    for key, value in attrs.items():
        setattr(param, key, value)


_FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                     "float8_e5m2fnuz") if hasattr(torch, name))


def check_dtype(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """ValueError unless the tensor may be copied into the parameter: FP8 only into the same FP8 dtype,
    nothing else into FP8 (a cast would drop the checkpoint's scales, or invent none), and integers (packed
    int4 words) only into integer parameters and the reverse."""
    fp8_param, fp8_loaded = param.dtype in _FP8_DTYPES, loaded_weight.dtype in _FP8_DTYPES
    int_param, int_loaded = not param.dtype.is_floating_point, not loaded_weight.dtype.is_floating_point
    if int_param != int_loaded:
        raise ValueError(f"the checkpoint tensor is {loaded_weight.dtype} but this parameter holds {param.dtype}: "
                         "packed integer weights and float tensors are never cast into each other")
    if fp8_param == fp8_loaded and (not fp8_param or param.dtype == loaded_weight.dtype):
        return
    if fp8_loaded and not fp8_param:
        raise ValueError(f"the checkpoint tensor is {loaded_weight.dtype} but this layer is not quantized (it holds "
                         f"{param.dtype}): a quantized layer of a kind Pagoda does not quantize yet (e.g. a vision "
                         "tower), or a layer the quantization config's skip list names")
    raise ValueError(f"the checkpoint tensor is {loaded_weight.dtype} but this layer holds {param.dtype}: a layer "
                     "the checkpoint left unquantized must be named in its quantization config's skip list "
                     "(ignored_layers / modules_to_not_convert)")


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Copy a whole (unsharded) tensor, checking the dtype kind and the shape."""
    check_dtype(param, loaded_weight)
    if param.shape != loaded_weight.shape:
        raise ValueError(f"weight shape {tuple(loaded_weight.shape)} does not match parameter shape {tuple(param.shape)}")
    param.data.copy_(loaded_weight)


def load_rows(param: torch.Tensor, loaded: torch.Tensor, dim: int, offset: int, size: int, start: int,
              full: int) -> None:
    """Rows [start, start + size) along `dim` of a checkpoint piece of `full` rows into rows
    [offset, offset + size) of `param` (logical units). A per-row scale (`broadcast_scalar`) also takes
    one value for the whole piece (a per-tensor scale) or a 1-D vector of the piece's rows."""
    offset, size, start, full = packed_units(param, dim, offset, size, start, full)
    dst = param.data.narrow(dim, offset, size)
    given = tuple(loaded.shape)
    if getattr(param, "broadcast_scalar", False):
        if loaded.numel() == 1:
            check_dtype(param, loaded)
            dst.copy_(loaded.reshape((1,) * dst.dim()).expand_as(dst))
            return
        if loaded.dim() == dst.dim() - 1:
            loaded = loaded.unsqueeze(-1)
    expected = list(dst.shape)
    expected[dim] = full
    if list(loaded.shape) != expected:
        what = "one value (per tensor) or " if getattr(param, "broadcast_scalar", False) else ""
        raise ValueError(f"shape {given} does not match the expected {what}{tuple(expected)}")
    default_weight_loader(dst, loaded.narrow(dim, start, size))


def packed_units(param: torch.Tensor, dim: int, *values: int) -> tuple[int, ...]:
    """Logical offsets / sizes along `dim` in stored elements: divided by `packed_factor` along `packed_dim`."""
    if getattr(param, "packed_dim", None) != dim:
        return values
    factor = param.packed_factor
    if any(v % factor for v in values):
        raise ValueError(f"offsets and sizes {list(values)} along packed dim {dim} are not multiples of its packing "
                         f"factor {factor}")
    return tuple(v // factor for v in values)


def load_piece_value(param: torch.Tensor, loaded: torch.Tensor, index: int | None) -> None:
    """A per-piece parameter (one value per logical piece, e.g. a static input scale): piece `index`
    (None: every piece) takes the checkpoint's one value."""
    if loaded.numel() != 1:
        raise ValueError(f"shape {tuple(loaded.shape)}: a per-tensor scale has one value")
    check_dtype(param, loaded)
    target = param.data if index is None else param.data[index : index + 1]
    target.copy_(loaded.reshape(1).expand_as(target))


def load_whole(param: torch.Tensor, loaded: torch.Tensor) -> None:
    """An unsharded parameter of any kind (ReplicatedLinear, RowParallelLinear's non-input-sharded ones)."""
    if getattr(param, "per_piece", False):
        load_piece_value(param, loaded, None)
    elif getattr(param, "broadcast_scalar", False):
        rows = param.shape[param.output_dim]  # scales are never packed
        load_rows(param, loaded, param.output_dim, 0, rows, 0, rows)
    else:
        default_weight_loader(param, loaded)


def load_named_weight(params: dict[str, nn.Parameter], name: str, tensor: torch.Tensor, loaded: set[str]) -> None:
    """Load a checkpoint tensor into the parameter of the same name with that parameter's weight_loader,
    adding the name to `loaded`; a tensor with no such parameter is skipped (logged at debug level)."""
    param = params.get(name)
    if param is None:
        logger.debug("skipping checkpoint tensor %s: no such parameter", name)
        return
    getattr(param, "weight_loader", default_weight_loader)(param, tensor)
    loaded.add(name)
