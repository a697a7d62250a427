"""s3:// models against a real S3 API (moto's server on 127.0.0.1, behind a recording proxy).

Covered: LLM(model="s3://...") generates what the local folder generates; a second start reads no object
body; wrong credentials, a missing bucket or prefix are clear errors that never show the secret; a download
cut halfway leaves nothing loadable and the next start completes it (without fetching finished files again);
a corrupted body fails its MD5 check; a multipart object (ETag 'md5-N') is checked by size.
"""

from __future__ import annotations

import filecmp
import logging
import os

import pytest

from s3_test_utils import BUCKET, MODEL_PREFIX

from pagoda.hf_utils import resolve_model_path
from pagoda.s3_storage import S3StorageError

PROMPTS = ["def fibonacci(n):", "import os\nimport"]


def _cache_files(cache: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), cache) for d, _, names in os.walk(cache) for n in names)


def _same_tree(a: str, b: str) -> bool:
    cmp = filecmp.dircmp(a, b)
    names = [n for n in cmp.common_files]
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not (cmp.left_only or cmp.right_only or mismatch or errors) and len(match) == len(os.listdir(a))


def test_llm_from_s3_equals_local_and_second_start_reads_no_body(s3_model, local_model, s3_environ, proxy, caplog):
    from pagoda import LLM, SamplingParams

    caplog.set_level(logging.DEBUG)
    params = SamplingParams(temperature=0, max_tokens=12)
    kwargs = dict(max_model_len=256, num_gpu_blocks_override=64, max_num_seqs=4, enforce_eager=True)
    local = [o.outputs[0].text for o in LLM(model=local_model, **kwargs).generate(PROMPTS, params, use_tqdm=False)]
    remote_llm = LLM(model=s3_model, **kwargs)
    remote = [o.outputs[0].text for o in remote_llm.generate(PROMPTS, params, use_tqdm=False)]
    assert remote == local
    folder = remote_llm.llm_engine.config.model.model_path
    assert folder.startswith(s3_environ["PAGODA_S3_CACHE"]) and _same_tree(local_model, folder)
    assert proxy.object_gets(), "the first start downloads"
    ranged = [r for r in proxy.object_gets() if r[1].endswith("model.safetensors")]
    assert len(ranged) > 1 and all(r[2] and r[2].startswith("bytes=") for r in ranged)  # parallel ranged GETs

    proxy.reset()
    assert resolve_model_path(s3_model) == folder
    assert proxy.object_gets() == []  # only the listing: no object body is read again
    assert proxy.requests and all(method == "GET" and path == f"/{BUCKET}" for method, path, _ in proxy.requests)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert s3_environ["AWS_SECRET_ACCESS_KEY"] not in logged and s3_environ["AWS_ACCESS_KEY_ID"] not in logged


def test_wrong_credentials_are_clear_errors_without_the_secret(s3_model, s3_environ, moto, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    bad_secret = "WRONG-secret-value-1234567890"
    moto.require_auth(True)
    try:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
        with pytest.raises(ValueError) as info:
            resolve_model_path(s3_model)
        message = str(info.value)
        assert "AWS_SECRET_ACCESS_KEY" in message and "does not match" in message and BUCKET in message
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
        with pytest.raises(ValueError) as info:
            resolve_model_path(s3_model)
        assert "access key id (AWS_ACCESS_KEY_ID) is not known" in str(info.value)
        assert "AKIANOSUCHKEY0000000" not in str(info.value)
    finally:
        moto.require_auth(False)
    logged = "\n".join(r.getMessage() for r in caplog.records) + message
    assert bad_secret not in logged and moto.secret not in logged
    assert not os.path.exists(s3_environ["PAGODA_S3_CACHE"]) or not _cache_files(s3_environ["PAGODA_S3_CACHE"])


def test_missing_bucket_and_prefix(s3_model, s3_environ, monkeypatch):
    with pytest.raises(S3StorageError, match=r"bucket 'no-such-bucket' does not exist"):
        resolve_model_path("s3://no-such-bucket/models/x")
    with pytest.raises(S3StorageError, match=r"no objects under s3://pagoda-models/models/nothing-here/"):
        resolve_model_path(f"s3://{BUCKET}/models/nothing-here")
    with pytest.raises(S3StorageError, match=r"tokenizer='s3://pagoda-models/models/tiny'.*no objects"):
        resolve_model_path(f"s3://{BUCKET}/models/tiny", field_name="tokenizer")  # a prefix of a prefix: no match
    # a data connection's bucket (AWS_S3_BUCKET) fills in a URL without one
    assert os.path.isfile(os.path.join(resolve_model_path(f"s3:///{MODEL_PREFIX}"), "config.json"))


def test_interrupted_download_is_never_loaded_and_resumes(s3_model, local_model, s3_environ, proxy):
    from pagoda import LLM

    total = sum(os.path.getsize(os.path.join(local_model, n)) for n in os.listdir(local_model))
    proxy.fail_after_bytes = total // 2
    with pytest.raises(S3StorageError, match="download"):
        resolve_model_path(s3_model)
    cache = s3_environ["PAGODA_S3_CACHE"]
    files = _cache_files(cache)
    assert not any(f.endswith("complete.json") for f in files)
    assert not any(f.endswith(os.sep + "model.safetensors") for f in files)  # only its .pagoda-part
    with pytest.raises(ValueError, match="download"):  # a start with the fault still there fails, loads nothing
        LLM(model=s3_model, max_model_len=128, num_gpu_blocks_override=16)
    finished = {f.split(os.sep + "files" + os.sep, 1)[1] for f in _cache_files(cache)
                if os.sep + "files" + os.sep in f and not f.endswith(".pagoda-part")}
    assert finished, "the small files finished before the cut"

    proxy.reset()
    folder = resolve_model_path(s3_model)
    assert _same_tree(local_model, folder)
    fetched = {path.rsplit("/", 1)[1] for _, path, _ in proxy.object_gets()}
    assert "model.safetensors" in fetched and not fetched & finished  # finished files are not fetched again
    assert not any(f.endswith(".pagoda-part") for f in _cache_files(cache))


def test_corrupted_body_fails_md5_check(s3_model, s3_environ, proxy):
    proxy.corrupt = True
    with pytest.raises(S3StorageError, match="does not match its ETag"):
        resolve_model_path(s3_model)
    assert not any(f.endswith("complete.json") for f in _cache_files(s3_environ["PAGODA_S3_CACHE"]))


def test_multipart_object_is_checked_by_size(moto, s3_environ, tmp_path):
    from boto3.s3.transfer import TransferConfig

    data = os.urandom(5 * 1024 * 1024 + 1000)  # two parts (moto wants parts of >= 5 MiB but the last)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    moto.s3.upload_file(str(source), BUCKET, "models/multipart/big.bin",
                        Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
    etag = moto.s3.head_object(Bucket=BUCKET, Key="models/multipart/big.bin")["ETag"]
    assert etag.strip('"').endswith("-2")
    folder = resolve_model_path(f"s3://{BUCKET}/models/multipart/")
    with open(os.path.join(folder, "big.bin"), "rb") as f:
        assert f.read() == data
