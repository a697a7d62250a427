"""GPU correctness check, one run: Pagoda's greedy outputs against transformers on the same GPU.

    python scripts/gpu_check.py [--out DIR] [--quick] [--only ARCH ...] [--sizes tiny 1B]

Checks (printed as a table at the end, and written to DIR/gpu_check.json):
1. Every supported architecture, tiny and ~1B-shaped (random weights), fp32: greedy tokens equal,
   at batch 8 and at batch 1 (where decode runs the GEMV kernel).
2. The same in bf16: the share of sequences equal up to the first near-tie (where transformers'
   top-2 logits differ by less than NEAR_TIE), since bf16 rounding legitimately flips those.
3. CUDA graphs on vs off (enforce_eager): identical tokens, at batch 8 and at batch 1 (the GEMV path).
4. Prefix caching and chunked prefill on vs off: identical tokens (fp32).
Exit status 1 if any exact check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pagoda import LLM, SamplingParams  # noqa: E402
from pagoda.tiny_models import make_checkpoint, train_tokenizer  # noqa: E402

NEAR_TIE = 0.05  # logit gap (in nats) under which a greedy choice is a coin flip in bf16
MAX_TOKENS = 32
ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "OPTForCausalLM", "GPT2LMHeadModel"]
ONE_B = {  # ~1B-parameter shapes (random weights) per family
    "LlamaForCausalLM": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192, max_position_embeddings=2048),
    "Qwen2ForCausalLM": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192, max_position_embeddings=2048),
    "Qwen3ForCausalLM": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8, intermediate_size=8192, head_dim=128, max_position_embeddings=2048),
    "OPTForCausalLM": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, ffn_dim=8192, word_embed_proj_dim=2048, max_position_embeddings=2048),
    "GPT2LMHeadModel": dict(n_embd=2048, n_layer=16, n_head=16, n_positions=2048),
}
PROMPTS = [
    "import os", "def main():\n    return", "class Foo(object):\n    def __init__(self, x):\n        self.x = x\n",
    "x = 1", "for i in range(10):\n    print(i)\n", "Hello, my name is", "a",
    "with open(path) as f:\n    data = f.read()\n    lines = data.splitlines()\n" * 3,
]


def hf_greedy(folder: str, prompts: list[list[int]], dtype) -> list[tuple[list[int], list[float]]]:
    """Greedy tokens and, per step, the gap between the top-2 logits (transformers, with its KV cache)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda().eval()
    results = []
    with torch.no_grad():
        for ids in prompts:
            out = model(torch.tensor([ids], device="cuda"), use_cache=True)
            tokens, gaps = [], []
            for _ in range(MAX_TOKENS):
                logits = out.logits[0, -1].float()
                top2 = torch.topk(logits, 2).values
                nxt = int(torch.argmax(logits))
                tokens.append(nxt)
                gaps.append(float(top2[0] - top2[1]))
                out = model(torch.tensor([[nxt]], device="cuda"), past_key_values=out.past_key_values, use_cache=True)
            results.append((tokens, gaps))
    del model
    torch.cuda.empty_cache()
    return results


def pagoda_greedy(folder: str, prompts: list[list[int]], dtype: str, **engine) -> list[list[int]]:
    # 16 sequences per step at most (11 prompts here): 5 CUDA graphs to capture instead of ~80
    engine.setdefault("max_num_seqs", 16)
    llm = LLM(folder, dtype=dtype, gpu_memory_utilization=0.5, **engine)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    del llm
    gc.collect()  # the engine holds reference cycles (runner <-> CUDA graphs); free its memory now
    torch.cuda.empty_cache()
    return [o.outputs[0].token_ids for o in outs]


def equal_up_to_near_tie(ours: list[int], ref: list[int], gaps: list[float]) -> bool:
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            return gaps[i] < NEAR_TIE
    return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--quick", action="store_true", help="tiny models only")
    parser.add_argument("--only", nargs="*", default=None, help="architectures to check (default: all)")
    parser.add_argument("--sizes", nargs="*", default=["tiny", "1B"], choices=["tiny", "1B"], help="model sizes to check")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="pagoda-gpu-check-")
    tok_dir = train_tokenizer(os.path.join(work, "tok"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    rows, failed = [], False

    def record(name, ok, detail, exact=True):
        nonlocal failed
        rows.append({"check": name, "ok": ok, "detail": detail})
        failed |= exact and not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    cases = [(arch, "tiny", {}) for arch in ARCHS]
    if not args.quick:
        cases += [(arch, "1B", shape) for arch, shape in ONE_B.items()]
    for arch, size, shape in cases:
        if (args.only and arch not in args.only) or size not in args.sizes:
            continue
        started = time.perf_counter()
        folder = make_checkpoint(arch, os.path.join(work, f"{arch}-{size}"), tok_dir, dtype="bfloat16" if size == "1B" else "float32", **shape)
        ref32 = hf_greedy(folder, prompts, torch.float32)
        ours32 = pagoda_greedy(folder, prompts, "float32")
        same = sum(o == r[0] for o, r in zip(ours32, ref32))
        record(f"{arch} {size} fp32 greedy == transformers", same == len(prompts), f"{same}/{len(prompts)} sequences equal")
        ours1 = pagoda_greedy(folder, prompts, "float32", max_num_seqs=1)  # decode at batch 1: the GEMV path
        same = sum(o == r[0] for o, r in zip(ours1, ref32))
        record(f"{arch} {size} fp32 batch 1 == transformers", same == len(prompts), f"{same}/{len(prompts)} sequences equal")
        ref16 = hf_greedy(folder, prompts, torch.bfloat16)
        ours16 = pagoda_greedy(folder, prompts, "bfloat16")
        share = sum(equal_up_to_near_tie(o, r[0], r[1]) for o, r in zip(ours16, ref16))
        exact = sum(o == r[0] for o, r in zip(ours16, ref16))
        record(f"{arch} {size} bf16 vs transformers", True,
               f"{share}/{len(prompts)} equal up to the first near-tie (<{NEAR_TIE}), {exact}/{len(prompts)} fully equal", exact=False)
        if arch == "LlamaForCausalLM":
            eager = pagoda_greedy(folder, prompts, "bfloat16", enforce_eager=True)
            record(f"{arch} {size} CUDA graphs on == off (bf16)", eager == ours16, f"{sum(a == b for a, b in zip(eager, ours16))}/{len(prompts)} equal")
            graph1 = pagoda_greedy(folder, prompts[:3], "bfloat16", max_num_seqs=1)
            eager1 = pagoda_greedy(folder, prompts[:3], "bfloat16", max_num_seqs=1, enforce_eager=True)
            record(f"{arch} {size} batch 1 CUDA graphs on == off (bf16)", graph1 == eager1, f"{sum(a == b for a, b in zip(graph1, eager1))}/3 equal")
            no_cache = pagoda_greedy(folder, prompts + prompts[:3], "float32", enable_prefix_caching=False)
            cached = pagoda_greedy(folder, prompts + prompts[:3], "float32", enable_prefix_caching=True)
            record(f"{arch} {size} prefix caching on == off (fp32)", cached == no_cache, "with 3 repeated prompts")
            chunked = pagoda_greedy(folder, prompts, "float32", max_num_batched_tokens=16)
            record(f"{arch} {size} chunked prefill (16-token budget) == whole (fp32)", chunked == ours32, "")
        print(f"   ({arch} {size}: {time.perf_counter() - started:.0f} s)", flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    print("\n| check | result | detail |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['check']} | {'pass' if row['ok'] else 'FAIL'} | {row['detail']} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
