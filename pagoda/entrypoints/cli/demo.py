"""`pagoda demo`: generate with the built-in demo model (built locally on first use).

The demo model has random weights — its text is gibberish, and the log says so; it exists so that
a fresh machine can run the whole engine without downloading anything.
"""

from __future__ import annotations

import argparse
import logging
import os

from pagoda.engine_args import EngineArgs

logger = logging.getLogger(__name__)

DEFAULT_DEMO_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pagoda", "demo-model")
DEMO_PROMPTS = ["Hello, my name is", "The capital of France is", "def fibonacci(n):", "import os\nimport sys\n"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="Generate text with the built-in demo model (random weights).")
    parser.add_argument("--demo-dir", default=DEFAULT_DEMO_DIR, help="Where the demo model folder is built.")
    parser.add_argument("--prompt", action="append", help="A prompt (repeatable); a few defaults otherwise.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    EngineArgs.add_cli_args(parser, skip=("model",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pagoda import LLM, SamplingParams
    from pagoda.tiny_models import ensure_demo_model

    folder = ensure_demo_model(args.demo_dir)
    logger.warning("The demo model in %s has RANDOM weights: its output is not meaningful text.", folder)
    engine_kwargs = vars(EngineArgs.from_cli_args(argparse.Namespace(**{**vars(args), "model": folder})))
    model = engine_kwargs.pop("model")
    llm = LLM(model, **engine_kwargs)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    outputs = llm.generate(args.prompt or DEMO_PROMPTS, params)
    for out in outputs:
        print(f"Prompt: {out.prompt!r}\nGenerated: {out.outputs[0].text!r}\n")
    return 0
