"""A kernel for tests/kernels/test_compile_processes.py: a JITFunction built explicitly (so it is one whether or
not the test session runs Triton's interpreter) from a function with no other jitted dependency, importable by
name from this folder in a compile process."""

import triton.language as tl
from triton.runtime.jit import JITFunction


def _scale_copy(x_ptr, out_ptr, n, factor, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * factor, mask=mask)


scale_copy = JITFunction(_scale_copy)
