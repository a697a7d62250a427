"""GPU check of the int4 kernels (AWQ / GPTQ / compressed-tensors W4A16 on Triton), one run:

    python scripts/gpu_check_int4.py [--out DIR] [--quick]

Checks (printed as a table at the end, and written to DIR/gpu_check_int4.json):
1. Llama-3-8B layer shapes (qkv 4096->6144, o 4096->4096, gate_up 4096->28672, down 14336->4096) as real
   AWQ / GPTQ / compressed-tensors layers with random checkpoint tensors on the GPU, in bf16 and fp16: after
   repacking (process_weights_after_loading), the layer's output on the kernel path against the
   checkpoint-layout torch reference computed before (compressed-tensors: dequantize_wna16, then matmul), at
   M = 1 and 4 (GEMV), 5 and 16 (GEMM) and 77 and 512 (dequant + cuBLAS, with the default
   tuning.INT4_DEQUANT_MIN_M); AWQ G=128, GPTQ sym v1 G=128, asym v2 desc_act G=128 and asym G=-1,
   compressed-tensors W4A16 sym G=128, asym G=32 and asym per channel. Pass: max |out - ref| / max |ref| under TOL.
2. The fused forms at M = 1: a pending RMSNorm + residual into qkv (output and new residual) and SiLU·mul
   on gate_up, against norm -> reference -> SiLU·mul (AWQ, GPTQ sym, compressed-tensors asym G=32).
3. A CUDA graph of the int4 GEMV and GEMM replays bitwise what eager calls compute (M = 64 is captured on
   the GEMM: the dequant path gives way under capture).
5. The dequant kernel (int4_dequant.py) on the four shapes, bf16 and fp16, G = 128 / 32 / the whole input,
   with and without zeros: bitwise equal to int4_layout.dequantize; the GEMV at M = 1..4 on down_proj
   (split-K) and gate_up (SiLU·mul) against the fp32 reference; the small-batch GEMM (int4_gemm_small_m.py) at
   M = 1, 3, 8, 16 on both, G = 128 and 32, against the fp32 reference, and its CUDA graph == eager (bitwise).
4. Tiny AWQ, GPTQ and compressed-tensors W4A16 Llama checkpoints (hidden 256): greedy tokens with the kernels vs the torch path
   (PAGODA_INT4_KERNELS=0) in fp16 (share equal; sums differ in order, so not an exact check), and CUDA
   graphs on == off at batch 1 with the kernels (exact).
Exit status 1 if any exact check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pagoda.kernels import tuning  # noqa: E402
from pagoda.kernels.rmsnorm import rmsnorm_ref  # noqa: E402
from pagoda.model_executor.layers.activation import SiluAndMul  # noqa: E402
from pagoda.model_executor.layers.linear import (  # noqa: E402
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from pagoda.model_executor.layers.pending_norm import PendingRMSNorm  # noqa: E402
from pagoda.model_executor.layers.quantization.awq import AwqConfig  # noqa: E402
from pagoda.model_executor.layers.quantization.compressed_tensors import CompressedTensorsConfig  # noqa: E402
from pagoda.model_executor.layers.quantization.gptq import GptqConfig  # noqa: E402
from pagoda.model_executor.layers.quantization.int4_linear import has_int4_layout  # noqa: E402
from pagoda.tiny_compressed_tensors import quantization_config  # noqa: E402

TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


def ct_w4a16(group_size: int | None, symmetric: bool) -> CompressedTensorsConfig:
    """llm-compressor's W4A16 config (group_size None: per output channel)."""
    return CompressedTensorsConfig.from_config(quantization_config("W4A16", group_size, symmetric, "channel",
                                                                   "dynamic", []))


ROWS = (1, 4, 5, 16, 77, 512)
SCHEMES = {
    "awq g128": lambda: AwqConfig(128),
    "gptq sym v1 g128": lambda: GptqConfig(4, 128, sym=True),
    "gptq asym v2 desc_act g128": lambda: GptqConfig(4, 128, desc_act=True, sym=False, checkpoint_format="gptq_v2"),
    "gptq asym g-1": lambda: GptqConfig(4, -1, sym=False),
    "ct w4a16 sym g128": lambda: ct_w4a16(128, True),
    "ct w4a16 asym g32": lambda: ct_w4a16(32, False),
    "ct w4a16 asym channel": lambda: ct_w4a16(None, False),
}
LAYERS = {  # name: builder of a Llama-3-8B layer (hidden 4096, 32 heads of 128, 8 KV heads, MLP 14336)
    "qkv_proj": lambda q: QKVParallelLinear(4096, 128, 32, 8, bias=False, quant_config=q, prefix="qkv_proj"),
    "o_proj": lambda q: RowParallelLinear(4096, 4096, bias=False, quant_config=q, prefix="o_proj"),
    "gate_up_proj": lambda q: MergedColumnParallelLinear(4096, [14336, 14336], bias=False, quant_config=q,
                                                         prefix="gate_up_proj"),
    "down_proj": lambda q: RowParallelLinear(14336, 4096, bias=False, quant_config=q, prefix="down_proj"),
}


