#!/usr/bin/env bash
# The README's quick-start commands on a fresh virtual environment (no test extras, no Triton):
#   1. `bash scripts/serve_demo.sh` serves; /health turns 200; one curl completion answers 200 with text.
#   2. `bash scripts/demo.sh` generates offline and exits 0.
# Fails (non-zero, with the server log) otherwise. .ci/run runs it before the test suite, so a missing
# install step or a module that needs a test-only package can never land again.
#
#   bash scripts/check_fresh_install.sh            # a new venv under a temp folder, removed at the end
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d /tmp/pagoda-fresh.XXXXXX)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A clean copy of the tracked tree, so nothing built or installed in this checkout leaks in.
git -C "$REPO" ls-files -z | (cd "$REPO" && tar --null -T - -cf -) | (mkdir -p "$WORK/src" && tar -xf - -C "$WORK/src")
python3 -m venv "$WORK/venv"
export PYTHON="$WORK/venv/bin/python"
export HOME="$WORK/home"   # the demo model is built fresh under $HOME/.cache/pagoda
mkdir -p "$HOME"
cd "$WORK/src"

echo "== fresh install: serve_demo.sh"
PORT=$("$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
bash scripts/serve_demo.sh --host 127.0.0.1 --port "$PORT" > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
fail() { echo "FAIL: $*" >&2; echo "--- server log (last 80 lines) ---" >&2; tail -n 80 "$WORK/serve.log" >&2; exit 1; }
deadline=$((SECONDS + 900))   # the install (torch, transformers, ...) happens inside serve_demo.sh
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"; do
  kill -0 "$SERVER_PID" 2>/dev/null || fail "serve_demo.sh exited before /health answered 200"
  [ $SECONDS -lt $deadline ] || fail "/health did not answer 200 within 900 s"
  sleep 1
done
body=$(curl -sf "http://127.0.0.1:$PORT/v1/completions" -H "Content-Type: application/json" \
  -d '{"model": "pagoda-demo", "prompt": "Hello, my name is", "max_tokens": 8, "temperature": 0}') \
  || fail "the completion request did not answer 200"
echo "$body" | "$PYTHON" -c "import json, sys
r = json.load(sys.stdin)
assert r['object'] == 'text_completion' and r['usage']['completion_tokens'] == 8, r
print('completion ok:', repr(r['choices'][0]['text']))" || fail "unexpected completion body: $body"
"$PYTHON" -c "import triton" 2>/dev/null && echo "note: triton is installed in the fresh venv" \
  || echo "triton is not installed in the fresh venv: the CPU path served without it"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || fail "the server did not exit 0 on SIGTERM"
SERVER_PID=""

echo "== fresh install: demo.sh"
bash scripts/demo.sh > "$WORK/demo.log" 2>&1 || { tail -n 80 "$WORK/demo.log" >&2; echo "FAIL: demo.sh" >&2; exit 1; }
tail -n 3 "$WORK/demo.log"
echo "fresh install: serve_demo.sh and demo.sh passed"
