"""GPU check + timing of the fused decode kernel against the unfused chain (not collected by pytest):

    python tests/kernels/bench_decode.py

For decode batches of Llama-3-8B's attention shape (32 heads, 8 KV heads, head 128, block 16) it
captures one CUDA graph of 32 layers' worth of (rotary_and_write_kv + paged_attention [+ split
reduce]) and one of 32 decode_attention launches, each layer with its own cache, and reports the time
per layer; outputs and caches of the two are compared.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_gemv import graph_seconds  # noqa: E402
from test_decode_attention import decode_batch, unfused  # noqa: E402

from pagoda.kernels.decode_attention import decode_attention  # noqa: E402
from pagoda.kernels.paged_attention import paged_attention  # noqa: E402
from pagoda.kernels.rotary import build_cos_sin_cache  # noqa: E402
from pagoda.kernels.rotary_kv import rotary_and_write_kv  # noqa: E402

LAYERS = 32
CASES = {  # name: (seq_lens, splits): the W4 and W2 decode shapes, and two in between
    "b1 ctx384 (W4)": ([384], 32),
    "b8 ctx3000": ([3000] * 8, 4),
    "b64 ctx1024": ([1024] * 64, 1),
    "b1000 ctx192 (W2)": ([192] * 1000, 1),
    # batch 1 at W4's mean context, by split count (CUDA graphs take 32, from max_model_len 8192)
    **{f"b1 ctx256 {s} splits": ([256], s) for s in (1, 2, 4, 8, 32)},
}


def per_layer_us(body, reps: int = 20) -> float:
    return graph_seconds(body, reps) * 1e6 / LAYERS


def main() -> None:
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), "| us per layer (graph of 32 layers)")
    cos_sin = build_cos_sin_cache(500000.0, 128, 8192, device="cuda")
    for name, (seq_lens, splits) in CASES.items():
        query, key, value, kv, md, positions = decode_batch(seq_lens, 32, 8, 128, 16, torch.bfloat16, "cuda")
        kv = torch.nan_to_num(kv, nan=0.0)
        caches = [kv.clone() for _ in range(LAYERS)]
        out_fused = decode_attention(query, key, value, caches[0], md, 128**-0.5, splits, positions=positions,
                                     cos_sin_cache=cos_sin)
        kv_ref = kv.clone()
        out_ref, _ = unfused(query, key, value, kv_ref, md, positions, cos_sin, True, 128**-0.5, splits)
        err = (out_fused.float() - out_ref.float()).abs().max().item()
        cache_equal = torch.equal(caches[0], kv_ref)

        def fused():
            for c in caches:
                decode_attention(query, key, value, c, md, 128**-0.5, splits, positions=positions,
                                 cos_sin_cache=cos_sin)

        q_work = query.clone()

        def chain():  # as the backend ran it: q rotated in place (repeatedly here; only the time matters)
            for c in caches:
                rotary_and_write_kv(positions, q_work, key, value, cos_sin, c, md.slot_mapping, True)
                paged_attention(q_work, c, md, 128**-0.5, num_splits=splits)

        t_chain, t_fused = per_layer_us(chain), per_layer_us(fused)
        kv_bytes = sum(seq_lens) * 8 * 128 * 2 * 2
        print(f"{name:20} splits {splits:2} | unfused {t_chain:8.2f} | fused {t_fused:8.2f} "
              f"({kv_bytes / t_fused / 1e3:6.0f} GB/s) | max diff {err:.1e}, cache equal {cache_equal}")


if __name__ == "__main__":
    main()
