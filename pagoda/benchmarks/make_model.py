"""Write a config-only model folder of a real shape (no weights) for benchmarks.

`python -m pagoda.benchmarks.make_model OUT_DIR [--shape llama3-8b] [--tokenizer word|bpe|text] [--quantization awq|gptq]`
writes
`config.json`, `generation_config.json` and a synthetic tokenizer covering the whole vocabulary, so a
server can stream text and count tokens: `word` (the default) decodes token i to "t{i}"; `bpe` is a
byte-level BPE whose tokens are random strings of mostly printable ASCII (seeded), with the shape's
BOS / EOS and reserved special tokens at the top, as Llama 3's, so that grammars (structured output)
find a large vocabulary to mask; `text` is a byte-level BPE trained on the standard library's sources, whose
tokens are words and code pieces as a real model's are (a fairer cost for grammar masks). Pagoda loads it with `--load-format dummy`; the hf backend
initialises random weights from the config on the GPU. `--quantization awq|gptq` adds the checkpoint's
`quantization_config` (4-bit, group 128: AutoAWQ's GEMM layout, or GPTQ without desc_act), so `--load-format
dummy` builds the int4 layers (weights zero) for timing the int4 kernels.

Invariants: no weights are written; the tokenizer's size equals the config's vocab_size; the
folder is complete for `AutoConfig`, `AutoTokenizer` and `AutoModelForCausalLM.from_config`.
"""

from __future__ import annotations

import argparse
import json
import os

SHAPES = {
    "llama3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "dtype": "bfloat16",
    },
}
# Llama-3.1-8B: the 8B's shape with 128k positions (llama3 rope scaling), for long-context runs (suite W9).
SHAPES["llama3.1-8b"] = {**SHAPES["llama3-8b"], "max_position_embeddings": 131072,
                         "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8192}}
# Llama-3.2-1B's shape (the usual draft model of an 8B target: same vocabulary), positions capped like the 8B's.
SHAPES["llama3.2-1b"] = {**SHAPES["llama3-8b"], "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True}

# Llama-3-70B's shape (meta-llama/Meta-Llama-3-70B): ~141 GB in bf16, more than one H200 holds; for tensor- and
# pipeline-parallel runs (issue 22).
SHAPES["llama3-70b"] = {**SHAPES["llama3-8b"], "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128}

# LLaVA-1.5-7B's shape (llava-hf/llava-1.5-7b-hf): CLIP ViT-L/14 at 336 px (576 image tokens) + a Llama-2-7B text
# model; its vocabulary has "<image>" at 32000. Written with transformers' own config and processor classes.
LLAVA_SHAPES = {
    "llava-1.5-7b": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
        "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
                     bos_token_id=1, eos_token_id=2, pad_token_id=32001, tie_word_embeddings=False),
        "image_token_index": 32000,
    },
}
LLAVA_CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'].upper() }}: {{ message['content'] }}\n"
                       "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def write_tokenizer(folder: str, vocab_size: int, bos: int, eos: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    vocab["<unk>"] = vocab.pop(f"t{vocab_size - 1}") if vocab_size > 2 else vocab_size
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=f"t{bos}" if bos < vocab_size - 1 else None,
        eos_token=f"t{eos}" if eos < vocab_size - 1 else None,
        unk_token="<unk>",
    )
    fast.save_pretrained(folder)


