"""The server flags of the chat endpoint's output parsers: reasoning (--reasoning-parser) and tool calls
(--enable-auto-tool-choice, --tool-call-parser), with their plugin files, as vLLM spells them.

Invariants:
- A plugin file runs at start-up, before its parser's name is checked; a missing or failing file stops the
  server naming the flag.
- A parser name that is not registered stops the server with the registered names; a flag that needs a
  partner flag (--enable-auto-tool-choice, --enable-reasoning) is an error without it, and one that has no
  effect is logged by name.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from pagoda.entrypoints.openai.reasoning import ReasoningParserManager, import_reasoning_parser
from pagoda.entrypoints.openai.tool_parsers import ToolParserManager

logger = logging.getLogger(__name__)
BOOL = argparse.BooleanOptionalAction


def add_reasoning_flags(server: Any) -> None:
    """vLLM's reasoning flags (issue 18): the chat endpoint splits reasoning from content."""
    names = ", ".join(ReasoningParserManager.names())
    server.add_argument("--reasoning-parser", default="", metavar="NAME",
                        help=f"Split chat responses into `reasoning` (also as `reasoning_content`) and `content` "
                             f"with this parser: {names}, or one a --reasoning-parser-plugin registers. Default: "
                             "none (chat responses carry neither field).")
    server.add_argument("--reasoning-parser-plugin", default="", metavar="FILE",
                        help="A Python file that registers reasoning parsers with "
                             "pagoda.entrypoints.openai.reasoning.ReasoningParserManager.register_module(NAME), "
                             "run at start-up; name one with --reasoning-parser.")
    server.add_argument("--enable-reasoning", action="store_true", default=False,
                        help="vLLM < 0.10's switch, needed there with --reasoning-parser; --reasoning-parser alone "
                             "turns reasoning on now, so it is accepted with it, logged as having no effect, and an "
                             "error without it.")


def add_tool_flags(server: Any) -> None:
    """vLLM's tool-calling flags: the chat endpoint parses tool calls for tool_choice "auto"."""
    names = ", ".join(ToolParserManager.list_tool_parsers())
    server.add_argument("--enable-auto-tool-choice", action=BOOL, default=False,
                        help="Parse tool calls out of chat responses when a request has `tools` and tool_choice "
                             "'auto' (their default); needs --tool-call-parser. Without it such requests get a 400.")
    server.add_argument("--tool-call-parser", default=None, metavar="NAME",
                        help=f"The tool-call format of the model: {names}, or one a --tool-parser-plugin "
                             "registers. Used with --enable-auto-tool-choice.")
    server.add_argument("--tool-parser-plugin", default="", metavar="FILE",
                        help="A Python file that registers tool-call parsers with "
                             "pagoda.entrypoints.openai.tool_parsers.ToolParserManager.register_module(NAME), "
                             "run at start-up; name one with --tool-call-parser.")


def validate_tools(args: argparse.Namespace) -> None:
    """Run --tool-parser-plugin, then check --tool-call-parser against the registered names."""
    if args.tool_parser_plugin:
        if not os.path.isfile(os.path.expanduser(args.tool_parser_plugin)):
            raise ValueError(f"--tool-parser-plugin {args.tool_parser_plugin!r} is not a file")
        try:
            ToolParserManager.import_tool_parser(args.tool_parser_plugin)
        except ImportError as exc:
            raise ValueError(f"--tool-parser-plugin: {exc}") from exc
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ValueError("--enable-auto-tool-choice requires --tool-call-parser NAME (as in vLLM); choose one of: "
                         + ", ".join(ToolParserManager.list_tool_parsers()))
    if args.tool_call_parser and args.tool_call_parser not in ToolParserManager.tool_parsers:
        raise ValueError(f"--tool-call-parser {args.tool_call_parser!r} is not a registered tool call parser; "
                         f"choose one of: {', '.join(ToolParserManager.list_tool_parsers())}"
                         + ("" if args.tool_parser_plugin else " (or register one with --tool-parser-plugin FILE)"))
    if args.tool_call_parser and not args.enable_auto_tool_choice:
        logger.warning("--tool-call-parser %s has no effect without --enable-auto-tool-choice", args.tool_call_parser)


def validate_reasoning(args: argparse.Namespace) -> None:
    """Run --reasoning-parser-plugin, then check --reasoning-parser against the registered names."""
    if args.reasoning_parser_plugin:
        import_reasoning_parser(args.reasoning_parser_plugin)
    if args.enable_reasoning:
        if not args.reasoning_parser:
            raise ValueError("--enable-reasoning needs --reasoning-parser NAME (as in vLLM < 0.10); "
                             "--reasoning-parser alone turns reasoning on, so --enable-reasoning can be dropped")
        logger.warning("--enable-reasoning has no effect: --reasoning-parser %s turns reasoning on (vLLM deprecated "
                       "the flag in 0.9 and dropped it in 0.10)", args.reasoning_parser)
    if args.reasoning_parser and args.reasoning_parser not in ReasoningParserManager.reasoning_parsers:
        raise ValueError(f"--reasoning-parser {args.reasoning_parser!r} is not a registered reasoning parser; "
                         f"choose one of: {', '.join(ReasoningParserManager.names())}"
                         + ("" if args.reasoning_parser_plugin else
                            " (or register one with --reasoning-parser-plugin FILE)"))
