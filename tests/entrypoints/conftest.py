"""Fixtures: a tiny model, and real servers on 127.0.0.1 (see openai_server_utils.py).

`server` is shared by the whole session (one start, ~10 s); modules that need a server of their own
(engine death, embeddings) use `start_server`.
"""

from __future__ import annotations

import openai
import pytest

from openai_server_utils import API_KEY, MAX_MODEL_LEN, MODEL_NAME, RemoteServer


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    from pagoda.tiny_models import make_checkpoint

    return make_checkpoint("LlamaForCausalLM", str(tmp_path_factory.mktemp("serve-llama")))


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """start_server(args, api_key=None) -> RemoteServer; every server started is closed when its test module ends
    (not the session: servers of every module alive at once, ~0.5 GB each with their engine cores, ran a 2-core,
    24 GiB CI machine out of memory)."""
    started: list[RemoteServer] = []

    def start(args: list[str], api_key: str | None = None, env: dict | None = None) -> RemoteServer:
        log = str(tmp_path_factory.mktemp("server-log") / "server.log")
        server = RemoteServer(args, log, api_key=api_key, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_dir):
    """The shared server: tiny Llama, API key, two model names, request-id headers, cached-token details,
    request chat templates trusted (rendered in the template sandbox)."""
    shared = RemoteServer([
        "--model", model_dir, "--served-model-name", MODEL_NAME, "alias-name", "--max-model-len", str(MAX_MODEL_LEN),
        "--enable-request-id-headers", "--enable-prompt-tokens-details", "--disable-uvicorn-access-log",
        "--disable-log-requests", "--max-request-body-bytes", str(1024 * 1024), "--max-logprobs", "5",
        "--trust-request-chat-template",
    ], str(tmp_path_factory.mktemp("server-log") / "server.log"), api_key=API_KEY)
    yield shared
    shared.close()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.client()