def build(name: str, scheme: str, dtype) -> torch.nn.Module:
    """The layer with random checkpoint tensors (AutoAWQ / AutoGPTQ / compressed-tensors layouts: any int32 is a
    valid packed word), on the GPU, not yet repacked."""
    config = SCHEMES[scheme]()
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            layer = LAYERS[name](config)
    finally:
        torch.set_default_dtype(old)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for pname, param in layer.named_parameters():
        if pname == "qzeros" and getattr(config, "sym", False):
            param.data.fill_(0x77777777)  # v1 stores zero - 1 = 7 in every nibble
        elif pname == "g_idx":
            k = param.shape[0]
            param.data.copy_(torch.randperm(k, device="cuda", generator=gen) // config.group_size)
        elif param.dtype == torch.int32:
            param.data.copy_(torch.randint(-2**31, 2**31 - 1, param.shape, device="cuda", generator=gen,
                                           dtype=torch.int32))
        else:
            param.data.copy_(torch.rand(param.shape, device="cuda", generator=gen) * 2e-3 + 2e-4)
    return layer


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-9)).item()


def check_layers(record, quick: bool) -> None:
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16)
    for dtype in dtypes:
        for scheme in SCHEMES:
            for name in LAYERS:
                layer = build(name, scheme, dtype)
                k = layer.input_size if not isinstance(layer, RowParallelLinear) else layer.input_size_per_partition
                xs = [torch.randn(m, k, device="cuda", dtype=dtype) for m in ROWS]
                refs = [layer(x) for x in xs]  # the checkpoint-layout torch path
                layer.linear_method.process_weights_after_loading(layer)
                if not has_int4_layout(layer):
                    record(f"{name} {scheme} {dtype} repacked", False, "stayed on the torch path")
                    continue
                errs = [rel_err(layer(x), ref) for x, ref in zip(xs, refs)]
                record(f"{name} {scheme} {str(dtype)[6:]} kernel == reference", max(errs) < TOL[dtype],
                       " ".join(f"M={m}:{e:.1e}" for m, e in zip(ROWS, errs)))
                del layer, xs, refs
                torch.cuda.empty_cache()


def check_fused(record) -> None:
    dtype = torch.bfloat16
    act = SiluAndMul()
    for scheme in ("awq g128", "gptq sym v1 g128", "ct w4a16 asym g32"):
        x, res = (torch.randn(1, 4096, device="cuda", dtype=dtype) for _ in range(2))
        w = torch.rand(4096, device="cuda", dtype=dtype) + 0.5
        normed, new_res = rmsnorm_ref(x, w, 1e-5, res)
        qkv, gate_up = build("qkv_proj", scheme, dtype), build("gate_up_proj", scheme, dtype)
        ref_qkv, ref_mlp = qkv(normed), act(gate_up(normed))
        for layer in (qkv, gate_up):
            layer.linear_method.process_weights_after_loading(layer)
        pending = PendingRMSNorm(x, w, 1e-5, res, torch.empty_like(x))
        err = rel_err(qkv(pending), ref_qkv)
        record(f"qkv_proj {scheme} pending norm + residual fused", err < TOL[dtype]
               and torch.equal(pending.residual_out, new_res), f"{err:.1e}, residual exact")
        pending = PendingRMSNorm(x, w, 1e-5, None, None)
        err = rel_err(gate_up.forward_silu_and_mul(pending, act), act(gate_up(rmsnorm_ref(x, w, 1e-5))))
        err0 = rel_err(gate_up.forward_silu_and_mul(normed, act), ref_mlp)
        record(f"gate_up_proj {scheme} silu_and_mul fused", max(err, err0) < TOL[dtype], f"{err0:.1e}, with norm {err:.1e}")
        del qkv, gate_up
        torch.cuda.empty_cache()


def check_graphs(record) -> None:
    layer = build("gate_up_proj", "awq g128", torch.bfloat16)
    layer.linear_method.process_weights_after_loading(layer)
    for m in (1, 64):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        saved, tuning.INT4_DEQUANT_MIN_M = tuning.INT4_DEQUANT_MIN_M, 0  # eager on the path capture takes (GEMM)
        eager = layer.forward_silu_and_mul(x, SiluAndMul())
        tuning.INT4_DEQUANT_MIN_M = saved
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer.forward_silu_and_mul(x, SiluAndMul())
        graph.replay()
        torch.cuda.synchronize()
        record(f"CUDA graph == eager, gate_up M={m}", torch.equal(out, eager), "bitwise")


