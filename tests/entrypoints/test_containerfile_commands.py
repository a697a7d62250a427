"""deploy/Containerfile.cpu's commands run as a container would, without a container engine (issue 23).

No machine here runs Podman or Docker, so the image is emulated in a temp folder TMP:

* a small, strict parser reads the Containerfile (FROM, ARG, ENV, WORKDIR, COPY, RUN, USER, EXPOSE, ENTRYPOINT,
  CMD); anything else (another instruction, a flag, a heredoc, shell-form ENTRYPOINT/CMD, `${X:-y}`, the legacy
  `ENV key value`) fails by name rather than being emulated wrongly;
* the image's paths are remapped under TMP (/opt/pagoda -> TMP/opt/pagoda, /tmp -> TMP/tmp,
  /mnt/models -> TMP/mnt/models, the base image's /usr/local/bin -> TMP/usr/local/bin) in ENV values, WORKDIR,
  COPY destinations, RUN lines and the ENTRYPOINT/CMD;
* COPY copies from the working tree (the build context, less __pycache__), RUN lines run with /bin/sh -c (Docker's
  default SHELL; dash here, as in the Debian-based python image) in WORKDIR with the ARGs and ENVs, so the
  `python -m venv` and both pip installs really happen. Build args TORCH_SPEC=torch==2.13.0 and TORCH_INDEX_URL=the
  local index from `pip config list` keep torch on the local CPU wheel; the second install (`pip install ".[s3]"`)
  resolves as the Containerfile says (the default index plus this machine's pip configuration), as
  scripts/check_fresh_install.sh does: xgrammar, llguidance and outlines-core are not in the local index;
* then ENTRYPOINT + CMD (+ `--host=127.0.0.1 --port=0`, appended as KServe appends an InferenceService's args)
  run with the image's ENV only, in WORKDIR, with a tiny checkpoint at TMP/mnt/models; when the test runs as root,
  as the image's USER (uid 1001, gid 0, no passwd entry: what `podman run` gives), so a write anywhere the image
  could not write fails. /health must answer 200, /v1/models name the model, one /v1/completions answer; SIGTERM
  must end it (and every process of its session) with exit status 0;
* what it wrote: as root, every file owned by that uid and newer than the start (found on /, /tmp, /dev/shm,
  /var/tmp, /run) must lie in TMP/tmp, or in the host's own /tmp or /dev/shm (the image's /tmp and /dev/shm: the
  engine's IPC sockets go to tempfile.gettempdir()). Not as root: the listing and mtimes of $HOME and its
  .cache/.config/.triton stay unchanged and nothing under TMP outside TMP/tmp is newer than the start.

Not checked: the base image itself (Debian's python, apt), file ownership and group-0 permissions as an image
layer stores them, the CUDA image's apt step and CUDA torch (deploy/Containerfile is parsed and compared with the
CPU one instruction by instruction, so the commands the CPU run exercises are the ones it has).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from containerfile_parser import BASE_ENV, REMAPPED, ContainerfileError, evaluate, load, parse, remap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_FILE = os.path.join(REPO, "deploy", "Containerfile.cpu")
CUDA_FILE = os.path.join(REPO, "deploy", "Containerfile")
TORCH_SPEC = "torch==2.13.0"
HOST_PASSTHROUGH = re.compile(r"^(PIP_\w+|(https?|no|all)_proxy|(HTTPS?|NO|ALL)_PROXY|SSL_CERT_\w+)$")
START_TIMEOUT_S = 180.0


# ------------------------------------------------------------------------------------------------ static tests

@pytest.mark.parametrize("path", [CPU_FILE, CUDA_FILE], ids=os.path.basename)
def test_parser_understands_every_instruction(path):
    img = load(path)
    assert img.base and img.entrypoint and img.cmd and img.runs
    assert img.user == "1001" and img.workdir == "/tmp" and img.expose == ["8080"]
    port = [a.split("=", 1)[1] for a in img.cmd if a.startswith("--port=")]
    assert port == img.expose, "CMD's --port is the EXPOSEd port"
    for sources, dest in img.copies:
        assert dest.startswith(REMAPPED), dest
        for src in sources:
            assert os.path.exists(os.path.join(REPO, src)), src
    assert img.workdir.startswith(REMAPPED)


@pytest.mark.parametrize("text, message", [
    ("FROM x\nADD a /b\n", "instruction ADD is not emulated"),
    ("FROM x\nSHELL [\"/bin/bash\", \"-c\"]\n", "instruction SHELL is not emulated"),
    ("FROM x\nHEALTHCHECK CMD true\n", "instruction HEALTHCHECK is not emulated"),
    ("FROM x\nENTRYPOINT python -m x\n", "must be a JSON list"),
    ("FROM x\nCMD --port=1\n", "must be a JSON list"),
    ("FROM x\nENV A 1\n", "legacy"),
    ("FROM x\nENV A=${B:-1}\n", "substitution ${B:-1}"),
    ("FROM x\nCOPY --chown=1:0 a /b\n", "flag --chown"),
    ("FROM x\nRUN <<EOF\ntrue\nEOF\n", "heredocs"),
    ("FROM x\nCOPY *.toml /b/\n", "wildcard"),
    ("FROM x\nUSER pagoda\n", "numeric"),
    ("FROM x\nFROM y\n", "multi-stage"),
    ("ARG A=1\nFROM x\n", "first instruction must be FROM"),
    ("# escape=`\nFROM x\n", "parser directive"),
    ("FROM x\nrun true\n", "write run as RUN"),
])
def test_parser_fails_by_name_on_what_it_does_not_emulate(text, message):
    with pytest.raises(ContainerfileError, match=re.escape(message)):
        evaluate(parse(text), {}, BASE_ENV)


def test_parser_semantics():
    img = evaluate(parse(
        "FROM base\nARG A=1\nARG B\n# comment\nENV P=/x:$PATH \\\n# inside\n    Q=${A}-$P R=\\$A\n"
        "WORKDIR /opt/pagoda/src\nCOPY pyproject.toml ./\nRUN echo $A\nCMD [\"a\"]\nENTRYPOINT [\"e\"]\n"),
        {"B": "2"}, {"PATH": "/bin"})
    assert img.args == {"A": "1", "B": "2"}
    assert img.env == {"PATH": "/bin", "P": "/x:/bin", "Q": "1-", "R": "$A"}  # one ENV line sees the env before it
    assert img.copies == [(["pyproject.toml"], "/opt/pagoda/src/")]
    assert img.runs == ["echo $A"] and img.entrypoint == ["e"] and img.cmd == []
    with pytest.raises(ContainerfileError, match="declared by no ARG"):
        evaluate(parse("FROM base\n"), {"TORCH_INDEX_URL": "x"}, {})
    assert remap('PATH=/opt/pagoda/venv/bin:/usr/bin "--model=/mnt/models" /tmp/home /tmpx /a/tmp', "/T") == \
        'PATH=/T/opt/pagoda/venv/bin:/usr/bin "--model=/T/mnt/models" /T/tmp/home /tmpx /a/tmp'


def test_cuda_containerfile_runs_the_commands_the_cpu_emulation_runs():
    """deploy/Containerfile differs from Containerfile.cpu only where it must (base image, apt, python3, the torch
    index, --device=cpu), so the emulated CPU build and run cover its COPY, pip, permission and start-up steps."""
    cpu, cuda = load(CPU_FILE), load(CUDA_FILE)
    assert cpu.base.startswith("docker.io/library/python:") and cuda.base.startswith("docker.io/nvidia/cuda:")
    assert {k: v for k, v in cuda.env.items() if k != "DEBIAN_FRONTEND"} == cpu.env
    for attr in ("workdir", "user", "expose", "entrypoint", "copies"):
        assert getattr(cuda, attr) == getattr(cpu, attr), attr
    assert cpu.cmd == cuda.cmd + ["--device=cpu"]
    assert set(cpu.args) == {"TORCH_SPEC", "TORCH_INDEX_URL"} and set(cuda.args) == {"TORCH_SPEC"}
    assert cpu.args["TORCH_SPEC"] == cuda.args["TORCH_SPEC"]
    assert cuda.runs[0].startswith("apt-get update")
    assert cuda.runs[1:] == [r.replace("python -m venv", "python3 -m venv")
                             .replace('--index-url "${TORCH_INDEX_URL}" ', "") for r in cpu.runs]


# ----------------------------------------------------------------------------------------------- the emulation

def _local_index() -> tuple[str, str] | None:
    """(file:// index URL, torch wheel) from this machine's pip configuration, or None."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         timeout=60).stdout
    values: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        values.setdefault(key.rsplit(".", 1)[-1], []).extend(value.strip().strip("'\"").split())
    values.setdefault("find-links", []).extend(os.environ.get("PIP_FIND_LINKS", "").split())
    indexes = [u for u in values.get("extra-index-url", []) + values.get("index-url", [])
               if u.startswith("file://") and os.path.isdir(u[len("file://"):])]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = [w for d in values["find-links"] + [u[len("file://"):] + "/torch" for u in indexes]
              for w in glob.glob(os.path.join(d.removeprefix("file://"), f"torch-2.13.0*-{tag}-*.whl"))]
    return (indexes[0], wheels[0]) if indexes and wheels else None


def _base_interpreter(creds: dict) -> str | None:
    """A Python of this test's version with venv and ensurepip that `creds` (the image's USER) can run."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable),
                  f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"]
    for candidate in candidates:
        if not os.path.isfile(candidate):
            continue
        try:
            check = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; "
                                    f"assert sys.version.startswith('{version}.')"],
                                   capture_output=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=60, **creds)
        except PermissionError:  # e.g. under a 0700 /root
            continue
        if check.returncode == 0:
            return candidate
    return None


def _free_of(path: str, allowed: list[str]) -> bool:
    return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)


def _http(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _session_pids(sid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def _snapshot(dirs: list[str]) -> dict[str, float]:
    snap = {}
    for d in dirs:
        if os.path.isdir(d):
            snap[d] = os.stat(d).st_mtime
            for name in os.listdir(d):
                try:
                    snap[os.path.join(d, name)] = os.lstat(os.path.join(d, name)).st_mtime
                except OSError:
                    pass
    return snap


def test_cpu_containerfile_builds_and_serves_without_a_container_engine():
    local = _local_index()
    if local is None:
        pytest.skip("no local package index with a torch 2.13.0 wheel for this Python in `pip config list` "
                    "(extra-index-url file://..., find-links): the emulated build would download CUDA torch")
    index_url, torch_wheel = local
    tmp = tempfile.mkdtemp(prefix="pagoda-containerfile-", dir="/tmp")
    os.chmod(tmp, 0o755)  # the image's USER must reach TMP/opt and TMP/tmp, as in the image
    log_path = os.path.join(tmp, "build.log")
    log = open(log_path, "w")
    proc = None
    as_root = os.geteuid() == 0
    started = time.time()
    marker = os.path.join(tmp, "marker")

    def tail(path=log_path, n=6000):
        log.flush()
        with open(path, errors="replace") as f:
            return f.read()[-n:]

    try:
        with open(CPU_FILE) as f:
            instructions = parse(f.read())
        uid, _, gid = load(CPU_FILE).user.partition(":")
        creds = dict(user=int(uid), group=int(gid or 0), extra_groups=[]) if as_root else {}
        # The base image: `python` (and python3) on PATH is a plain interpreter (not this test's venv) that the
        # image's USER can run: this Python's base interpreter, else the system's of the same version.
        interpreter = _base_interpreter(creds)
        if interpreter is None and creds:
            print(f"no Python {sys.version_info.major}.{sys.version_info.minor} that uid {uid} can run: the server "
                  "runs as root, and only $HOME and TMP are watched for writes")
            creds = {}
            interpreter = _base_interpreter(creds)
        assert interpreter, "no base interpreter with venv and ensurepip"
        os.makedirs(os.path.join(tmp, "tmp"))
        os.chmod(os.path.join(tmp, "tmp"), 0o1777)  # the base image's /tmp
        base_bin = os.path.join(tmp, "usr", "local", "bin")
        os.makedirs(base_bin)
        for name in ("python", "python3"):
            os.symlink(interpreter, os.path.join(base_bin, name))
        if not as_root:  # `chgrp -R 0` needs root: a non-root CI user gets a chgrp that only says so
            with open(os.path.join(base_bin, "chgrp"), "w") as f:
                f.write('#!/bin/sh\necho "chgrp $* (skipped: not root)"\n')
            os.chmod(os.path.join(base_bin, "chgrp"), 0o755)
        host = {k: v for k, v in os.environ.items() if HOST_PASSTHROUGH.match(k)}
        build_home = os.path.join(tmp, "root")  # Docker's HOME for RUN as root
        os.makedirs(build_home)

        def on_copy(img, sources, dest):
            target = remap(dest, tmp)
            assert target != dest, f"COPY destination {dest} is outside the remapped paths"
            for src in sources:
                path = os.path.join(REPO, src)
                if os.path.isdir(path):  # a folder's contents
                    shutil.copytree(path, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    os.makedirs(target if dest.endswith("/") or len(sources) > 1 else os.path.dirname(target),
                                exist_ok=True)
                    shutil.copy2(path, target)
            log.write(f"== COPY {' '.join(sources)} {dest} -> {target}\n")

        def on_run(img, command, env):
            cwd = remap(img.workdir, tmp)
            assert cwd != img.workdir or img.workdir == "/", img.workdir
            os.makedirs(cwd, exist_ok=True)
            script = remap(command, tmp)
            full_env = {**host, "HOME": build_home,
                        **{k: v if k in build_args and k not in img.env else remap(v, tmp) for k, v in env.items()}}
            log.write(f"== RUN {script}\n")
            log.flush()
            t0 = time.monotonic()
            result = subprocess.run(["/bin/sh", "-c", script], cwd=cwd, env=full_env, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=420)
            log.write(f"== ({time.monotonic() - t0:.1f} s, exit {result.returncode})\n")
            assert result.returncode == 0, f"RUN {command!r} failed:\n{tail()}"

        build_args = {"TORCH_SPEC": TORCH_SPEC, "TORCH_INDEX_URL": index_url}  # host values: not remapped
        img = evaluate(instructions, build_args, BASE_ENV, on_copy=on_copy, on_run=on_run)
        build_s = time.time() - started

        venv = os.path.join(tmp, "opt", "pagoda", "venv")
        env = {k: remap(v, tmp) for k, v in img.env.items()}
        assert shutil.which("python", path=env["PATH"]) == os.path.join(venv, "bin", "python")
        pip_list = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "list", "--format=json"],
                                  capture_output=True, text=True, env=env, timeout=120, check=True).stdout
        versions = {p["name"].lower(): p["version"] for p in json.loads(pip_list)}
        assert versions["torch"] == "2.13.0+cpu", f"torch {versions['torch']} instead of {torch_wheel}"
        assert "boto3" in versions and versions["pagoda"] == "0.1.0"

        # The model KServe's storage initializer would put in /mnt/models (read-only to the server's uid).
        from pagoda.tiny_models import make_checkpoint

        models = os.path.join(tmp, "mnt", "models")
        make_checkpoint("LlamaForCausalLM", models)
        os.chmod(os.path.join(tmp, "mnt"), 0o755)
        for name in os.listdir(models):  # safetensors writes 0600; the storage initializer's files are readable
            os.chmod(os.path.join(models, name), 0o644)

        workdir = remap(img.workdir, tmp)
        argv = [remap(a, tmp) for a in img.entrypoint + img.cmd] + ["--host=127.0.0.1", "--port=0"]
        assert argv[0] == "python" and f"--model={models}" in argv

        where = subprocess.run(["python", "-c", "import importlib.util as u; print(u.find_spec('pagoda').origin)"],
                               capture_output=True, text=True, cwd=workdir, env=env, timeout=60, **creds)
        assert where.stdout.startswith(os.path.join(venv, "lib")), where.stdout + where.stderr

        watched = [os.path.expanduser("~")] + [os.path.expanduser(f"~/{d}") for d in (".cache", ".config", ".triton")]
        before = _snapshot(watched)
        with open(marker, "w"):
            pass
        time.sleep(0.05)
        server_log_path = os.path.join(tmp, "server.log")
        server_log = open(server_log_path, "w")
        proc = subprocess.Popen([shutil.which(argv[0], path=env["PATH"]), *argv[1:]], cwd=workdir, env=env,
                                stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True, **creds)
        deadline = time.monotonic() + START_TIMEOUT_S
        port = None
        while port is None:
            assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{tail(server_log_path)}"
            assert time.monotonic() < deadline, f"not ready within {START_TIMEOUT_S} s:\n{tail(server_log_path)}"
            m = re.search(r"ready on http://127\.0\.0\.1:(\d+)", tail(server_log_path, 10**7))
            if m:
                port = int(m.group(1))
            else:
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        start_s = time.time() - started - build_s
        assert _http(url + "/health")[0] == 200
        status, body = _http(url + "/v1/models")
        assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == [models], body
        status, body = _http(url + "/v1/completions", {"model": models, "prompt": "Hello, my name is",
                                                       "max_tokens": 8, "temperature": 0})
        assert status == 200, body
        r = json.loads(body)
        assert r["object"] == "text_completion" and 1 <= r["usage"]["completion_tokens"] <= 8, r
        assert isinstance(r["choices"][0]["text"], str), r

        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within 45 s of SIGTERM:\n{tail(server_log_path)}")
        assert rc == 0, f"exit status {rc} after SIGTERM:\n{tail(server_log_path)}"
        for _ in range(50):
            left = _session_pids(proc.pid)
            if not left:
                break
            time.sleep(0.2)
        assert not left, f"processes of the server's session still running after its exit: {left}"

        # What did it write?
        allowed = [os.path.join(tmp, "tmp")]
        server_log.close()
        denied = [line for line in tail(server_log_path, 10**7).splitlines()
                  if re.search(r"Permission denied|Read-only file system|not writable", line)]
        assert not denied, f"the server met unwritable paths: {denied[:5]}"
        if creds:
            # The detector's own check: one write it must allow, one it must refuse (g=u leaves /opt/pagoda
            # writable by group 0, in the image too).
            probes = [os.path.join(tmp, "tmp", "home", ".probe"), os.path.join(tmp, "opt", "pagoda", ".probe")]
            subprocess.run(["touch", *probes], check=True, timeout=30, **creds)
            roots = ["/", "/tmp", "/dev/shm", "/var/tmp", "/run"]
            found = subprocess.run(["find", *roots, "-xdev", "-uid", uid, "-newer", marker, "-print"],
                                   capture_output=True, text=True, timeout=120).stdout.split("\n")
            found = sorted({p for p in found if p})
            assert set(probes) <= set(found), f"the write detector missed {probes}: {found[:20]}"
            host_tmp = [p for p in found if _free_of(p, ["/tmp", "/dev/shm"]) and not _free_of(p, [tmp])]
            bad = [p for p in found if not _free_of(p, allowed) and p not in host_tmp]
            assert probes[1] in bad and probes[0] not in bad, (probes, bad)
            found, bad = [p for p in found if p not in probes], [p for p in bad if p not in probes]
            assert not bad, f"the server (uid {uid}) wrote outside /tmp: {bad[:20]}"
            for p in sorted(host_tmp, key=len, reverse=True):  # the image's /tmp is gone with the container
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)
            print(f"files by uid {uid}: {len(found) - len(host_tmp)} under TMP/tmp, {len(host_tmp)} left in the "
                  f"host's /tmp or /dev/shm (the image's): {host_tmp[:5]}")
        else:
            assert _snapshot(watched) == before, "the server wrote into $HOME"
            newer = subprocess.run(["find", tmp, "-newer", marker, "-not", "-path", os.path.join(tmp, "tmp") + "*",
                                    "-not", "-path", server_log_path, "-print"],
                                   capture_output=True, text=True, timeout=60).stdout.split()
            assert not newer, f"the server wrote outside TMP/tmp: {newer[:20]}"
        print(f"build {build_s:.0f} s, start {start_s:.0f} s, total {time.time() - started:.0f} s; "
              f"torch {versions['torch']}, pagoda from {where.stdout.strip()}")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
