"""Fixtures: one moto S3 server (and its recording proxy) per session, a tiny model uploaded to it, and the
environment a KServe pod or an OpenShift AI data connection would give Pagoda."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "entrypoints"))  # openai_server_utils

from s3_test_utils import BUCKET, MODEL_PREFIX, MotoServer, RecordingProxy, s3_env  # noqa: E402


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    server = MotoServer(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def proxy(moto):
    p = RecordingProxy(moto.port)
    yield p
    p.close()


@pytest.fixture(scope="session")
def local_model(tmp_path_factory, test_tokenizer_dir) -> str:
    from pagoda.tiny_models import make_checkpoint

    return make_checkpoint("LlamaForCausalLM", str(tmp_path_factory.mktemp("s3-llama")), test_tokenizer_dir)


@pytest.fixture(scope="session")
def s3_model(moto, local_model) -> str:
    """The tiny model's folder uploaded under s3://BUCKET/MODEL_PREFIX; returns that URL."""
    moto.upload_folder(local_model, MODEL_PREFIX)
    return f"s3://{BUCKET}/{MODEL_PREFIX}"


@pytest.fixture
def s3_environ(monkeypatch, moto, proxy, tmp_path):
    """Sets s3_env(...) in this process (a fresh cache per test); returns the env dict."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CA_BUNDLE", "S3_VERIFY_SSL", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    env = s3_env(moto, proxy, str(tmp_path / "s3-cache"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    proxy.reset()
    yield env
    proxy.reset()