def write_bpe_tokenizer(folder: str, vocab_size: int, bos: int, eos: int, seed: int = 0) -> None:
    """A byte-level BPE of `vocab_size` ids: ids from min(bos, eos) up are special tokens, the rest are
    the 256 byte symbols and merges of random pairs (tokens of at most 12 bytes)."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    num_regular = min(bos, eos)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    printable = [symbol for symbol in alphabet
                 if symbol.isascii() and symbol.isprintable()] + ["Ġ"] * 20  # "Ġ" is the space
    rng = random.Random(seed)
    tokens, merges = list(printable), []
    while len(vocab) < num_regular:
        left, right = rng.choice(tokens), rng.choice(tokens if rng.random() < 0.5 else printable)
        merged = left + right
        if len(merged) > 12 or merged in vocab:
            continue
        vocab[merged] = len(vocab)
        merges.append((left, right))
        tokens.append(merged)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    _save_with_specials(tok, folder, vocab_size, bos, eos)


def _save_with_specials(tok, folder: str, vocab_size: int, bos: int, eos: int) -> None:
    """Top `tok` up to min(bos, eos) ids with unused special tokens, add the shape's specials from there (Llama 3's
    BOS / EOS and reserved tokens) and save it as a transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast

    num_regular = min(bos, eos)
    specials = {bos: "<|begin_of_text|>", eos: "<|end_of_text|>"}
    tok.add_special_tokens([f"<|unused_{i}|>" for i in range(tok.get_vocab_size(), num_regular)]
                           + [specials.get(i, f"<|reserved_special_token_{i - num_regular}|>")
                              for i in range(num_regular, vocab_size)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[bos], eos_token=specials[eos])
    fast.save_pretrained(folder)


def _standard_library_sources(max_bytes: int | None = None) -> list[str]:
    """This interpreter's standard-library sources (sorted; none from site-packages), up to about `max_bytes`."""
    import glob
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(p for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                   if "site-packages" not in p and "dist-packages" not in p)
    chosen, total = [], 0
    for path in paths:
        if max_bytes is not None and total >= max_bytes:
            break
        chosen.append(path)
        total += os.path.getsize(path)
    return chosen


def write_text_bpe_tokenizer(folder: str, vocab_size: int, bos: int, eos: int, max_bytes: int | None = None) -> None:
    """A byte-level BPE trained on real text: this interpreter's standard-library sources (code, English
    docstrings and comments; ~30 MB, about ten seconds), so its tokens are words and code pieces as in a real
    model's vocabulary rather than random strings. Ids below min(bos, eos) are the learned tokens, topped up
    with reserved special tokens where the sources run out of merges; ids from min(bos, eos) up are the shape's
    special tokens, as in `write_bpe_tokenizer`. Another Python version trains a (slightly) different vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    num_regular = min(bos, eos)

    def texts():
        for path in _standard_library_sources(max_bytes):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=num_regular, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(), trainer)
    _save_with_specials(tok, folder, vocab_size, bos, eos)


def make_llava_model(folder: str, shape: str) -> str:
    """A config-only LLaVA folder: config, word-level tokenizer (with "<image>"), CLIP image processor, processor."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor,
                              PreTrainedTokenizerFast)

    spec = LLAVA_SHAPES[shape]
    text, image_id = spec["text"], spec["image_token_index"]
    config = LlavaConfig(vision_config=CLIPVisionConfig(**spec["vision"]), text_config=LlamaConfig(**text),
                         image_token_index=image_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "float16"
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"]}, f, indent=2)
    write_tokenizer(folder, text["vocab_size"], text["bos_token_id"], text["eos_token_id"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": [f"t{image_id}"]})  # the image token
    size = spec["vision"]["image_size"]
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                                                  crop_size={"height": size, "width": size}),
                               tokenizer=tokenizer, patch_size=spec["vision"]["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token=f"t{image_id}", chat_template=LLAVA_CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


QUANTIZATION_CONFIGS = {  # 4-bit, group 128: what most int4 checkpoints on the hub use
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
}


def make_model(folder: str, shape: str = "llama3-8b", tokenizer: bool | str = True,
               quantization: str | None = None) -> str:
    if shape in LLAVA_SHAPES:
        if quantization is not None:
            raise ValueError("--quantization is for the language-model shapes")
        return make_llava_model(folder, shape)
    config = dict(SHAPES[shape])
    if quantization is not None:
        config["quantization_config"] = dict(QUANTIZATION_CONFIGS[quantization])
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, f, indent=2)
    if tokenizer == "bpe":
        write_bpe_tokenizer(folder, config["vocab_size"], config["bos_token_id"], config["eos_token_id"])
    elif tokenizer == "text":
        write_text_bpe_tokenizer(folder, config["vocab_size"], config["bos_token_id"], config["eos_token_id"])
    elif tokenizer:
        write_tokenizer(folder, config["vocab_size"], config["bos_token_id"], config["eos_token_id"])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES) + sorted(LLAVA_SHAPES))
    parser.add_argument("--no-tokenizer", action="store_true")
    parser.add_argument("--tokenizer", default="word", choices=["word", "bpe", "text"],
                        help="word: token i is 't{i}'; bpe: a byte-level BPE of random strings (for grammars); "
                             "text: a byte-level BPE trained on the standard library's sources (real words)")
    parser.add_argument("--quantization", default=None, choices=sorted(QUANTIZATION_CONFIGS),
                        help="mark the folder as a 4-bit, group-128 checkpoint of this format (dummy int4 weights)")
    args = parser.parse_args()
    tokenizer = False if args.no_tokenizer else (args.tokenizer if args.tokenizer in ("bpe", "text") else True)
    print(make_model(args.folder, args.shape, tokenizer, args.quantization))


if __name__ == "__main__":
    main()