def check_dequant_and_gemv(record) -> None:
    from pagoda.kernels import int4_layout
    from pagoda.kernels.int4_dequant import int4_dequantize
    from pagoda.kernels.int4_gemm_small_m import int4_gemm_small_m
    from pagoda.kernels.int4_gemv import int4_gemv

    gen = torch.Generator(device="cuda").manual_seed(1)
    shapes = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096), "down_proj": (4096, 14336)}
    for name, (n, k) in shapes.items():
        for dtype in (torch.bfloat16, torch.float16):
            for group, with_zeros in ((128, True), (32, True), (k, False)):
                q = torch.randint(-2**31, 2**31 - 1, (n, k // 8), device="cuda", dtype=torch.int32, generator=gen)
                s = (torch.rand(n, k // group, device="cuda", generator=gen) * 2e-3 + 2e-4).to(dtype)
                z = torch.randint(0, 16, (n, k // group), device="cuda", dtype=torch.uint8, generator=gen) if with_zeros else None
                out = int4_dequantize(q, s, z, torch.empty(n, k, device="cuda", dtype=dtype))
                ref = int4_layout.dequantize(q, s, z, group, dtype)
                record(f"dequant {name} {str(dtype)[6:]} G={group} zeros={with_zeros} == torch", torch.equal(out, ref), "bitwise")
                if dtype == torch.bfloat16 and group == 128 and name in ("down_proj", "gate_up_proj"):
                    gated = name == "gate_up_proj"
                    for m in (1, 2, 3, 4):
                        x = torch.randn(m, k, device="cuda", dtype=dtype, generator=gen)
                        got = int4_gemv(x, q, s, z, silu_and_mul=gated)
                        want = int4_layout.int4_linear_ref(x, q, s, z, group, silu_and_mul=gated)
                        err = rel_err(got, want)
                        record(f"int4 gemv {name} M={m}{' silu_and_mul' if gated else ''}", err < TOL[dtype], f"{err:.1e}")
                if dtype == torch.bfloat16 and group in (128, 32) and name in ("down_proj", "gate_up_proj"):
                    for m in (1, 3, 8, 16):
                        x = torch.randn(m, k, device="cuda", dtype=dtype, generator=gen)
                        got = int4_gemm_small_m(x, q, s, z)
                        err = rel_err(got, int4_layout.int4_linear_ref(x, q, s, z, group))
                        record(f"int4 small-M gemm {name} G={group} M={m}", err < TOL[dtype], f"{err:.1e}")
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        captured = int4_gemm_small_m(x, q, s, z)
                    graph.replay()
                    torch.cuda.synchronize()
                    record(f"int4 small-M gemm {name} G={group} M=16: CUDA graph == eager",
                           torch.equal(captured, got), "bitwise")
                del q, s, z, out, ref
        torch.cuda.empty_cache()


def check_models(record, work: str) -> None:
    from pagoda import LLM, SamplingParams
    from pagoda.tiny_models import train_tokenizer
    from pagoda.tiny_compressed_tensors import make_compressed_tensors_checkpoint
    from pagoda.tiny_quantized_models import make_awq_checkpoint, make_gptq_checkpoint

    tok = train_tokenizer(os.path.join(work, "tok"))
    shape = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=2)
    folders = {"awq": make_awq_checkpoint("LlamaForCausalLM", os.path.join(work, "awq"), tok, group_size=128, **shape),
               "gptq": make_gptq_checkpoint("LlamaForCausalLM", os.path.join(work, "gptq"), tok, group_size=128,
                                            desc_act=True, sym=False, **shape),
               "ct w4a16": make_compressed_tensors_checkpoint("LlamaForCausalLM", os.path.join(work, "ct"), tok,
                                                              scheme="W4A16", group_size=128, symmetric=False,
                                                              **shape)}
    prompts = [{"prompt_token_ids": list(range(5 + i, 25 + 3 * i))} for i in range(8)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)

    def greedy(folder, kernels: bool, **engine):
        tuning.INT4_KERNELS = kernels
        llm = LLM(folder, dtype="float16", gpu_memory_utilization=0.3, max_num_seqs=engine.pop("seqs", 8), **engine)
        outs = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        return outs

    for name, folder in folders.items():
        on, off = greedy(folder, True), greedy(folder, False)
        record(f"tiny {name} llama: kernels vs torch path greedy", True,
               f"{sum(a == b for a, b in zip(on, off))}/{len(prompts)} equal", exact=False)
        graph1, eager1 = greedy(folder, True, seqs=1), greedy(folder, True, seqs=1, enforce_eager=True)
        record(f"tiny {name} llama batch 1: CUDA graphs on == off", graph1 == eager1,
               f"{sum(a == b for a, b in zip(graph1, eager1))}/{len(prompts)} equal")
    tuning.INT4_KERNELS = True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--quick", action="store_true", help="bf16 only")
    args = parser.parse_args()
    rows, failed = [], False

    def record(name, ok, detail, exact=True):
        nonlocal failed
        rows.append({"check": name, "ok": bool(ok), "detail": detail})
        failed |= exact and not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    with torch.no_grad():
        check_layers(record, args.quick)
        check_fused(record)
        check_graphs(record)
        check_dequant_and_gemv(record)
    check_models(record, tempfile.mkdtemp(prefix="pagoda-int4-check-"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check_int4.json"), "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    print("\n| check | result | detail |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['check']} | {'pass' if row['ok'] else 'FAIL'} | {row['detail']} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
