"""The standard benchmark suite (W1–W12) on a Llama-3-8B-shaped model with random weights.

    scripts/bench_suite.sh [W1 W2 ...] [--no-hf] [--no-pagoda] [--out DIR]

W1 offline 1000 × 1024/128 · W2 offline 1000 × 128/128 · W3 offline 500 × 1024/1024 ·
W4 latency batch 1, 128/256 · W5 serve 1024/128 at 1, 4, 16, inf req/s · W6 `pagoda serve`
start-up until /health answers 200. W1–W4 run pagoda and transformers side by side; W5–W6 need
the server and are skipped, with a message, while it is missing.

The workloads users send (issue 24), each with its speed-of-light (speed_of_light.py):
W7 W2's shape, sampling-heavy (temperature 0.8, top-p 0.95, top-k 50, repetition penalty 1.1,
   logprobs 5); bound = W2's (the model leaves sampling out); target within 10 % of W2's time.
W8 shared prefix: 1000 × (the same 1000-token system prompt + 128 own tokens)/128, prefix caching
   on; bound = the prefix computed and held once and read once per step (cascade attention); the
   JSON also has the bound with the prefix read by every request.
W9 long context: 32 × 16384/128 on the Llama-3.1-8B shape (128k positions), --max-model-len 16512.
W10 parallel sampling: 250 × 128/128 with n = 4 (the same 1000 sequences as W2, 250 prompts).
W11 / W12 batch-1 time to first token of a 128- / 2048-token prompt (latency, output 1 token);
   bound = one prefill step; target ≤ 8 ms for W11.
Targets for W8–W12: ≥ 75 % of the speed-of-light. transformers runs beside W7 (sampling with the same
parameters; logprobs as a top-k over each step's log-softmax), W9, W11 and W12; W8 (no prefix cache)
and W10 (n copies of the prompt re-prefilled) get a row saying they were skipped.

`all` (no names) is W1–W12. That needs several 10-minute GPU commands, as W1–W6 alone did; run
subsets per command, e.g. `W7 W8`, `W9`, `W10 W11 W12`.

Several GPUs (issue 22): `--tensor-parallel-size N` / `--pipeline-parallel-size M` go to every pagoda run and to
the server; the rows name them (`W2 tp=2`), the bound is on the GPUs' summed ceilings (speed_of_light.py's
`parallel_ceilings`), and transformers, which runs on one GPU, gets a row saying it was skipped. `--shape
llama3-70b` builds Llama-3-70B's shape instead of the 8B's (141 GB in bf16: it needs several GPUs).

Invariants:
- Every benchmark runs in its own process (the GPU is free between runs); a failed or timed-out run
  still gives a row saying so. The GPU ceilings are measured once, in a subprocess, and passed on.
- Each row is appended to docs/benchmarks.md and to OUT/benchmark_rows.md (the file that comes back
  from a GPU machine), and printed; raw JSON results and logs go to OUT.
- The command lines are built by pure methods (`offline_runs`, `latency_runs`): tests check them
  without a GPU.
- W5's server runs with VLLM_GC_DEBUG=1, and each rate's row ends with what paused the server during that rate's
  run (`server_stalls`: runtime Triton compiles, GC passes of 10 ms or more per process).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

BENCH = [sys.executable, "-m", "pagoda.entrypoints.cli.bench"]
SERVER = [sys.executable, "-m", "pagoda.entrypoints.openai.api_server"]
# `pagoda bench throughput` workloads: (num_prompts, input_len, output_len); the input excludes a shared prefix
OFFLINE = {"W1": (1000, 1024, 128), "W2": (1000, 128, 128), "W3": (500, 1024, 1024),
           "W7": (1000, 128, 128), "W8": (1000, 128, 128), "W9": (32, 16384, 128), "W10": (250, 128, 128)}
SAMPLING_HEAVY = ["--temperature", "0.8", "--top-p", "0.95", "--top-k", "50", "--repetition-penalty", "1.1", "--logprobs", "5"]
SHARED_PREFIX_LEN = 1000  # a system prompt; not a multiple of the 16-token KV block, as real ones are not
LONG_CONTEXT_LEN = 16384 + 128
# What a workload asks beyond its shape (both backends), and engine flags (pagoda only)
OFFLINE_FLAGS = {"W7": SAMPLING_HEAVY, "W8": ["--prefix-len", str(SHARED_PREFIX_LEN)], "W10": ["--n", "4"]}
PAGODA_FLAGS = {"W8": ["--enable-prefix-caching"], "W9": ["--max-model-len", str(LONG_CONTEXT_LEN)]}
# `pagoda bench latency` at batch 1: (input_len, output_len, warm-up iterations, timed iterations)
LATENCY = {"W4": (128, 256, 2, 5), "W11": (128, 1, 5, 30), "W12": (2048, 1, 5, 30)}
TTFT = ("W11", "W12")  # latency runs of one output token: the row reports the time to first token
LONG_CONTEXT = ("W9",)  # on the Llama-3.1-8B shape: the 8B's 8192 positions are too few
# transformers cannot run these like for like: a row says so instead of a run
HF_SKIP = {
    "W8": f"transformers `generate` has no prefix cache: it would prefill the shared {SHARED_PREFIX_LEN}-token prefix for every request",
    "W10": "transformers has no n > 1 over one prefill (num_return_sequences copies the prompt); W2's row is the same 1000 sequences",
}
# transformers `generate` at its best static batch size per workload on the H200 (issue 6/7 anchors:
# 7,160 out tok/s at 512 for W2, 2,311 at 256 for W1); W3's 2k-token sequences fit at 256 too.
# W7 takes W2's; W9's 8 (four batches of 16k-token prompts) is a safe guess for memory, not tuned.
HF_BATCH = {"W1": 256, "W2": 512, "W3": 256, "W7": 512, "W9": 8}
SERVE_RATES = (1.0, 4.0, 16.0, float("inf"))
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "W11", "W12")
TABLE_HEADER = (
    "| date | GPU | commit | workload | backend | command | result | speed-of-light | achieved |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)


def measure_ceilings_subprocess() -> list[str]:
    """SOL flags with the GPU's measured ceilings (nothing on a machine without CUDA)."""
    code = (
        "import json; from pagoda.benchmarks.hardware import measure_ceilings; c = measure_ceilings(); "
        "print(json.dumps(None if c is None else [c.bandwidth, c.flops, c.memory_bytes]))"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
        c = json.loads(out.strip().splitlines()[-1])
    except Exception as exc:
        print(f"could not measure the GPU: {exc}")
        return []
    if c is None:
        print("no GPU: the speed-of-light columns stay empty")
        return []
    print(f"ceilings: {c[0] / 1e9:.0f} GB/s copy, {c[1] / 1e12:.0f} TFLOP/s bf16, {c[2] / 1e9:.0f} GB")
    return ["--sol-bandwidth-gbps", f"{c[0] / 1e9:.1f}", "--sol-tflops", f"{c[1] / 1e12:.1f}", "--sol-memory-gb", f"{c[2] / 1e9:.1f}"]


def commit() -> str:
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # the GPU machine gets a copy of the tree without .git
        return "unknown (set BENCH_COMMIT)"


def gpu() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception:
        return "cpu"


@dataclass(frozen=True)
class Run:
    """One benchmark process of a workload: its command and JSON file, or why it is skipped."""

    workload: str
    backend: str
    cmd: list[str]
    json_path: str
    skip: str = ""


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        # outside OUT: only a few files come back from a GPU machine, and the model is rebuilt in a second
        models = os.path.join(os.environ.get("TMPDIR", "/tmp"), "pagoda-bench-models")
        self.model = args.model or os.path.join(models, f"{args.shape}-shape")
        self.long_model = args.model or os.path.join(models, "llama3.1-8b-shape")  # W9
        self.gpu, self.commit = gpu(), commit()
        self.sol_flags: list[str] = []
        tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
        self.parallel = ([] if tp == 1 else ["--tensor-parallel-size", str(tp)]) + \
            ([] if pp == 1 else ["--pipeline-parallel-size", str(pp)])
        self.parallel_label = " ".join(f"{name}={size}" for name, size in (("tp", tp), ("pp", pp)) if size > 1)

    def label(self, workload: str) -> str:
        """The workload's name in a row: with the parallel sizes when they are above 1 (`W2 tp=2`)."""
        return f"{workload} {self.parallel_label}" if self.parallel_label else workload

    # ---- rows ------------------------------------------------------------------------------
    def add_row(self, workload: str, backend: str, cmd: list[str], result: str, res: dict[str, Any] | None) -> None:
        sol = pct = ""
        if res and res.get("speed_of_light_s") is not None:
            t = res["speed_of_light_s"]
            sol = f"{t * 1e3:.2f} ms" if t < 0.1 else f"{t:.3f} s"
            pct = f"{res['achieved_percent']:.1f} %"
        shown = " ".join(shlex.quote(c) for c in cmd).replace(" ".join(BENCH), "pagoda bench").replace(" ".join(SERVER), "pagoda serve")
        if self.long_model != self.model:
            shown = shown.replace(self.long_model, "$LONG_MODEL")
        shown = shown.replace(self.model, "$MODEL").replace(self.out, "$OUT")
        shown = f"`{shown}`" if shown else ""
        row = (f"| {time.strftime('%Y-%m-%d %H:%M')} | {self.gpu} | {self.commit} | {self.label(workload)} | {backend} | "
               f"{shown} | {result} | {sol} | {pct} |\n")
        print(row, end="", flush=True)
        for path in (os.path.join(self.out, "benchmark_rows.md"), self.args.table):
            if not path:
                continue
            new = not os.path.exists(path)
            with open(path, "a") as f:
                if new:
                    f.write("# Benchmarks\n\nRows written by `scripts/bench_suite.sh` (pagoda/benchmarks/suite.py).\n\n" + TABLE_HEADER)
                f.write(row)

    def run_json(self, workload: str, backend: str, cmd: list[str], json_path: str, describe) -> dict[str, Any] | None:
        log = json_path.replace(".json", ".log")
        print(f"\n=== {workload} {backend}: {' '.join(cmd)}", flush=True)
        try:
            with open(log, "w") as f:
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=self.args.timeout)
            ok = proc.returncode == 0 and os.path.exists(json_path)
        except subprocess.TimeoutExpired:
            self.add_row(workload, backend, cmd, f"timed out after {self.args.timeout} s", None)
            return None
        print(_tail(log), flush=True)
        if not ok:
            self.add_row(workload, backend, cmd, f"failed (exit {proc.returncode}): {_last_line(log)}", None)
            return None
        res = json.load(open(json_path))
        self.add_row(workload, backend, cmd, describe(res), res)
        return res

    # ---- workloads ---------------------------------------------------------------------------
    def backends(self, workload: str = "") -> list[tuple[str, list[str]]]:
        out = []
        if not self.args.no_pagoda:
            out.append(("pagoda", ["--load-format", "dummy", "--dtype", "bfloat16", *self.parallel]))
        if not self.args.no_hf:
            batch = self.args.hf_max_batch_size or HF_BATCH.get(workload, 64)
            out.append(("transformers", ["--backend", "hf", "--dtype", "bfloat16", "--hf-max-batch-size", str(batch)]))
        return out

    def hf_skip(self, w: str) -> str:
        """Why transformers does not run workload `w` here ('' when it does)."""
        if self.parallel:
            return f"transformers runs on one GPU: no counterpart of pagoda's {self.parallel_label}"
        return HF_SKIP.get(w, "")

    def offline_runs(self, w: str) -> list[Run]:
        """The `pagoda bench throughput` processes of offline workload `w`, one per backend."""
        n, i, o = OFFLINE[w]
        model = self.long_model if w in LONG_CONTEXT else self.model
        runs = []
        for name, extra in self.backends(w):
            path = os.path.join(self.out, f"{w}-{name}.json")
            if name == "transformers" and self.hf_skip(w):
                runs.append(Run(w, name, [], path, self.hf_skip(w)))
                continue
            engine = PAGODA_FLAGS.get(w, []) if name == "pagoda" else []
            cmd = [*BENCH, "throughput", "--model", model, "--dataset-name", "random", "--num-prompts", str(n),
                   "--input-len", str(i), "--output-len", str(o), *OFFLINE_FLAGS.get(w, []), *extra, *engine,
                   *self.sol_flags, "--output-json", path]
            runs.append(Run(w, name, cmd, path))
        return runs

    def latency_runs(self, w: str) -> list[Run]:
        """The `pagoda bench latency` processes (batch 1) of latency workload `w`, one per backend."""
        i, o, warmup, iters = LATENCY[w]
        runs = []
        for name, extra in self.backends(w):
            extra = extra[: extra.index("--hf-max-batch-size")] if "--hf-max-batch-size" in extra else extra
            path = os.path.join(self.out, f"{w}-{name}.json")
            if name == "transformers" and self.hf_skip(w):
                runs.append(Run(w, name, [], path, self.hf_skip(w)))
                continue
            cmd = [*BENCH, "latency", "--model", self.model, "--batch-size", "1", "--input-len", str(i), "--output-len", str(o),
                   "--num-iters-warmup", str(warmup), "--num-iters", str(iters), *extra, *self.sol_flags, "--output-json", path]
            runs.append(Run(w, name, cmd, path))
        return runs

    def execute(self, runs: list[Run], describe) -> None:
        for r in runs:
            if r.skip:
                self.add_row(r.workload, r.backend, [], f"skipped: {r.skip}", None)
            else:
                self.run_json(r.workload, r.backend, r.cmd, r.json_path, describe)

    def offline(self, w: str) -> None:
        self.execute(self.offline_runs(w), lambda r: (
            f"{r['requests_per_second']:.2f} req/s, {r['tokens_per_second']:.0f} tok/s, {r['output_tokens_per_second']:.0f} out tok/s"))

    def latency(self, w: str = "W4") -> None:
        if w in TTFT:
            self.execute(self.latency_runs(w), lambda r: (
                f"TTFT avg {r['avg_latency'] * 1e3:.2f} ms (p50 {r['percentiles']['50'] * 1e3:.2f}, "
                f"p99 {r['percentiles']['99'] * 1e3:.2f})"))
            return
        self.execute(self.latency_runs(w), lambda r: (
            f"avg {r['avg_latency']:.3f} s (p50 {r['percentiles']['50']:.3f}, p99 {r['percentiles']['99']:.3f}); "
            f"{r['avg_time_per_output_token'] * 1e3:.2f} ms/token"))

    def server_available(self) -> bool:
        missing = [m for m in ("pagoda.entrypoints.openai.api_server", "fastapi", "uvicorn") if not _importable(m)]
        if missing:
            print(f"\n*** skipping W5/W6: `pagoda serve` is unavailable here (cannot import {', '.join(missing)}). "
                  "On the GPU machine bring the server wheels (../shared/gpu/wheels.sh) and carry .whl.")
            return False
        return True

    def start_server(self, log_path: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int, float]:
        """Launch `pagoda serve` on a free port (with `env` added to this process's environment); returns
        (process, port, seconds until /health was 200)."""
        port = _free_port()
        cmd = [*self.server_cmd(), "--host", "127.0.0.1", "--port", str(port)]
        log = open(log_path, "w")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        deadline = start + self.args.timeout
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}: {_last_line(log_path)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        return proc, port, time.perf_counter() - start
            except Exception:
                time.sleep(0.1)
        stop_server(proc)
        raise RuntimeError(f"/health did not answer 200 within {self.args.timeout} s")

    def server_cmd(self) -> list[str]:
        return [*SERVER, "--model", self.model, "--load-format", "dummy", "--dtype", "bfloat16", *self.parallel]

    def startup(self, w: str = "W6") -> None:
        cmd = self.server_cmd()
        try:
            proc, _, seconds = self.start_server(os.path.join(self.out, f"{w}-server.log"))
        except RuntimeError as exc:
            self.add_row(w, "pagoda", cmd, f"failed: {exc}", None)
            return
        stop_server(proc)
        self.add_row(w, "pagoda", cmd, f"{seconds:.1f} s until /health 200", None)

    def serve_prompts(self, rate: float) -> int:
        """W5's requests at `rate`: --serve-prompts, else about a minute's worth (1000 at inf)."""
        if self.args.serve_prompts:
            return self.args.serve_prompts
        return 1000 if rate == float("inf") else int(min(1000, max(50, rate * 60)))

    def serve(self, w: str = "W5") -> None:
        log_path = os.path.join(self.out, f"{w}-server.log")
        try:  # the server logs every GC pass, so each row can say what paused it (server_stalls)
            proc, port, seconds = self.start_server(log_path, env={"VLLM_GC_DEBUG": "1"})
        except RuntimeError as exc:
            self.add_row(w, "pagoda", SERVER, f"server failed: {exc}", None)
            return
        print(f"server up in {seconds:.1f} s")
        try:
            for rate in self.args.serve_rates:
                n = self.serve_prompts(rate)
                name = f"{w}-rate{rate:g}.json"
                cmd = [*BENCH, "serve", "--base-url", f"http://127.0.0.1:{port}", "--tokenizer", self.model, "--num-prompts", str(n),
                       "--input-len", "1024", "--output-len", "128", "--request-rate", str(rate), "--ignore-eos",
                       "--metric-percentiles", "50,99", "--save-result", "--result-dir", self.out, "--result-filename", name,
                       "--disable-tqdm"]
                offset = os.path.getsize(log_path)
                self.run_json(f"{w} rate={rate:g}", "pagoda", cmd, os.path.join(self.out, name),
                              lambda r: f"{_describe_serve(r)}; {server_stalls(_read_from(log_path, offset))}")
        finally:
            stop_server(proc)

    def run(self, workloads: list[str]) -> None:
        from pagoda.benchmarks.make_model import make_model

        if not self.args.model:
            make_model(self.model, self.args.shape)
            if any(w in LONG_CONTEXT for w in workloads):
                make_model(self.long_model, "llama3.1-8b")
        self.sol_flags = measure_ceilings_subprocess()
        server_ok = None
        for w in workloads:
            if w in OFFLINE:
                self.offline(w)
            elif w in LATENCY:
                self.latency(w)
            else:
                server_ok = self.server_available() if server_ok is None else server_ok
                if server_ok:
                    self.serve() if w == "W5" else self.startup()


def _describe_serve(r: dict[str, Any]) -> str:
    m = r["points"][0]["metrics"]
    return (f"{m['completed']} ok/{m['failed']} failed, {m['request_throughput']:.2f} req/s, {m['output_throughput']:.0f} out tok/s; "
            f"TTFT p50/p99 {m['median_ttft_ms']:.0f}/{m['p99_ttft_ms']:.0f} ms; TPOT p50/p99 {m['median_tpot_ms']:.1f}/{m['p99_tpot_ms']:.1f} ms")


STALL_MS = 10.0  # GC passes at least this long count as stalls in a W5 row
_GC_LINE = re.compile(r"(API server|engine core): GC generation (\d) pass took ([\d.]+) ms")


def server_stalls(log_text: str) -> str:
    """What paused the server during a run, from its log (VLLM_GC_DEBUG=1 and the compile watch): Triton compiles
    after start-up, and GC passes of at least STALL_MS per process (count and longest)."""
    compiles = log_text.count("Triton compiled a kernel after start-up")
    pauses: dict[str, list[float]] = {"API server": [], "engine core": []}
    for process, _, ms in _GC_LINE.findall(log_text):
        if float(ms) >= STALL_MS:
            pauses[process].append(float(ms))
    parts = [f"{p} {len(v)}" + (f" (longest {max(v):.0f} ms)" if v else "") for p, v in pauses.items()]
    return f"stalls: {compiles} runtime compiles, GC passes >= {STALL_MS:.0f} ms: " + ", ".join(parts)


def _read_from(path: str, offset: int) -> str:
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its engine process
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, n: int = 25) -> str:
    lines = [l for l in open(path, errors="replace").read().replace("\r", "\n").splitlines() if l.strip() and "it/s]" not in l and "s/it]" not in l]
    return "\n".join(lines[-n:])


