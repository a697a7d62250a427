"""How long one full garbage-collector pass takes over the API server process's start-up heap (the engine started,
the app built, as `pagoda serve` has them when it starts listening), before and after freezing that heap
(gc_control.freeze_startup_heap, which the server calls). A full pass pauses the event loop: every streaming request
waits it out, which shows in the tail of time to first token.

    python scripts/api_server_gc_probe.py [MODEL_DIR]   # default: the demo model (built on first use)
"""

import asyncio
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pagoda.engine.async_llm import AsyncLLM  # noqa: E402
from pagoda.engine.gc_control import freeze_startup_heap  # noqa: E402
from pagoda.entrypoints.openai import api_server, app, cli_args  # noqa: E402
from pagoda.metrics.prometheus import PrometheusStatLogger  # noqa: E402


def full_pass_ms() -> float:
    started = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - started) * 1e3


async def main() -> None:
    if len(sys.argv) > 1:
        model = sys.argv[1]
    else:
        from pagoda.entrypoints.cli.demo import DEFAULT_DEMO_DIR
        from pagoda.tiny_models import ensure_demo_model

        model = ensure_demo_model(DEFAULT_DEMO_DIR)
    args = api_server.make_parser().parse_args(["--model", model])
    cli_args.validate_args(args)
    engine = AsyncLLM(cli_args.engine_args_from(args))
    try:
        names = cli_args.served_model_names(args)
        prometheus = PrometheusStatLogger(names[0], engine.model_config.max_model_len,
                                                     cache_config=engine.config.cache)
        app.build_app(args, engine, prometheus, None)
        full_pass_ms()
        before = min(full_pass_ms() for _ in range(3))
        tracked = len(gc.get_objects())
        frozen, _ = freeze_startup_heap()
        after = min(full_pass_ms() for _ in range(3))
        print(f"full pass over the start-up heap: {before:.1f} ms ({tracked} tracked objects); after freezing "
              f"{frozen} objects: {after:.2f} ms")
    finally:
        engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
