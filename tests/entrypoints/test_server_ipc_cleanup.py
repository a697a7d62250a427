"""No engine socket folder outlives its server: not after SIGTERM, not after SIGKILL of the frontend."""

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time

from pagoda.engine.core_client import IPC_PREFIX, remove_stale_ipc_dirs


def _ipc_dirs(pid: int) -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"{IPC_PREFIX}{pid}-*"))


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_sigkill_of_the_frontend_leaves_no_socket_folder(start_server, model_dir):
    server = start_server(["--model", model_dir, "--max-model-len", "128"])
    frontend, core = server.proc.pid, server.core_pid()
    assert len(_ipc_dirs(frontend)) == 1
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    assert _wait_gone(core, 20), "the engine core outlived its killed frontend"
    deadline = time.monotonic() + 10
    while _ipc_dirs(frontend) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ipc_dirs(frontend) == []


def test_sigterm_leaves_no_socket_folder(start_server, model_dir):
    server = start_server(["--model", model_dir, "--max-model-len", "128"])
    frontend = server.proc.pid
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert _ipc_dirs(frontend) == []


def test_stale_folders_of_dead_servers_are_removed_at_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{IPC_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{IPC_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{IPC_PREFIX}xyz"
    for folder in (stale, live, unnamed):
        folder.mkdir()
        (folder / "input").write_text("")
    assert remove_stale_ipc_dirs(str(tmp_path)) == [stale.name]
    assert not stale.exists() and live.exists() and unnamed.exists()
