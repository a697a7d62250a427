"""Structured-output token bitmasks (xgrammar / vLLM layout) applied to logits in place.

Layout: `bitmask` is int32 [M, W], W = ceil(V / 32); bit b of word w (b = 0 the least significant)
set means token 32 * w + b is allowed, cleared means its logit becomes -inf. Mask row i applies to
logits row `row_indices[i]` (row i when `row_indices` is None, and then M == R). Columns >= 32 * W
are disallowed; bits past V are ignored. Allowed logits are left bit-for-bit as they were; a row
named twice in `row_indices` gets the union of its masks' bans.

Dispatch: CUDA logits with unit stride in the vocab go to the Triton kernel
(pagoda.kernels.token_bitmask, imported only then, so a CPU run never imports Triton); everything
else goes to `apply_token_bitmask_ref`, the vectorized torch reference (bits unpacked with shifts).
Neither path syncs the device. The host's numpy bitmask reaches the device through
`bitmask_to_device`, which never makes the host wait for the GPU.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

_BITS = 32


def bitmask_to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host bitmask (numpy int32 [M, W]; uint32 is taken bit for bit) as an int32 tensor on `device`.

    A copy from pageable memory blocks the host until the GPU has finished all work queued before
    it, so on CUDA the array goes through pinned memory (torch's caching host allocator keeps it
    alive until the copy has run) with non_blocking=True, as `pagoda.worker.input_batch.to_device`.
    """
    if array.dtype == np.uint32:
        array = array.view(np.int32)
    if array.dtype != np.int32 or array.ndim != 2:
        raise TypeError(f"bitmask must be a 2-D numpy int32 array, got {array.dtype} with shape {array.shape}")
    device = torch.device(device)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cpu":
        return tensor
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """Allowed tokens as bool [M, vocab] from int32 [M, W] (columns past 32 * W are False)."""
    if sys.byteorder == "little":
        # Byte k of word w holds bits 8k..8k+7 (tokens 32w + 8k + b): shifting bytes is ~4x faster
        # on CPU than shifting the int32 words 32 ways.
        words, bits = bitmask.contiguous().view(torch.uint8), 8
    else:
        words, bits = bitmask, _BITS
    shifts = torch.arange(bits, dtype=words.dtype, device=bitmask.device)
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().reshape(bitmask.shape[0], -1)
    covered = allowed.shape[1]
    if covered >= vocab:
        return allowed[:, :vocab]
    pad = torch.zeros(bitmask.shape[0], vocab - covered, dtype=torch.bool, device=bitmask.device)
    return torch.cat([allowed, pad], dim=1)


def _check(logits: torch.Tensor, bitmask: torch.Tensor, row_indices: torch.Tensor | None) -> None:
    if logits.dim() != 2 or not logits.is_floating_point():
        raise TypeError(f"logits must be a 2-D float tensor, got {logits.dtype} {tuple(logits.shape)}")
    if bitmask.dim() != 2 or bitmask.dtype != torch.int32:
        raise TypeError(f"bitmask must be a 2-D int32 tensor, got {bitmask.dtype} {tuple(bitmask.shape)}")
    if bitmask.device != logits.device:
        raise ValueError(f"bitmask is on {bitmask.device}, logits on {logits.device}")
    if row_indices is None:
        if bitmask.shape[0] != logits.shape[0]:
            raise ValueError(f"bitmask has {bitmask.shape[0]} rows, logits {logits.shape[0]}; pass "
                             "row_indices to mask a subset of the rows")
        return
    if row_indices.shape != (bitmask.shape[0],) or row_indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"row_indices must be int32/int64 of shape ({bitmask.shape[0]},), got "
                         f"{row_indices.dtype} {tuple(row_indices.shape)}")
    if row_indices.device != logits.device:
        raise ValueError(f"row_indices is on {row_indices.device}, logits on {logits.device}")


def apply_token_bitmask_ref(
    logits: torch.Tensor, bitmask: torch.Tensor, row_indices: torch.Tensor | None = None
) -> torch.Tensor:
    """Torch reference: -inf where the mask bit is cleared, in place on `logits`; returns it."""
    _check(logits, bitmask, row_indices)
    if bitmask.shape[0] == 0:
        return logits
    banned = ~unpack_bitmask(bitmask, logits.shape[1])
    if row_indices is not None:
        # Scattered into a full-batch ban with OR (accumulate), so repeated rows get the union.
        full = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        banned = full.index_put_((row_indices.long(),), banned, accumulate=True)
    return logits.masked_fill_(banned, float("-inf"))


def apply_token_bitmask_(
    logits: torch.Tensor, bitmask: torch.Tensor, row_indices: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply a structured-output bitmask to `logits` [R, V] in place and return it (see the module
    docstring for the layout); the Triton kernel on CUDA, the torch reference elsewhere."""
    _check(logits, bitmask, row_indices)
    if logits.is_cuda and (logits.shape[1] <= 1 or logits.stride(1) == 1) and logits.dtype in (
        torch.float32, torch.float16, torch.bfloat16
    ):
        from pagoda.kernels.token_bitmask import apply_token_bitmask_triton  # Triton: CUDA path only

        return apply_token_bitmask_triton(logits, bitmask, row_indices)
    return apply_token_bitmask_ref(logits, bitmask, row_indices)
