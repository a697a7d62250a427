"""GPU timing of the batch-1 decode chain of Llama-3-8B layers (not collected by pytest):

    python tests/kernels/bench_layer_chain.py

One CUDA graph of 32 layers, each with its own weights and KV cache (nothing stays in L2), of the
kernels a batch-1 decode step runs per layer: RMSNorm + residual + QKV GEMV, decode attention
(rotary, KV write, split-KV attention at 256 cached positions), o_proj GEMV, RMSNorm + residual +
gate/up GEMV + SiLU-mul, down GEMV. Reported per layer for each attention split count of SPLITS
(32 is what a CUDA graph sized for max_model_len 8192 launches at batch 1).
Speed-of-light per layer: 436 MB of weights at the 4.47 TB/s the LM-head GEMV reads (97.6 us).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_gemv import graph_seconds  # noqa: E402
from test_decode_attention import decode_batch  # noqa: E402

from pagoda.kernels.decode_attention import decode_attention  # noqa: E402
from pagoda.kernels.gemv import gemv  # noqa: E402
from pagoda.kernels.rotary import build_cos_sin_cache  # noqa: E402

LAYERS, HIDDEN, INTER, HEADS, KV_HEADS, HEAD = 32, 4096, 14336, 32, 8, 128
QKV = (HEADS + 2 * KV_HEADS) * HEAD


def build(dtype=torch.bfloat16, dev="cuda"):
    def w(n, k):
        return torch.randn(n, k, device=dev, dtype=dtype) / k**0.5

    layers = [dict(qkv=w(QKV, HIDDEN), o=w(HIDDEN, HIDDEN), gate_up=w(2 * INTER, HIDDEN), down=w(HIDDEN, INTER),
                   norm1=1 + 0.1 * torch.randn(HIDDEN, device=dev, dtype=dtype),
                   norm2=1 + 0.1 * torch.randn(HIDDEN, device=dev, dtype=dtype)) for _ in range(LAYERS)]
    query, _, _, kv, md, positions = decode_batch([256], HEADS, KV_HEADS, HEAD, 16, dtype, dev)
    kv = torch.nan_to_num(kv, nan=0.0)
    for layer in layers:
        layer["kv"] = kv.clone()
    cos_sin = build_cos_sin_cache(500000.0, HEAD, 8192, device=dev)
    state = dict(hidden=torch.randn(1, HIDDEN, device=dev, dtype=dtype), residual=torch.randn(1, HIDDEN, device=dev,
                 dtype=dtype), res_a=torch.empty(1, HIDDEN, device=dev, dtype=dtype),
                 res_b=torch.empty(1, HIDDEN, device=dev, dtype=dtype))
    return layers, md, positions, cos_sin, state


def run_chain(layers, md, positions, cos_sin, state, splits):
    x, res = state["hidden"], state["residual"]
    for layer in layers:
        qkv = gemv(x, layer["qkv"], norm_weight=layer["norm1"], eps=1e-5,
                   residual=res, residual_out=state["res_a"]).view(1, HEADS + 2 * KV_HEADS, HEAD)
        attn = decode_attention(qkv[:, :HEADS], qkv[:, HEADS:HEADS + KV_HEADS], qkv[:, HEADS + KV_HEADS:],
                                layer["kv"], md, HEAD**-0.5, splits, positions=positions, cos_sin_cache=cos_sin)
        o = gemv(attn.view(1, HIDDEN), layer["o"])
        h = gemv(o, layer["gate_up"], silu_and_mul=True, norm_weight=layer["norm2"],
                 eps=1e-5, residual=state["res_a"], residual_out=state["res_b"])
        x = gemv(h, layer["down"])
        res = state["res_b"]
    return x


SPLITS = (32, 4)


def main() -> None:
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), "| us per layer, graph of 32 layers (SOL 97.6 us)")
    layers, md, positions, cos_sin, state = build()
    for splits in SPLITS:
        us = graph_seconds(lambda: run_chain(layers, md, positions, cos_sin, state, splits)) * 1e6 / LAYERS
        print(f"attention splits {splits:2d} | {us:7.2f} us/layer ({97.6 / us * 100:5.1f} % SOL)", flush=True)


if __name__ == "__main__":
    main()
