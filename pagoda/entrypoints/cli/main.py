"""The `pagoda` command: subcommands `demo`, `serve` and `bench`.

Invariant: every engine flag comes from EngineArgs.add_cli_args; no subcommand declares its own.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pagoda.entrypoints.cli import demo, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagoda", description="Pagoda: LLM inference and serving.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    subparsers = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(subparsers)
    serve.add_parser(subparsers)
    try:
        from pagoda.entrypoints.cli import bench
    except ImportError:
        bench = None
    if bench is not None:
        bench.add_bench_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(asctime)s.%(msecs)03d %(name)s: %(message)s", datefmt="%H:%M:%S")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
