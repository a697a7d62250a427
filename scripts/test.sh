#!/usr/bin/env bash
# Runs the whole test suite (CPU only; Triton kernels through its interpreter), its files spread over
# PAGODA_TEST_WORKERS processes (default 2, CI's cores; each file stays on one worker, so a module's server
# fixture starts once). PAGODA_TEST_WORKERS=0 runs it in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider -n "${PAGODA_TEST_WORKERS:-2}" --dist loadfile "$@"
