"""POST /tokenize and /detokenize (vLLM's extra endpoints).

Invariants:
- /tokenize tokenizes exactly as the generation endpoints do: a `prompt` with add_special_tokens
  (default True) like /v1/completions, `messages` through the chat template with add_special_tokens
  (default False) like /v1/chat/completions. So `count` is the prompt length those endpoints use.
- /detokenize of /tokenize's tokens gives back the text (special tokens kept, as vLLM does).
- The /tokenize answer has vLLM's four keys: count, max_model_len, tokens, and token_strs (the
  tokenizer's token strings with `return_token_strs`, else null).
- Both endpoints take the generation endpoints' limits: the prompt-size cap before tokenizing, the
  request-template rule (--trust-request-chat-template, the sandbox), and large inputs are tokenized,
  rendered and decoded on worker threads (offload.py), never on the event loop.
"""

from __future__ import annotations

from pagoda.entrypoints.openai.errors import APIError
from pagoda.entrypoints.openai.protocol import DetokenizeRequest, TokenizeRequest
from pagoda.entrypoints.openai.serving_chat import OpenAIServingChat


class OpenAIServingTokenization:
    def __init__(self, chat: OpenAIServingChat) -> None:
        self.chat = chat  # shares the chat renderer, tokenizer and model names

    async def tokenize(self, request: TokenizeRequest) -> dict:
        serving = self.chat
        serving.check_model(request.model)
        serving.check_fields(request)
        if (request.prompt is None) == (request.messages is None):
            raise APIError("give exactly one of prompt (text) or messages (a chat)", 400,
                           "prompt" if request.prompt is None else "messages")
        if request.messages is not None:
            if request.add_special_tokens is None:
                request.add_special_tokens = False
            _, ids = await serving.render_prompt(request)
        else:
            add_special = True if request.add_special_tokens is None else request.add_special_tokens
            ids = await serving.tokenize_prompt(request.prompt, add_special)
        token_strs = await serving.offload.run(len(ids), serving.tokenizer.convert_ids_to_tokens, ids) \
            if request.return_token_strs else None
        return {"count": len(ids), "max_model_len": serving.max_model_len, "tokens": ids, "token_strs": token_strs}

    async def detokenize(self, request: DetokenizeRequest) -> dict:
        serving = self.chat
        serving.check_model(request.model)
        serving.check_fields(request)
        tokenizer = serving.require_tokenizer("detokenize")
        vocab = serving.engine.model_config.vocab_size
        bad = [t for t in request.tokens if not 0 <= t < max(vocab, len(tokenizer))]
        if bad:
            raise APIError(f"tokens contains ids outside the vocabulary [0, {vocab}): {bad[:5]}", 400, "tokens")
        return {"prompt": await serving.offload.run(len(request.tokens), tokenizer.decode, request.tokens)}
