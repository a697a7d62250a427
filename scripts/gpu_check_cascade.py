"""On a GPU: cascade attention end to end, the same engine with and without it (attention/cascade.py).

    python scripts/gpu_check_cascade.py [--dtype float32|bfloat16] [--requests 96] [--prefix 300]

A tiny random Llama (tiny_models.make_checkpoint) serves `--requests` requests that share a `--prefix`-token
prompt (cached by a first request) plus 3 own tokens each, greedy, 16 new tokens, once with
PAGODA_CASCADE_ATTENTION=1 and once with 0, each in its own process (the switch is read when the runner is
built). Prints the cascade steps of each run and whether every request's tokens agree; exits 1 if they do not
(float32) or if the cascade run took no cascade step.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys
from pagoda import LLM, SamplingParams
folder, dtype, n, prefix_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prefix = [(7 * i + 3) % 200 + 10 for i in range(prefix_len)]
llm = LLM(folder, dtype=dtype, max_model_len=512, gpu_memory_utilization=0.3, max_num_seqs=max(n, 8))
llm.generate([{"prompt_token_ids": prefix}], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
prompts = [{"prompt_token_ids": prefix + [5 + r % 90, 9 + r % 70, 30 + r % 50]} for r in range(n)]
outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
runner = llm.llm_engine.core.executor.worker.runner
replays = runner.cuda_graphs.num_replays if runner.cuda_graphs is not None else {}
print("RESULT " + json.dumps({"tokens": [o.outputs[0].token_ids for o in outs], "cascade_steps": runner.num_cascade_steps,
                              "cascade_on": runner.cascade, "graph_replays": {str(k): v for k, v in replays.items()}}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--prefix", type=int, default=300)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from pagoda.tiny_models import make_checkpoint

    folder = make_checkpoint("LlamaForCausalLM", tempfile.mkdtemp(prefix="cascade-check-"))
    runs = {}
    for flag in ("1", "0"):
        env = {**os.environ, "PAGODA_CASCADE_ATTENTION": flag, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run([sys.executable, "-c", CHILD, folder, args.dtype, str(args.requests), str(args.prefix)],
                              capture_output=True, text=True, env=env, timeout=600)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"cascade={flag}: failed\n{proc.stderr[-3000:]}")
            return 1
        runs[flag] = json.loads(line[len("RESULT "):])
        print(f"cascade={flag}: on={runs[flag]['cascade_on']} cascade steps={runs[flag]['cascade_steps']} "
              f"graph replays={runs[flag]['graph_replays']}")
    same = sum(a == b for a, b in zip(runs["1"]["tokens"], runs["0"]["tokens"]))
    print(f"{args.dtype}: {same}/{args.requests} requests generate the same tokens with and without cascade")
    ok = runs["1"]["cascade_steps"] > 0 and (same == args.requests or args.dtype != "float32")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
