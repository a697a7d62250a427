#!/usr/bin/env bash
# Quick start: install, build the demo model on first use, and generate with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec "${PYTHON:-python3}" -m pagoda.entrypoints.cli.main demo "$@"
