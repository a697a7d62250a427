"""FP8 linear against bf16 on Llama-3-8B's projection shapes, on a GPU (not collected by pytest):

    python tests/kernels/bench_fp8_linear.py

Per shape and row count (1000, 8192), CUDA-event times of: bf16 F.linear; the torch per-token quantization
(fp8_utils.quantize_activation); torch._scaled_mm alone; both; the Triton quantization (kernels/fp8_quant.py);
it with scaled_mm. Then the sums over one layer's four products.
"""
import torch, torch.nn.functional as F
from pagoda.model_executor.layers.quantization import fp8_utils as fu
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
def t(fn, it=20):
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True); s.record()
    for _ in range(it): fn()
    e.record(); torch.cuda.synchronize(); return s.elapsed_time(e) / it * 1e3
for M in (1000, 8192):
    tot = {"bf16": 0, "quant": 0, "mm": 0, "fp8": 0, "kquant": 0, "fp8k": 0}
    for name, (N, K) in SHAPES.items():
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16); w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / 64
        qw, ws = fu.quantize(w, fu.per_token_scales(w)), fu.per_token_scales(w)
        qx, xs = fu.quantize_activation(x, None)
        r = {"bf16": t(lambda: F.linear(x, w)), "quant": t(lambda: fu.quantize_activation(x, None)),
             "mm": t(lambda: fu.fp8_linear_scaled_mm(qx, xs, qw, ws, None, torch.bfloat16))}
        r["fp8"] = t(lambda: fu.fp8_linear_scaled_mm(*fu.quantize_activation(x, None), qw, ws, None, torch.bfloat16))
        from pagoda.kernels.fp8_quant import fp8_quantize
        r["kquant"] = t(lambda: fp8_quantize(x))
        r["fp8k"] = t(lambda: fu.fp8_linear_scaled_mm(*fp8_quantize(x), qw, ws, None, torch.bfloat16))
        for k in tot: tot[k] += r[k]
        print(f"M={M} {name:8s} " + " ".join(f"{k} {v:7.1f} us" for k, v in r.items()))
    print(f"M={M} per layer: " + " ".join(f"{k} {v:7.1f} us" for k, v in tot.items()) + f"  -> bf16/fp8 torch-quant {tot['bf16']/tot['fp8']:.2f}, with the kernel {tot['bf16']/tot['fp8k']:.2f}")
