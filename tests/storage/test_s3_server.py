"""The KServe seed's container args parse with Pagoda's CLI, and a server whose model, tokenizer and draft model
are s3:// URLs (the environment of an OpenShift AI data connection) answers /v1/completions."""

from __future__ import annotations

import os

from s3_test_utils import s3_env
from openai_server_utils import RemoteServer

from pagoda.entrypoints.openai.api_server import make_parser

SEED_ARGS = ["--port=8080", "--model=/mnt/models", "--served-model-name=granite-7b-instruct"]


def test_seed_container_args_parse():
    args = make_parser().parse_args(SEED_ARGS)
    assert (args.port, args.model, args.served_model_name) == (8080, "/mnt/models", ["granite-7b-instruct"])


def test_server_serves_a_model_from_s3(s3_model, moto, proxy, tmp_path):
    cache = str(tmp_path / "s3-cache")
    env = {**os.environ, **s3_env(moto, proxy, cache)}
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT", "HF_HOME"):
        env.pop(name, None)
    proxy.reset()
    server = RemoteServer([f"--model={s3_model}", f"--tokenizer={s3_model}", "--served-model-name=granite-7b-instruct",
                           "--max-model-len=256", f"--speculative-model={s3_model}", "--num-speculative-tokens=2",
                           "--disable-uvicorn-access-log", "--log-level=DEBUG"],
                          str(tmp_path / "server.log"), env=env)
    try:
        client = server.client()
        assert [m.id for m in client.models.list().data] == ["granite-7b-instruct"]
        out = client.completions.create(model="granite-7b-instruct", prompt="def fibonacci(n):", max_tokens=8,
                                        temperature=0)
        assert out.usage.completion_tokens == 8 and out.choices[0].text
        log = server.log()
    finally:
        server.close()
    assert moto.secret not in log and moto.key_id not in log
    safetensors_gets = {r[2] for r in proxy.object_gets() if r[1].endswith("model.safetensors")}
    size = os.path.getsize(next(os.path.join(d, "model.safetensors") for d, _, n in os.walk(cache)
                                if "model.safetensors" in n))
    chunks = -(-size // (64 * 1024))
    assert len(safetensors_gets) == chunks  # every range once: frontend, core and draft share one download
