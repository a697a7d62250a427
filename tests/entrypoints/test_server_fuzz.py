"""A bounded schemathesis run over the server's own OpenAPI spec: no generated request, valid or not,
may get a 5xx answer (every bad input is a 4xx naming the field), and the server stays healthy.

The coverage phase sends each field's boundary values (huge integers, empty and odd strings, wrong
types); fuzzing adds random bodies (20 examples per operation by default).

The run is deterministic (fixed seed) so a failure reproduces; a deeper local run:
    st run http://127.0.0.1:PORT/openapi.json --checks not_a_server_error --max-examples 500
(PAGODA_FUZZ_EXAMPLES=N sets this test's examples per operation.)
"""

import os
import subprocess
import sys

MAX_EXAMPLES = int(os.environ.get("PAGODA_FUZZ_EXAMPLES", "20"))


def test_no_generated_request_gets_a_server_error(start_server, model_dir, tmp_path):
    server = start_server(["--model", model_dir, "--max-model-len", "128", "--max-logprobs", "5",
                           "--served-model-name", "fuzzed", "--disable-uvicorn-access-log", "--disable-log-requests"])
    command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", "run",
               f"{server.url}/openapi.json", "--checks", "not_a_server_error",
               "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES), "--seed", "20261201",
               "--request-timeout", "60", "--workers", "1", "--no-color", "--generation-database", "none"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=420, cwd=str(tmp_path),
                            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report + "\n--- server log ---\n" + server.log()[-4000:]
    assert "passed" in result.stdout, report
    assert server.get("/health").status_code == 200
