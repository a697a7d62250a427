"""Which Triton kernels compile inside the first offline run (after start-up)? Run on a GPU with an
empty Triton cache so every compile leaves a new entry:

    TRITON_CACHE_DIR=$(mktemp -d) python scripts/compile_check.py MODEL_DIR

Starts an LLM (dummy weights, bf16), notes the cache entries, runs W2's shape (1000 random prompts,
128 in / 128 out) and lists the kernels whose entries appeared during the run. The start-up warm-up
(pagoda/worker/warmup.py) should leave that list empty.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from pagoda import LLM, SamplingParams  # noqa: E402


def cache_entries(cache: str) -> dict[str, list[str]]:
    if not os.path.isdir(cache):
        return {}
    return {d: sorted(os.listdir(os.path.join(cache, d))) for d in os.listdir(cache)}


def main() -> None:
    cache = os.environ.get("TRITON_CACHE_DIR")
    if not cache:
        sys.exit("set TRITON_CACHE_DIR to an empty folder first")
    started = time.perf_counter()
    llm = LLM(sys.argv[1], load_format="dummy", dtype="bfloat16")
    before = cache_entries(cache)
    print(f"start-up {time.perf_counter() - started:.1f} s; {len(before)} cache entries", flush=True)
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(0, 128000, 128).tolist()} for _ in range(1000)]
    params = SamplingParams(temperature=1.0, max_tokens=128, ignore_eos=True)
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t
    print(f"W2 run: {elapsed:.2f} s, {sum(len(o.outputs[0].token_ids) for o in outs) / elapsed:.0f} out tok/s")
    new = {d: files for d, files in cache_entries(cache).items() if d not in before}
    names = sorted({f.split(".")[0] for files in new.values() for f in files
                    if f.endswith(".json") and not f.startswith("__grp")})
    print(f"{len(new)} kernels compiled during the run: {names}")


if __name__ == "__main__":
    main()
