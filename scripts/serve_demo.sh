#!/usr/bin/env bash
# Quick start for the server: install, build the demo model on first use, and serve it with the
# OpenAI-compatible API on http://localhost:8000 as model "pagoda-demo". Extra flags pass through,
# e.g. `bash scripts/serve_demo.sh --port 8080 --api-key secret`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
PY=${PYTHON:-python3}
MODEL_DIR=$("$PY" -c "from pagoda.entrypoints.cli.demo import DEFAULT_DEMO_DIR
from pagoda.tiny_models import ensure_demo_model
print(ensure_demo_model(DEFAULT_DEMO_DIR))")
echo "Serving the demo model (RANDOM weights: its text is gibberish) from $MODEL_DIR" >&2
exec "$PY" -m pagoda.entrypoints.cli.main serve "$MODEL_DIR" --served-model-name pagoda-demo "$@"
