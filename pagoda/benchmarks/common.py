"""Helpers shared by the benchmark commands: model metadata, speed-of-light of a run, JSON output.

Invariants: nothing here starts an engine; results written with `write_json` are plain JSON
(numbers, strings, lists, dicts) with the command line that produced them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from pagoda.benchmarks import speed_of_light as sol
from pagoda.benchmarks.hardware import gpu_name, resolve_ceilings

logger = logging.getLogger(__name__)


def model_path(args: argparse.Namespace) -> str:
    from pagoda import hf_utils

    if not getattr(args, "model", None):
        raise SystemExit("error: --model is required (a model folder)")
    return hf_utils.resolve_model_path(args.model, getattr(args, "revision", None), "model")


def model_shape(path: str, dtype: str | None, kv_cache_dtype: str | None = None, trust_remote_code: bool = False) -> sol.ModelShape:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if dtype in (None, "auto"):
        ckpt = str(getattr(config, "dtype", None) or "").replace("torch.", "")
        dtype = ckpt if ckpt in ("float16", "bfloat16") else "bfloat16"
    return sol.ModelShape.from_hf_config(config, dtype=dtype, kv_cache_dtype=kv_cache_dtype)


def run_sol(args: argparse.Namespace, path: str, work: list[sol.Workload], measured_s: float,
            shared_prefix: int = 0, stages_overlap: bool = True) -> dict[str, Any]:
    """Speed-of-light of `work` on this GPU (or the flags' ceilings); prints its line; a JSON dict.

    With `shared_prefix` > 0 the bound holds the prefix once and reads it once per step (cascade
    attention); the bound with the prefix read by every request is reported beside it. With
    --tensor-parallel-size / --pipeline-parallel-size above 1 the ceilings are one GPU's times the GPUs
    (sol.parallel_ceilings; `stages_overlap` False for a latency run, whose pipeline stages take turns)."""
    ceilings, note = resolve_ceilings(args)
    print(note)
    if ceilings is None:
        return {"note": note}
    tp = int(getattr(args, "tensor_parallel_size", 1) or 1)
    pp = int(getattr(args, "pipeline_parallel_size", 1) or 1)
    one_gpu = ceilings
    if tp * pp > 1:
        ceilings = sol.parallel_ceilings(one_gpu, tp, pp, stages_overlap)
        print(f"speed-of-light on {tp * pp} GPUs (tensor {tp} x pipeline {pp}): {ceilings.bandwidth / 1e9:.0f} GB/s, "
              f"{ceilings.flops / 1e12:.0f} TFLOP/s, one GPU's ceilings times {ceilings.bandwidth / one_gpu.bandwidth:.0f}"
              f"{'' if stages_overlap else ' (pipeline stages take turns)'}, ideal scaling with no communication")
    shape = model_shape(path, getattr(args, "dtype", None), getattr(args, "kv_cache_dtype", None), getattr(args, "trust_remote_code", False))
    if ceilings.memory_bytes is None:
        kv_tokens = sum(w.prompt_len + w.output_len for w in work)  # memory unknown: everything in flight
    else:
        kv_tokens = sol.kv_capacity_tokens(shape, ceilings.memory_bytes, getattr(args, "gpu_memory_utilization", 0.9))
    best = sol.speed_of_light(shape, work, ceilings, kv_tokens, shared_prefix=shared_prefix)
    print(sol.format_line(best.time_s, measured_s))
    extra: dict[str, Any] = {}
    if shared_prefix:
        paged = sol.speed_of_light(shape, work, ceilings, kv_tokens, shared_prefix=shared_prefix, read_prefix_once=False)
        print(f"Speed-of-light with the {shared_prefix}-token shared prefix read by every request (no cascade attention): "
              f"{paged.time_s:.4g} s; achieved {sol.achieved_percent(paged.time_s, measured_s):.2f} %")
        extra = {"shared_prefix_tokens": shared_prefix, "speed_of_light_prefix_per_request_s": paged.time_s}
    return {
        "speed_of_light_s": best.time_s,
        "achieved_percent": sol.achieved_percent(best.time_s, measured_s),
        "sol_steps": best.steps,
        "sol_token_budget": best.token_budget,
        "sol_bandwidth_bound_s": best.bandwidth_bound_s,
        "kv_capacity_tokens": kv_tokens,
        "params": shape.params(),
        "bandwidth_gbps": ceilings.bandwidth / 1e9,
        "tflops": ceilings.flops / 1e12,
        "memory_gb": None if ceilings.memory_bytes is None else ceilings.memory_bytes / 1e9,
        "sol_gpus": tp * pp,
        "sol_bandwidth_gbps_per_gpu": one_gpu.bandwidth / 1e9,
        "ceilings_source": ceilings.source,
        **extra,
    }


def run_header() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "gpu": gpu_name(), "command": " ".join(sys.argv)}


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"results written to {path}")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `LLM(...)` keywords from the parsed engine flags (only fields EngineArgs declares)."""
    import dataclasses

    from pagoda.engine_args import EngineArgs

    names = {f.name for f in dataclasses.fields(EngineArgs)}
    return {k: v for k, v in vars(args).items() if k in names}
