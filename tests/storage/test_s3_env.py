"""How the environment of a KServe pod or an OpenShift AI data connection configures the S3 client (no server)."""

from __future__ import annotations

import os

import pytest

from pagoda import s3_storage
from pagoda.s3_storage import S3StorageError, cache_root, endpoint_url, parse_s3_url, safe_endpoint

ALL = (*s3_storage.ENDPOINT_VARS, "S3_USE_HTTPS", "S3_VERIFY_SSL", "AWS_CA_BUNDLE", "AWS_S3_BUCKET", "PAGODA_S3_CACHE",
       "HF_HOME")


@pytest.fixture
def env(monkeypatch):
    for name in ALL:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_endpoint_precedence_and_kserve_host_form(env):
    assert endpoint_url() is None and safe_endpoint() == "AWS"
    env.setenv("S3_ENDPOINT", "minio.minio.svc:9000")  # KServe: host:port, https unless S3_USE_HTTPS=0
    assert endpoint_url() == "https://minio.minio.svc:9000"
    env.setenv("S3_USE_HTTPS", "0")
    assert endpoint_url() == "http://minio.minio.svc:9000"
    env.setenv("AWS_S3_ENDPOINT", "https://s3.example.com/")  # a data connection's URL wins over S3_ENDPOINT
    assert endpoint_url() == "https://s3.example.com"
    env.setenv("AWS_ENDPOINT_URL", "http://user:pw@10.0.0.1:9000")  # boto3's own name wins over both
    assert endpoint_url() == "http://user:pw@10.0.0.1:9000" and safe_endpoint() == "http://10.0.0.1:9000"


def test_tls_settings(env, tmp_path):
    assert s3_storage._verify() is True
    env.setenv("AWS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(S3StorageError, match="AWS_CA_BUNDLE"):
        s3_storage._verify()
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    env.setenv("AWS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    assert s3_storage._verify() == str(tmp_path / "ca.pem")
    env.setenv("S3_VERIFY_SSL", "0")
    assert s3_storage._verify() is False


def test_url_and_bucket_from_data_connection(env):
    loc = parse_s3_url("s3://bucket/models/granite-7b-instruct/")
    assert (loc.bucket, loc.prefix) == ("bucket", "models/granite-7b-instruct")
    with pytest.raises(S3StorageError, match="names no bucket"):
        parse_s3_url("s3:///models/x", "speculative_model")
    env.setenv("AWS_S3_BUCKET", "from-connection")
    assert parse_s3_url("s3:///models/x").bucket == "from-connection"


def test_cache_root_order(env, tmp_path):
    assert cache_root() == os.path.join(os.path.expanduser("~"), ".cache", "pagoda", "s3")
    env.setenv("HF_HOME", "/tmp/hf_home")
    assert cache_root() == "/tmp/hf_home/pagoda-s3"
    env.setenv("PAGODA_S3_CACHE", str(tmp_path))
    assert cache_root() == str(tmp_path)
    assert cache_root(download_dir="/data/dl") == "/data/dl/pagoda-s3"  # --download-dir wins


def test_redact():
    assert s3_storage.redact("key AKIA123 secret abcdSECRET", ["abcdSECRET", "AKIA123"]) == "key *** secret ***"
