"""When `pagoda serve` spawns its engine core, and how long it takes to listen once the core is ready.

    python scripts/serve_start_probe.py [MODEL_DIR] [--tree DIR] [--port N] [-- extra serve flags]

Starts `pagoda serve MODEL_DIR` (default: the demo model) from the source tree DIR (default: this checkout; give
another tree, e.g. a `git archive` of an older commit, to compare), reads its log until "API server ready", stops
it, and prints: seconds from launch to the core process's spawn (from the core's "start-up" log line, which says
how long the core took from spawn to its entry, its imports and its config), seconds from launch to "engine core
ready" and to "API server ready", and the gap between those two (what the frontend still did after the core was
ready). Host-side only: on a CPU machine these say nothing about a GPU's start-up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STAMP = r"(\d\d):(\d\d):(\d\d\.\d+)"


def _seconds(match: re.Match, day: float) -> float:
    return day + int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--tree", default=HERE, help="source tree to run (PYTHONPATH)")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("extra", nargs="*", help="more `pagoda serve` flags, after --")
    args = parser.parse_args()
    model = args.model
    if model is None:
        sys.path.insert(0, HERE)
        from pagoda.entrypoints.cli.demo import DEFAULT_DEMO_DIR
        from pagoda.tiny_models import ensure_demo_model

        model = ensure_demo_model(DEFAULT_DEMO_DIR)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(args.tree)}
    launched = time.time()
    day = datetime.datetime.fromtimestamp(launched, datetime.timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0).timestamp()
    proc = subprocess.Popen([sys.executable, "-m", "pagoda.entrypoints.cli.main", "serve", model, "--port",
                             str(args.port), *args.extra], cwd=args.tree, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    spawned = core_ready = None
    try:
        for line in proc.stdout:
            stamp = re.search(_STAMP, line)
            start_up = re.search(r"start-up: ([\d.]+) s from spawn to entry, ([\d.]+) s of imports, ([\d.]+) s config",
                                 line)
            if stamp and start_up:
                spawned = _seconds(stamp, day) - sum(float(x) for x in start_up.groups()) - launched
            elif stamp and "engine core ready" in line:
                core_ready = _seconds(stamp, day) - launched
            elif stamp and "API server ready" in line:
                ready = _seconds(stamp, day) - launched
                break
        else:
            print(f"the server exited (code {proc.wait()}) before it was ready", file=sys.stderr)
            return 1
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"{args.tree}: core spawned at {spawned:.2f} s, core ready at {core_ready:.2f} s, listening at "
          f"{ready:.2f} s ({(ready - core_ready) * 1e3:.0f} ms after the core was ready)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
