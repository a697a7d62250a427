#!/usr/bin/env bash
# Installs Pagoda and what it needs into the current Python, idempotently.
# torch: 2.13.0 (the CPU build) when no torch is installed; an existing torch (e.g. a CUDA build) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[$1]" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PY" -c "import pagoda" >/dev/null
