"""A real S3 API on loopback for the storage tests: moto's server (`moto_server`) behind a small recording proxy.

The proxy forwards every request unchanged (the Host header too, so SigV4 signatures still verify) and records
(method, path, Range) of each; it can cut object bodies once a byte budget is spent (an interrupted download)
or flip a byte of them (a corrupted one). Uploads go straight to moto.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

BUCKET = "pagoda-models"
REGION = "us-east-1"
MODEL_PREFIX = "models/tiny-llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`python -m moto.server -H 127.0.0.1 -p PORT` (moto_server) as a subprocess, with an IAM user whose key the tests use."""

    def __init__(self, log_path: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (exit {self.proc.poll()})")
                time.sleep(0.1)
        import boto3

        admin = dict(endpoint_url=self.url, region_name=REGION, aws_access_key_id="admin",
                     aws_secret_access_key="admin-secret")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="pagoda")
        iam.put_user_policy(UserName="pagoda", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="pagoda")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self.s3 = boto3.client("s3", **admin)
        self.s3.create_bucket(Bucket=BUCKET)

    def upload_folder(self, folder: str, prefix: str) -> int:
        """Every file of `folder` under `prefix/`; returns the bytes uploaded."""
        total = 0
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, folder).replace(os.sep, "/")
                with open(path, "rb") as f:
                    self.s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{rel}", Body=f.read())
                total += os.path.getsize(path)
        return total

    def require_auth(self, on: bool) -> None:
        """Turn moto's IAM authentication of every request on (or back off)."""
        body = b"0" if on else b"inf"
        request = urllib.request.Request(self.url + "/moto-api/reset-auth", data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=5).read()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class RecordingProxy:
    """An HTTP proxy in front of `upstream_port` that records requests and can break object bodies."""

    def __init__(self, upstream_port: int) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self.fail_after_bytes: int | None = None  # object-body bytes served in all, before every body is cut
        self.corrupt = False
        self.body_bytes = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                path = urlsplit(self.path).path
                is_object_get = self.command == "GET" and path.strip("/").count("/") >= 1
                with proxy.lock:
                    proxy.requests.append((self.command, path, self.headers.get("Range")))
                    cut = None
                    if is_object_get and response.status < 300:
                        if proxy.fail_after_bytes is not None:
                            allowed = max(0, proxy.fail_after_bytes - proxy.body_bytes)
                            if allowed < len(data):
                                cut = allowed
                        proxy.body_bytes += len(data) if cut is None else cut
                        if proxy.corrupt and data:
                            data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "date", "server"):
                        self.send_header(key, value)
                if "content-length" not in {k.lower() for k, _ in response.getheaders()}:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data if cut is None else data[:cut])
                self.wfile.flush()
                if cut is not None:  # the client sees fewer bytes than Content-Length: a broken stream
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def object_gets(self) -> list[tuple[str, str, str | None]]:
        with self.lock:
            return [r for r in self.requests if r[0] == "GET" and r[1].strip("/").count("/") >= 1]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.fail_after_bytes, self.corrupt, self.body_bytes = None, False, 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def s3_env(moto, proxy, cache: str, **extra: str) -> dict:
    """The variables of a pod with a data connection (endpoint through the proxy), caching into `cache`."""
    env = {"AWS_ACCESS_KEY_ID": moto.key_id, "AWS_SECRET_ACCESS_KEY": moto.secret, "AWS_DEFAULT_REGION": REGION,
           "AWS_S3_ENDPOINT": proxy.url, "AWS_S3_BUCKET": BUCKET, "PAGODA_S3_CACHE": cache,
           "PAGODA_S3_CHUNK_BYTES": str(64 * 1024), "PAGODA_S3_CONCURRENCY": "4"}
    env.update(extra)
    return env
