"""RemoteServer: a real Pagoda server on 127.0.0.1, started as a subprocess, and its clients.

Every wait here is bounded; the server's output goes to a log file that failures print.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

try:
    import httpx
except ImportError:  # the openai client ships httpx2 where httpx is not installed
    import httpx2 as httpx  # type: ignore[no-redef]
import openai

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_KEY = "test-key-123"
MODEL_NAME = "tiny-llama"
MAX_MODEL_LEN = 512
START_TIMEOUT_S = 240.0


def output(result: subprocess.CompletedProcess) -> str:
    """What a finished server printed: its log (stdout, where Pagoda logs, as vLLM does), then stderr."""
    return (result.stdout or "") + (result.stderr or "")


class RemoteServer:
    """`python -m pagoda.entrypoints.openai.api_server ...` (or `entry`) on a free loopback port, logging to a file."""

    def __init__(self, args: list[str], log_path: str, api_key: str | None = None, env: dict | None = None,
                 entry: tuple[str, ...] = ("-m", "pagoda.entrypoints.openai.api_server")) -> None:
        self.api_key = api_key
        self.log_path = log_path
        self._log = open(log_path, "w")
        full_env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "PAGODA_LOG_STATS_INTERVAL": "1", **(env or {})}
        command = [sys.executable, *entry, "--host", "127.0.0.1", "--port", "0", *args]
        if api_key:
            command += ["--api-key", api_key]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=full_env)
        self.port = self._wait_ready()
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            match = re.search(r"ready on http://127\.0\.0\.1:(\d+)", self.log())
            if match:
                port = int(match.group(1))
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                        return port
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError(f"server not ready within {START_TIMEOUT_S} s:\n{self.log()[-4000:]}")

    def core_pid(self) -> int:
        return int(re.search(r"engine core ready \(pid (\d+)", self.log()).group(1))

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.api_key or "none")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, timeout=120, **kwargs)

    def async_client(self, **kwargs) -> openai.AsyncOpenAI:
        kwargs.setdefault("api_key", self.api_key or "none")
        return openai.AsyncOpenAI(base_url=self.url + "/v1", max_retries=0, timeout=300, **kwargs)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, json=None, **kwargs) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.post(self.url + path, json=json, headers=headers, timeout=kwargs.pop("timeout", 120), **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.get(self.url + path, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    def metric(self, name: str, **labels) -> float:
        """The value of one sample of /metrics (0.0 when absent)."""
        text = self.get("/metrics").text
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class HealthPoller:
    """Polls /health on its own thread while a test runs; records the slowest answer (bounded in count)."""

    def __init__(self, server, interval_s: float = 0.2, max_polls: int = 500, bound_s: float = 3.0) -> None:
        self.server, self.interval_s, self.max_polls, self.bound_s = server, interval_s, max_polls, bound_s
        self.slowest, self.failures, self.polls = 0.0, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.polls < self.max_polls:
            started = time.monotonic()
            try:
                status = httpx.get(self.server.url + "/health", timeout=30).status_code
            except httpx.HTTPError as exc:
                status = repr(exc)
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.polls += 1
            if status != 200:
                self.failures.append(status)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "HealthPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert self.polls > 0 and not self.failures, self.failures
        assert self.slowest < self.bound_s, f"/health took {self.slowest:.1f} s"
