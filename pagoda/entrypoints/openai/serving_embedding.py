"""POST /v1/embeddings: one vector per input, from a model served with task "embed".

`encoding_format` "float" gives lists of floats; "base64" gives the vector's bytes, base64-encoded:
float32 in the machine's byte order by default (what the official `openai` client asks for and
decodes), or vLLM's `embed_dtype` (float32, float16, bfloat16) and `endianness` (native, little, big).

`use_activation` (vLLM's current name) and `normalize` (its older one) both say whether the vector
is L2-normalized; unset, the model's pooler config decides (sentence-transformers' Normalize module).

Invariants:
- Every input is size-checked, tokenized (large ones on a worker thread) and length-checked before
  any is sent, and the number of inputs is checked against --max-pending-requests first (more than
  it: 400 naming `input`; more than fit now: 503); a request to a model that does not embed is a
  400 saying how to start one that does.
- Inputs run concurrently as engine requests `{request_id}-{i}`; `data[i]` answers `input[i]`.
- Usage counts prompt tokens only (completion_tokens 0), as vLLM does.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import Request

from pagoda.entrypoints.openai.errors import APIError
from pagoda.entrypoints.openai.protocol import EmbeddingRequest
from pagoda.entrypoints.openai.serving_engine import OpenAIServing, engine_errors, now


def _pooling_params_class() -> Any:
    try:
        from pagoda.pooling_params import PoolingParams
    except ImportError:
        return None
    return PoolingParams


class OpenAIServingEmbedding(OpenAIServing):
    @property
    def supported(self) -> bool:
        runner = getattr(self.engine.model_config, "runner_type", "generate")
        return runner == "pooling" and _pooling_params_class() is not None

    async def create_embedding(self, request: EmbeddingRequest, raw_request: Request | None) -> dict:
        self.check_model(request.model)
        self.check_fields(request)
        if not self.supported:
            raise APIError("this model does not produce embeddings; serve an embedding model (e.g. a BertModel "
                           "folder, or --task embed)", 400, "model")
        request_id = self.request_id(raw_request, request.request_id, "embd")
        engine_id = self.internal_id(request_id)
        inputs = await self._inputs(request)
        pooling_cls = _pooling_params_class()
        try:
            params = pooling_cls(truncate_prompt_tokens=request.truncate_prompt_tokens, dimensions=request.dimensions,
                                 normalize=request.normalize, use_activation=request.use_activation)
        except (ValueError, TypeError) as exc:
            raise APIError(str(exc), 400, _param(str(exc))) from None
        streams = []
        self.limits.check_capacity(self.engine, len(inputs))  # again: tokenizing awaited
        try:
            for i, (text, ids) in enumerate(inputs):  # no await until all are registered
                streams.append(self.add_request(f"{engine_id}-{i}", {"prompt": text, "prompt_token_ids": ids},
                                                params, request.priority,
                                                params_fields=frozenset(_PARAMS)))

            async def final(stream: Any) -> Any:
                result = None
                async for result in stream:
                    pass
                return result

            with engine_errors(user_errors=False):
                outputs = await asyncio.gather(*(final(s) for s in streams))
        finally:
            for stream in streams:
                stream.abort()
        data, num_prompt = [], 0
        for i, output in enumerate(outputs):
            num_prompt += len(output.prompt_token_ids)
            vector = output.outputs.data
            if request.encoding_format == "base64":
                embedding: Any = base64.b64encode(_vector_bytes(vector, request.embed_dtype, request.endianness))
                embedding = embedding.decode("ascii")
            else:
                embedding = vector.tolist()
            data.append({"index": i, "object": "embedding", "embedding": embedding})
        return {"id": request_id, "object": "list", "created": now(), "model": self.model_name, "data": data,
                "usage": {"prompt_tokens": num_prompt, "completion_tokens": 0, "total_tokens": num_prompt}}

    async def _inputs(self, request: EmbeddingRequest) -> list[tuple[str | None, list[int]]]:
        value, truncate = request.input, request.truncate_prompt_tokens
        if value is None:
            raise APIError("input is required: a string, a list of strings, or token ids", 400, "input")
        if isinstance(value, str):
            items: list = [value]
        elif not value:
            raise APIError("input must not be empty", 400, "input")
        elif isinstance(value[0], int):
            items = [list(value)]
        else:
            items = list(value)
        limit = getattr(self.engine, "max_pending_requests", None)
        if limit is not None and len(items) > limit:
            raise APIError(f"input has {len(items)} items, more than the server ever runs at once ({limit}, "
                           f"--max-pending-requests); allowed: at most {limit}", 400, "input")
        self.limits.check_capacity(self.engine, len(items))
        result = []
        for item in items:
            ids = await self.tokenize_prompt(item, request.add_special_tokens, truncate, "input") \
                if isinstance(item, str) else self.truncate(list(item), truncate)
            if not ids:
                raise APIError("input is empty: it must have at least one token", 400, "input")
            if len(ids) > self.max_model_len:
                raise APIError(f"This model's maximum context length is {self.max_model_len} tokens. However, an "
                               f"input has {len(ids)} tokens. Reduce the input or set truncate_prompt_tokens.", 400,
                               "input")
            result.append((item if isinstance(item, str) else None, ids))
        return result


_PARAMS = ("truncate_prompt_tokens", "dimensions", "normalize", "use_activation")


def _param(message: str) -> str | None:
    for name in _PARAMS:
        if message.startswith(name):
            return name
    return None


def _vector_bytes(vector: Any, embed_dtype: str, endianness: str) -> bytes:
    """The vector's bytes as `embed_dtype` in `endianness` byte order (vLLM's base64 payload)."""
    import torch

    tensor = vector if isinstance(vector, torch.Tensor) else torch.as_tensor(vector)
    order = {"native": "=", "little": "<", "big": ">"}[endianness]
    if embed_dtype == "bfloat16":  # numpy has no bfloat16: send its 16-bit patterns
        array = tensor.to(torch.bfloat16).view(torch.int16).numpy().astype(order + "i2")
    else:
        array = tensor.float().numpy().astype(order + ("f4" if embed_dtype == "float32" else "f2"))
    return array.tobytes()