def _last_line(path: str) -> str:
    tail = _tail(path, 1)
    return tail.replace("|", "/")[:200]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Pagoda's standard benchmark suite (W1-W12).")
    parser.add_argument("workloads", nargs="*", help="Subset to run, e.g. W2 W4 (default: all, W1-W12).")
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench_out", help="Folder for results, logs and benchmark_rows.md.")
    parser.add_argument("--table", default="docs/benchmarks.md", help="Markdown file the rows are appended to ('' for none).")
    parser.add_argument("--model", default=None, help="Use this model folder instead of building the Llama-3-8B-shaped one "
                        "(and, for W9, the Llama-3.1-8B-shaped one: it needs 16512 positions).")
    parser.add_argument("--shape", default="llama3-8b", choices=["llama3-8b", "llama3-70b"],
                        help="The model shape the suite builds when --model is not given (W9 always takes Llama-3.1-8B's).")
    parser.add_argument("--tensor-parallel-size", type=_positive, default=1, help="Pagoda's tensor-parallel size in every run.")
    parser.add_argument("--pipeline-parallel-size", type=_positive, default=1, help="Pagoda's pipeline-parallel size in every run.")
    parser.add_argument("--no-hf", action="store_true", help="Skip the transformers runs.")
    parser.add_argument("--no-pagoda", action="store_true", help="Skip the pagoda runs.")
    parser.add_argument("--hf-max-batch-size", type=int, default=None,
                        help="transformers' static batch size (default: its best per workload, see HF_BATCH).")
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds one run (or a server start) may take.")
    parser.add_argument("--serve-prompts", type=_positive, default=None,
                        help="W5's requests per rate (default: about a minute's worth, 1000 at inf).")
    parser.add_argument("--serve-rates", type=_rates, default=SERVE_RATES,
                        help="W5's request rates, comma-separated (default 1,4,16,inf).")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a parallel size is an integer >= 1, got {text!r}")
    return value


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--serve-rates takes numbers or inf separated by commas, got {text!r}")
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"--serve-rates must be positive, got {text!r}")
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = make_parser()
    args = parser.parse_args(argv)
    names = parse_workloads(parser, args.workloads)
    Suite(args).run(names)


def parse_workloads(parser: argparse.ArgumentParser, given: list[str]) -> list[str]:
    """The workload names asked for, upper-cased, in order ("all" or none: every one)."""
    names = [w.upper() for w in given]
    if not names or names == ["ALL"]:
        return list(WORKLOADS)
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)} (or all)")
    return names


if __name__ == "__main__":
    main()
