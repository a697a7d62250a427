"""`pagoda bench throughput|latency|serve`.

Wiring (in pagoda/entrypoints/cli/main.py):

    from pagoda.entrypoints.cli.bench import add_bench_parser
    add_bench_parser(subparsers)          # subparsers = parser.add_subparsers(dest="command")
    ...
    args = parser.parse_args()
    return args.func(args)                # `func` returns the exit status (0); `run_bench` the result dict

Invariants: each benchmark module declares its own flags (`add_cli_args`) and runs from `main(args)`;
this file only routes. The benchmark modules are imported lazily, so `pagoda --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import Any

BENCHMARKS = {
    "throughput": ("pagoda.benchmarks.throughput", "Offline throughput of a random workload (LLM.generate)."),
    "latency": ("pagoda.benchmarks.latency", "End-to-end latency of one batch."),
    "serve": ("pagoda.benchmarks.serve", "Load an OpenAI-compatible server and report TTFT/TPOT/ITL/E2E."),
}


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `bench` and its three sub-commands; sets `func` (→ exit status) on the parsed namespace."""
    bench = subparsers.add_parser("bench", help="Benchmark throughput, latency or a server.", description="Benchmark throughput, latency or a server.")
    kinds = bench.add_subparsers(dest="bench_type", metavar="{throughput,latency,serve}")
    kinds.required = True
    for name, (module, help_text) in BENCHMARKS.items():
        sub = kinds.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_cli_args(sub)
        sub.set_defaults(func=cli_entry)
    return bench


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark `args.bench_type` names; returns its result dict."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(BENCHMARKS[args.bench_type][0])
    return module.main(args)


def cli_entry(args: argparse.Namespace) -> int:
    run_bench(args)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Stand-alone entry (`python -m pagoda.entrypoints.cli.bench throughput ...`) until main.py routes here."""
    parser = argparse.ArgumentParser(prog="pagoda")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv if argv is not None else __import__("sys").argv[1:])])
    run_bench(args)


if __name__ == "__main__":
    main()
