"""`pagoda serve MODEL [flags]`: the OpenAI-compatible server (same flags as
`python -m pagoda.entrypoints.openai.api_server --model MODEL`).

Invariant: the flags are declared once, in entrypoints/openai/cli_args.py; this file only routes.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from pagoda.entrypoints.openai.cli_args import PagodaArgumentParser, make_arg_parser

    # The sub-parser refuses abbreviations and suggests the closest flag for a misspelled one.
    default_class = subparsers._parser_class
    subparsers._parser_class = PagodaArgumentParser
    try:
        parser = subparsers.add_parser(
            "serve", help="Start the OpenAI-compatible server.", usage="pagoda serve [MODEL] [options]",
            description="Start the OpenAI-compatible server: pagoda serve MODEL [flags].")
    finally:
        subparsers._parser_class = default_class
    make_arg_parser(parser, model_positional=True)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pagoda.entrypoints.openai.api_server import run as run_server

    return run_server(args)
