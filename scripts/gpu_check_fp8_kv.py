"""On a GPU: which bytes the FP8 KV-cache write kernel writes differently from its torch reference.

    python scripts/gpu_check_fp8_kv.py

The inputs of tests/kernels/test_fp8_kv_cache.py::test_write_kv_cache_fp8_matches_reference (both FP8 formats); for
the first differing elements, the input, its scaled value, and both written values with their bytes.
"""
import torch
from pagoda.kernels import tuning
from pagoda.kernels.kv_cache_write import write_kv_cache, write_kv_cache_ref
for cd in (torch.float8_e4m3fn, torch.float8_e5m2):
    gen = torch.Generator().manual_seed(0); scale = 0.05
    key = (torch.rand(6, 2, 64, generator=gen) * 2 - 1) * tuning.kv_format(cd).fp8_max * scale * 1.2
    value = torch.randn(6, 2, 64, generator=gen) * scale * 2.0 ** -7
    key[0, 0, :4] = torch.tensor([0.0, -0.0, 1e30, -1e30])
    key, value = key.cuda(), value.cuda()
    slots = torch.tensor([3, -1, 17, 8, 30, 0], dtype=torch.int64, device="cuda")
    cache = torch.full((2, 4, 8, 2, 64), float("nan"), device="cuda").to(cd); ref = cache.clone()
    write_kv_cache(cache, key, value, slots, k_scale=scale, v_scale=scale)
    write_kv_cache_ref(ref, key, value, slots, k_scale=scale, v_scale=scale)
    a, b = cache.view(torch.uint8).flatten(), ref.view(torch.uint8).flatten()
    bad = (a != b).nonzero().flatten()
    print(cd, "differ:", bad.numel(), "of", a.numel())
    src = torch.full((2, 32, 2, 64), float("nan"), device="cuda")
    for t, s in enumerate(slots.tolist()):
        if s >= 0: src[0, s], src[1, s] = key[t], value[t]
    flat = src.flatten()
    for i in bad[:8].tolist():
        x = flat[i].item()
        print(f"  x={x!r} x*20={x*20.0!r} kernel={cache.flatten()[i].float().item()!r} (0x{a[i].item():02x}) ref={ref.flatten()[i].float().item()!r} (0x{b[i].item():02x})")
