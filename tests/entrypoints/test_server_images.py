"""A vision-language model behind the OpenAI chat API with the seed's request shape (text then image_url parts):
data: URLs, http URLs from a local server, file:// only under --allowed-local-media-path; the reply equals the
offline LLM.chat's, and bad images are 400s naming the messages."""

from __future__ import annotations

import base64
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import openai
import pytest
from PIL import Image

from openai_server_utils import MODEL_NAME

QUESTION = "What is in this image?"


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(seed)).decode()


def _messages(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from pagoda.tiny_models import make_llava_checkpoint

    return make_llava_checkpoint(str(tmp_path_factory.mktemp("serve-llava")), seed=5)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    (folder / "local.png").write_bytes(_png(3))
    return folder


@pytest.fixture(scope="module")
def image_server():
    body = _png(2)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/picture.png"
    httpd.shutdown()


@pytest.fixture(scope="module")
def vlm_server(start_server, llava_dir, media_dir):
    # float32 as the offline engines here (on a GPU "auto" would run the float32 checkpoint in half precision)
    return start_server(["--model", llava_dir, "--served-model-name", MODEL_NAME, "--max-model-len", "256", "--dtype", "float32",
                         "--disable-uvicorn-access-log", "--allowed-local-media-path", str(media_dir),
                         "--limit-mm-per-prompt", '{"image": 2}'])


def test_chat_with_images_equals_offline(vlm_server, llava_dir, media_dir, image_server):
    from pagoda import LLM, SamplingParams

    client = vlm_server.client()
    llm = LLM(llava_dir, dtype="float32", max_model_len=256, kv_cache_memory_bytes=64 << 20,
              allowed_local_media_path=str(media_dir))
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    for url in (_data_url(1), image_server, f"file://{media_dir}/local.png"):
        reply = client.chat.completions.create(model=MODEL_NAME, messages=_messages(url), max_tokens=10,
                                               temperature=0.0, extra_body={"ignore_eos": True})
        offline = llm.chat(_messages(url), params, use_tqdm=False)
        assert reply.choices[0].message.content == offline[0].outputs[0].text
        assert reply.usage.prompt_tokens == len(offline[0].prompt_token_ids)


def test_bad_images_are_400s_naming_the_part(vlm_server, media_dir):
    client = vlm_server.client()
    cases = [
        (_messages("data:image/png;base64,AAAA"), r"messages\[0\].content\[1\]: the data is not an image"),
        (_messages("file:///etc/hostname"), "outside --allowed-local-media-path"),
        (_messages("gopher://x"), "is not a data:, http"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(i)}} for i in range(3)]}],
         r"3 images, more than the 2"),
    ]
    for messages, pattern in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=4)
        assert info.value.status_code == 400
        assert re.search(pattern, info.value.message), info.value.message


def test_mm_processor_kwargs_reach_the_processor(vlm_server, llava_dir):
    from pagoda import LLM, SamplingParams

    client = vlm_server.client()
    options = {"do_normalize": False}
    reply = client.chat.completions.create(model=MODEL_NAME, messages=_messages(_data_url(1)), max_tokens=10,
                                           temperature=0.0, extra_body={"ignore_eos": True,
                                                                        "mm_processor_kwargs": options})
    llm = LLM(llava_dir, dtype="float32", max_model_len=256, kv_cache_memory_bytes=64 << 20)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    changed = llm.chat(_messages(_data_url(1)), params, mm_processor_kwargs=options, use_tqdm=False)
    default = llm.chat(_messages(_data_url(1)), params, use_tqdm=False)
    assert reply.choices[0].message.content == changed[0].outputs[0].text
    assert changed[0].outputs[0].token_ids != default[0].outputs[0].token_ids  # the option changed the pixels
