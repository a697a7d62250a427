"""Finding and reading checkpoint weight files, and dummy weights.

Invariants:
- "auto" prefers `*.safetensors` and falls back to `*.bin`; "safetensors" / "pt" accept only
  their kind. With a `model.safetensors.index.json`, only the files its weight_map names are read.
- Tensors are yielded one at a time, (checkpoint name, CPU tensor), so peak host memory is one
  file's mmap, never a copy of the whole model.
- Dummy weights are U(-1e-3, 1e-3), drawn from a generator seeded with `seed`: the same seed on
  the same device gives the same weights, and no weight file is opened. FP8 weights are drawn over
  the FP8 range with scales that make them dequantize to the same range.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

_FP8_MAX = 448.0  # the largest float8_e4m3fn value

SAFETENSORS_INDEX = "model.safetensors.index.json"
_PT_PATTERNS = ("pytorch_model*.bin", "*.bin")
_PT_SKIP = ("training_args.bin", "optimizer.bin", "scheduler.bin", "rng_state.bin")


def find_weight_files(folder: str, load_format: str = "auto") -> tuple[list[str], bool]:
    """(weight files to read, whether they are safetensors); ValueError when there are none."""
    if load_format not in ("auto", "safetensors", "pt"):
        raise ValueError(f"load_format={load_format!r} does not read weight files; use 'auto', 'safetensors' or 'pt'")
    looked_for: list[str] = []
    if load_format in ("auto", "safetensors"):
        looked_for.append("*.safetensors")
        files = _safetensors_files(folder)
        if files:
            return _readable(files, folder), True
    if load_format in ("auto", "pt"):
        looked_for.extend(_PT_PATTERNS)
        files = sorted(
            {
                f
                for pattern in _PT_PATTERNS
                for f in glob.glob(os.path.join(folder, pattern))
                if os.path.basename(f) not in _PT_SKIP
            }
        )
        if files:
            return _readable(files, folder), False
    raise ValueError(
        f"model={folder!r}: no weight files found (looked for {', '.join(looked_for)} with "
        f"load_format={load_format!r}); use load_format='dummy' for random weights"
    )


def _readable(files: list[str], folder: str) -> list[str]:
    """`files`, or a ValueError naming the first this process may not read (safetensors reports an unreadable file
    as "No such file or directory", which misleads where pods run as an arbitrary uid, as on OpenShift)."""
    for path in files:
        if not os.access(path, os.R_OK):
            raise ValueError(f"model={folder!r}: the weight file {os.path.basename(path)!r} is not readable by this "
                             f"process (uid {os.getuid()}, groups {sorted(os.getgroups())}): make the model's files "
                             "readable by it (e.g. world- or group-0-readable, as OpenShift runs pods as an arbitrary "
                             "uid in group 0)")
    return files


def _safetensors_files(folder: str) -> list[str]:
    index_path = os.path.join(folder, SAFETENSORS_INDEX)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted({os.path.join(folder, name) for name in weight_map.values()})
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"model={folder!r}: {SAFETENSORS_INDEX} names files that are missing: {missing[:3]}")
        return files
    return sorted(glob.glob(os.path.join(folder, "*.safetensors")))


def iterate_weights(files: list[str], use_safetensors: bool, device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every (name, tensor) of `files`, with a progress bar over files on a terminal.

    safetensors files are read straight onto `device` (the model's), without a CPU copy in between.
    """
    bar = tqdm(files, desc="Loading weights", unit="file", disable=len(files) < 2 or not sys.stderr.isatty())
    target = str(torch.device(device))
    if target == "cuda":
        target = f"cuda:{torch.cuda.current_device()}"
    for path in bar:
        if use_safetensors:
            from safetensors import safe_open

            with safe_open(path, framework="pt", device=target) as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # files in torch's legacy (pre-zip) format cannot be mmapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            yield from state.items()
            del state


@torch.no_grad()
def initialize_dummy_weights(model: nn.Module, seed: int = 0, low: float = -1e-3, high: float = 1e-3) -> None:
    """Fill every float parameter with small uniform values (finite activations, deterministic per seed) and
    every integer one (packed quantized weights) with zeros."""
    generators: dict[torch.device, torch.Generator] = {}
    for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        gen = generators.get(param.device)
        if gen is None:
            gen = generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        if getattr(param, "broadcast_scalar", False):  # FP8 weight scales: weights dequantize to U(low, high)
            param.fill_(max(abs(low), abs(high)) / _FP8_MAX)
        elif getattr(param, "per_piece", False):  # static input scales: activations up to ±1 unclipped
            param.fill_(1.0 / _FP8_MAX)
        elif param.is_floating_point():
            if param.dtype in (torch.float16, torch.bfloat16, torch.float32):
                param.uniform_(low, high, generator=gen)
            else:  # fp8: the full range, which its scales map to U(low, high)
                param.copy_(torch.empty(param.shape, device=param.device).uniform_(-_FP8_MAX, _FP8_MAX, generator=gen))
        else:  # packed integer weights, zero points, group indices: zeros are valid in every format
            param.zero_()
