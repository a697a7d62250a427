"""Linear layers written for tensor parallelism, delegating weights and matmul to a LinearMethod.

Invariants:
- A layer never creates its weight itself: its `LinearMethod` does (`create_weights`) and computes
  the product (`apply`). Quantization schemes add a method, not a layer (DESIGN §7).
- Every parameter carries a `weight_loader(param, loaded_weight[, shard_id])` that copies this
  rank's slice of a full checkpoint tensor into it; the loader never assumes the layer holds the
  whole weight. Weights are stored as nn.Linear does: [output, input].
- Column-parallel layers split the output dimension over tp ranks, row-parallel ones the input
  dimension (their outputs are summed over ranks; the bias is added once, after the sum).
- Fused layers (QKV, gate/up) hold ONE weight; shard ids say where a checkpoint piece goes:
  "q" / "k" / "v" for QKVParallelLinear, the index in `output_sizes` for MergedColumnParallelLinear.
  Every parameter of a fused layer records the shard ids it received (`loaded_shards`, against the
  expected `shard_ids`), so the loader can name a piece the checkpoint lacks.
- A layer knows its checkpoint name (`prefix`, e.g. "model.layers.0.self_attn.qkv_proj"); with a
  `quant_config` its method is `quant_config.get_linear_method(layer, prefix)` (unquantized for a
  skipped layer), created before any weight.
- Besides rows of weights, loaders know the parameters a quantized method adds: a per-row scale
  (`broadcast_scalar`: [rows, 1], taking a checkpoint's per-tensor value for all of a piece's rows,
  or its per-channel [rows] / [rows, 1] values) and one value per logical piece (`per_piece`: a
  static input scale). A checkpoint tensor of the wrong shape, or FP8 where the layer is not FP8
  (or the reverse), is a ValueError; nothing is cast between FP8 and other dtypes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.kernels.tuning import gemv_applies
from pagoda.model_executor.layers.pending_norm import PendingRMSNorm
from pagoda.model_executor.layers.weight_loading import (
    default_weight_loader,
    load_named_weight,
    load_piece_value,
    load_rows,
    packed_units,
    load_whole,
    set_weight_attrs,
)
from pagoda.model_executor.parallel_state import divide, get_tp_rank, get_tp_size, tp_all_gather, tp_all_reduce

logger = logging.getLogger(__name__)

# the loading helpers models import from here, beside the layers
__all__ = ["LinearMethod", "UnquantizedLinearMethod", "LinearBase", "ReplicatedLinear", "ColumnParallelLinear",
           "MergedColumnParallelLinear", "QKVParallelLinear", "RowParallelLinear", "dense", "default_weight_loader",
           "load_named_weight", "set_weight_attrs"]


def _gemv():
    """The Triton GEMV, imported on first use: only CUDA inputs reach it (gemv_applies), so a CPU
    install never needs Triton."""
    from pagoda.kernels.gemv import gemv

    return gemv


class LinearMethod(ABC):
    """How a linear layer stores its weight and multiplies by it."""

    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        """Register the layer's weight parameter(s) (with `input_dim`/`output_dim` attributes)."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x @ weightᵀ (+ bias)."""

    # Whether `apply` takes a PendingRMSNorm as x (layers/pending_norm.py); if not, the layer
    # materializes the norm first.
    takes_pending_norm = False

    def apply_silu_and_mul(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None,
                           act: nn.Module) -> torch.Tensor:
        """act(x @ weightᵀ (+ bias)) for a [gate | up] weight, where act is SiluAndMul; a method may
        fuse the two (the default does not)."""
        return act(self.apply(layer, x, bias))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once after every checkpoint tensor is loaded (e.g. to quantize or repack the weight)."""


class UnquantizedLinearMethod(LinearMethod):
    """A plain [output, input] weight in the model dtype."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, params_dtype):
        weight = nn.Parameter(
            torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
            requires_grad=False,
        )
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0})
        layer.register_parameter("weight", weight)

    takes_pending_norm = True

    def apply(self, layer, x, bias):
        return self._matmul(layer, x, bias, act=None)

    def apply_silu_and_mul(self, layer, x, bias, act):
        return self._matmul(layer, x, bias, act)

    @staticmethod
    def _matmul(layer, x, bias, act):
        """act(x @ weightᵀ + bias) (act None: no activation): the GEMV, with a pending norm and the
        SiLU·mul fused into it, where it applies; otherwise the norm, F.linear and act one by one."""
        pending = x if isinstance(x, PendingRMSNorm) else None
        rows = pending.x if pending is not None else x
        if gemv_applies(rows) and layer.weight.is_contiguous():
            norm = pending.gemv_args() if pending is not None else {}
            return _gemv()(rows, layer.weight, bias, silu_and_mul=act is not None, **norm)
        out = F.linear(pending.materialize() if pending is not None else x, layer.weight, bias)
        return out if act is None else act(out)


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weightᵀ (+ bias): Triton's decode GEMV where `gemv_applies` (it reads narrow weights faster
    than cuBLAS), F.linear otherwise."""
    if gemv_applies(x) and weight.is_contiguous():
        return _gemv()(x, weight, bias)
    return F.linear(x, weight, bias)


class LinearBase(nn.Module):
    """Shared set-up: sizes, dtype, the linear method (chosen by `quant_config` for `prefix`) and an
    optional bias."""

    def __init__(self, input_size: int, output_size: int, linear_method: LinearMethod | None = None,
                 quant_config=None, prefix: str = ""):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.prefix = prefix
        self.tp_rank = get_tp_rank()
        self.tp_size = get_tp_size()
        self.params_dtype = torch.get_default_dtype()
        if linear_method is None and quant_config is not None:
            linear_method = quant_config.get_linear_method(self, prefix)
        self.linear_method = linear_method or UnquantizedLinearMethod()

    def _input(self, x):
        """x, with a pending norm computed here unless the linear method fuses it."""
        if isinstance(x, PendingRMSNorm) and not self.linear_method.takes_pending_norm:
            return x.materialize()
        return x

    def _make_bias(self, size: int, bias: bool, loader) -> None:
        if not bias:
            self.register_parameter("bias", None)
            return
        param = nn.Parameter(torch.empty(size, dtype=self.params_dtype), requires_grad=False)
        set_weight_attrs(param, {"output_dim": 0, "weight_loader": loader})
        self.bias = param

    def _set_loader(self, loader) -> None:
        for name, param in self.named_parameters(recurse=False):
            if name != "bias":
                set_weight_attrs(param, {"weight_loader": loader})


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight (small projections)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True, linear_method: LinearMethod | None = None,
                 quant_config=None, prefix: str = ""):
        super().__init__(input_size, output_size, linear_method, quant_config, prefix)
        self.linear_method.create_weights(self, input_size, [output_size], self.params_dtype)
        self._set_loader(load_whole)
        self._make_bias(output_size, bias, default_weight_loader)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_method.apply(self, self._input(x), self.bias)


class ColumnParallelLinear(LinearBase):
    """Y = X·Aᵀ with A's output rows split over ranks; each rank returns its slice of Y.

    The output is made of logical pieces (`output_sizes`; one for a plain layer): piece i has
    `checkpoint_sizes[i]` rows in the checkpoint and `output_partition_sizes[i]` on this rank.
    """

    shard_ids: tuple = ()  # the ids of a fused layer's checkpoint pieces (none: one unfused piece)

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = False,
        linear_method: LinearMethod | None = None,
        output_sizes: list[int] | None = None,
        quant_config=None,
        prefix: str = "",
    ):
        super().__init__(input_size, output_size, linear_method, quant_config, prefix)
        self.gather_output = gather_output
        self.output_sizes = output_sizes or [output_size]
        if not hasattr(self, "checkpoint_sizes"):
            self.checkpoint_sizes = list(self.output_sizes)
        self.output_partition_sizes = [divide(s, self.tp_size, "output_size") for s in self.output_sizes]
        self.output_size_per_partition = sum(self.output_partition_sizes)
        self.linear_method.create_weights(self, input_size, self.output_partition_sizes, self.params_dtype)
        self._set_loader(self.weight_loader)
        self._make_bias(self.output_size_per_partition, bias, self.weight_loader)
        if self.shard_ids:
            for param in self.parameters(recurse=False):
                set_weight_attrs(param, {"shard_ids": self.shard_ids, "loaded_shards": set()})

    def _piece_rows(self, index: int) -> tuple[int, int, int]:
        """(offset of piece `index` in this rank's rows, its rows here, the rank whose slice they are)."""
        return sum(self.output_partition_sizes[:index]), self.output_partition_sizes[index], self.tp_rank

    def _load_piece(self, param: torch.Tensor, loaded: torch.Tensor, index: int) -> None:
        """Checkpoint piece `index` (a whole unsharded tensor of that piece) into its place in `param`."""
        if getattr(param, "per_piece", False):
            load_piece_value(param, loaded, index)
        elif getattr(param, "output_dim", None) is None:  # one tensor for the whole layer (e.g. GPTQ's g_idx)
            if self.shard_ids and param.loaded_shards and param.shape == loaded.shape and not torch.equal(
                    param.data, loaded.to(param.device, param.dtype)):
                raise ValueError(f"piece {self.shard_ids[index]!r} of {self.prefix or 'the fused layer'} differs from "
                                 f"its pieces {sorted(map(str, param.loaded_shards))}: the fused layer holds one such "
                                 "tensor, so every piece must give the same")
            default_weight_loader(param, loaded)
        else:
            offset, size, rank = self._piece_rows(index)
            load_rows(param, loaded, param.output_dim, offset, size, rank * size, self.checkpoint_sizes[index])
        if self.shard_ids:
            param.loaded_shards.add(self.shard_ids[index])

    def _load_fused(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        """A checkpoint tensor of the whole fused layer: split into its pieces (one value: every piece's)."""
        dim = getattr(param, "output_dim", None)
        one_value = loaded.numel() == 1 and (getattr(param, "per_piece", False) or getattr(param, "broadcast_scalar",
                                                                                           False))
        if one_value or dim is None:
            for index in range(len(self.output_sizes)):
                self._load_piece(param, loaded, index)
            return
        sizes = list(packed_units(param, dim, *self.checkpoint_sizes))
        if loaded.dim() <= dim or loaded.shape[dim] != sum(sizes):
            raise ValueError(f"shape {tuple(loaded.shape)}: the fused layer has {sum(sizes)} output rows here "
                             f"({' + '.join(map(str, sizes))}) along dim {dim}")
        for index, piece in enumerate(loaded.split(sizes, dim=dim)):
            self._load_piece(param, piece, index)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
        self._load_piece(param, loaded_weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear_method.apply(self, self._input(x), self.bias)
        return tp_all_gather(out) if self.gather_output else out


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input fused in one weight (e.g. gate and up).

    Checkpoint piece `shard_id` (an index into `output_sizes`) lands at its offset in the fused weight.
    """

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = True, linear_method: LinearMethod | None = None,
                 quant_config=None, prefix: str = ""):
        self.shard_ids = tuple(range(len(output_sizes)))
        super().__init__(input_size, sum(output_sizes), bias, False, linear_method, output_sizes=list(output_sizes),
                         quant_config=quant_config, prefix=prefix)

    def forward_silu_and_mul(self, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """act(forward(x)) for a [gate, up] projection, fused by the linear method where it can be."""
        return self.linear_method.apply_silu_and_mul(self, self._input(x), self.bias, act)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: int | None = None) -> None:
        if shard_id is None:  # the checkpoint already stores the fused tensor
            return self._load_fused(param, loaded_weight)
        if shard_id not in self.shard_ids:
            raise ValueError(f"shard_id must be one of {list(self.shard_ids)}, got {shard_id!r}")
        self._load_piece(param, loaded_weight, shard_id)


class QKVParallelLinear(ColumnParallelLinear):
    """The fused query/key/value projection: one weight of [q | k | v] rows for this rank's heads.

    With more ranks than key/value heads, each key/value head is replicated over several ranks.
    """

    shard_ids = ("q", "k", "v")

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        total_num_heads: int,
        total_num_kv_heads: int,
        bias: bool = True,
        linear_method: LinearMethod | None = None,
        quant_config=None,
        prefix: str = "",
    ):
        tp_size = get_tp_size()
        self.head_size = head_size
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads
        self.num_heads = divide(total_num_heads, tp_size, "num_attention_heads")
        if tp_size >= total_num_kv_heads:
            self.num_kv_heads = 1
            self.num_kv_head_replicas = divide(tp_size, total_num_kv_heads, "tensor_parallel_size")
        else:
            self.num_kv_heads = divide(total_num_kv_heads, tp_size, "num_key_value_heads")
            self.num_kv_head_replicas = 1
        q_size = self.num_heads * head_size * tp_size
        kv_size = self.num_kv_heads * head_size * tp_size
        self.checkpoint_sizes = [total_num_heads * head_size, total_num_kv_heads * head_size,
                                 total_num_kv_heads * head_size]
        super().__init__(hidden_size, q_size + 2 * kv_size, bias, False, linear_method,
                         output_sizes=[q_size, kv_size, kv_size], quant_config=quant_config, prefix=prefix)

    def _piece_rows(self, index: int) -> tuple[int, int, int]:
        offset, size, rank = super()._piece_rows(index)
        return offset, size, rank if index == 0 else rank // self.num_kv_head_replicas

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: str | None = None) -> None:
        if shard_id is None:  # a checkpoint with fused qkv (e.g. GPT-2 after transposing)
            return self._load_fused(param, loaded_weight)
        if shard_id not in self.shard_ids:
            raise ValueError(f"shard_id must be 'q', 'k' or 'v', got {shard_id!r}")
        self._load_piece(param, loaded_weight, self.shard_ids.index(shard_id))


class RowParallelLinear(LinearBase):
    """Y = X·Aᵀ with A's input columns split over ranks; partial outputs are summed over ranks."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        reduce_results: bool = True,
        linear_method: LinearMethod | None = None,
        quant_config=None,
        prefix: str = "",
    ):
        super().__init__(input_size, output_size, linear_method, quant_config, prefix)
        self.reduce_results = reduce_results
        self.input_size_per_partition = divide(input_size, self.tp_size, "input_size")
        self.linear_method.create_weights(self, self.input_size_per_partition, [output_size], self.params_dtype)
        self._set_loader(self.weight_loader)
        self._make_bias(output_size, bias, default_weight_loader)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
        dim = getattr(param, "input_dim", None)
        if dim is None:
            return load_whole(param, loaded_weight)
        if getattr(param, "packed_dim", None) == dim:  # logical columns; load_rows converts them
            size, full = self.input_size_per_partition, self.input_size
        else:  # the weight's columns, or the rows of a per-group parameter
            size, full = param.shape[dim], param.shape[dim] * self.tp_size
        load_rows(param, loaded_weight, dim, 0, size, self.tp_rank * size, full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.linear_method.apply(self, x, self.bias)
        out = tp_all_reduce(self.linear_method.apply(self, x, None)) if self.reduce_results else self.linear_method.apply(self, x, None)
        return out + self.bias if self.bias is not None else out
