"""Prefetch tensors into the GPU's L2 cache (Triton, Hopper and newer), without reading them into the SMs.

At decode batch 1 each layer's rotary/KV write and attention leave HBM idle for several microseconds
while they wait on latency; a following weight-bound product can have its weight brought into L2 in
that window (by a kernel on a side stream) and then read it from L2 instead of HBM.

Each lane of a program issues one `cp.async.bulk.prefetch.L2` for a CHUNK-byte run of the tensor's
bytes: the instruction only hints the memory system, so it holds no registers while the bytes move
and its program ends at once. A prefetch never changes any value, so the torch reference is to do
nothing; on devices without the instruction (CPU, Triton's interpreter, GPUs before sm_90)
`prefetch_l2` does nothing.

Invariants: the tensor must be contiguous; its start must be 16-byte aligned (torch's allocations
are); the last, partial 16 bytes are left out (the instruction moves multiples of 16).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

PREFETCH_CHUNK = 4096  # bytes per lane and instruction
PREFETCH_LANES = 128  # lanes (instructions) per program


@triton.jit
def prefetch_chunks(pid, num_bytes, CHUNK: tl.constexpr, LANES: tl.constexpr):
    """(byte offset, byte count) of each lane of program `pid`: CHUNK-byte runs tiling [0, num_bytes),
    counts rounded down to a multiple of 16 (0 past the end)."""
    start = (pid * LANES + tl.arange(0, LANES)).to(tl.int64) * CHUNK
    size = tl.minimum(num_bytes - start, CHUNK)
    return start, tl.maximum(size, 0).to(tl.int32) // 16 * 16


@triton.jit
def _prefetch_l2_kernel(base_ptr, num_bytes, CHUNK: tl.constexpr, LANES: tl.constexpr):
    start, size = prefetch_chunks(tl.program_id(0), num_bytes, CHUNK, LANES)
    addr = (base_ptr + start).to(tl.int64)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.u32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r",
        [addr, size],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@functools.lru_cache(maxsize=None)
def supported(device_index: int) -> bool:
    """Whether the bulk L2 prefetch exists on this CUDA device (compute capability 9.0 or newer)."""
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def prefetch_l2(tensor: torch.Tensor) -> None:
    """Ask the GPU to bring `tensor`'s bytes into L2 (asynchronous; a hint, never a change of any
    value). A no-op off CUDA and on GPUs older than Hopper."""
    if not tensor.is_cuda or tensor.numel() == 0 or not supported(tensor.device.index or 0):
        return
    if not tensor.is_contiguous() or tensor.data_ptr() % 16:
        raise ValueError("prefetch_l2 needs a contiguous, 16-byte aligned tensor")
    num_bytes = tensor.numel() * tensor.element_size()
    per_program = PREFETCH_CHUNK * PREFETCH_LANES
    byte_view = tensor.view(-1).view(torch.uint8) if tensor.dtype != torch.uint8 else tensor.view(-1)
    _prefetch_l2_kernel[(triton.cdiv(num_bytes, per_program),)](
        byte_view, num_bytes, CHUNK=PREFETCH_CHUNK, LANES=PREFETCH_LANES, num_warps=4,
    )
