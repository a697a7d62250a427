#!/usr/bin/env bash
# Runs the whole test suite (CPU only; Triton kernels through its interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider "$@"
