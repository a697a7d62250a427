"""Tiny real checkpoints and a real tokenizer, built locally in seconds (no model hub needed).

Used by every test and by the README's demo command. Everything here is deterministic: the
tokenizer is trained on a fixed, sorted list of standard-library files with fixed settings, and a
checkpoint's weights come from a generator seeded with `seed`.

Invariants:
- A folder written by `make_checkpoint` is an ordinary Hugging Face model folder: config.json,
  model.safetensors, tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja)
  and generation_config.json; `transformers.AutoModelForCausalLM.from_pretrained(folder)` loads it.
- The tokenizer adds `<|bos|>` in front of every encoded text (like Llama); the chat template
  starts with the BOS token too, so chat prompts are encoded with add_special_tokens=False.
- Weights are scaled up from transformers' defaults (fan-in-scaled Gaussian matrices, unit
  embeddings, jittered norms) so greedy decoding produces varied tokens instead of one repeated.
- Quantized checkpoints (FP8, AWQ, GPTQ) of the same tiny models: pagoda/tiny_quantized_models.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sysconfig
import tempfile

logger = logging.getLogger(__name__)

BOS, EOS, PAD, IM_START, IM_END = "<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]
TOKENIZER_VOCAB_SIZE = 2000
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_STDLIB_FILES = (
    "abc.py", "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "codecs.py",
    "collections/__init__.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "datetime.py",
    "difflib.py", "enum.py", "fnmatch.py", "fractions.py", "functools.py", "getopt.py", "gettext.py",
    "glob.py", "heapq.py", "hmac.py", "inspect.py", "ipaddress.py", "json/__init__.py",
    "json/decoder.py", "json/encoder.py", "keyword.py", "logging/__init__.py", "numbers.py",
    "operator.py", "optparse.py", "os.py", "pickle.py", "pprint.py", "queue.py", "random.py",
    "shlex.py", "shutil.py", "statistics.py", "string.py", "textwrap.py", "threading.py",
    "tokenize.py", "traceback.py", "types.py", "typing.py", "uuid.py", "warnings.py", "weakref.py",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# Architecture → (transformers config class name, base config kwargs of the tiny model).
_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=512)
_ARCH_CONFIGS: dict[str, tuple[str, dict]] = {
    "LlamaForCausalLM": ("LlamaConfig", {**_BASE, "num_key_value_heads": 2, "tie_word_embeddings": False}),
    "MistralForCausalLM": ("MistralConfig", {**_BASE, "num_key_value_heads": 2, "sliding_window": None,
                                             "tie_word_embeddings": False}),
    "Qwen2ForCausalLM": ("Qwen2Config", {**_BASE, "num_key_value_heads": 2, "tie_word_embeddings": False}),
    "Qwen3ForCausalLM": ("Qwen3Config", {**_BASE, "num_key_value_heads": 2, "head_dim": 32,
                                         "tie_word_embeddings": False}),
    "OPTForCausalLM": ("OPTConfig", {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "max_position_embeddings": 512,
                                     "word_embed_proj_dim": 64, "dropout": 0.0, "attention_dropout": 0.0}),
    "GPT2LMHeadModel": ("GPT2Config", {"n_embd": 64, "n_inner": 128, "n_layer": 2, "n_head": 4,
                                       "n_positions": 512, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                       "attn_pdrop": 0.0}),
}
SUPPORTED_ARCHS = tuple(_ARCH_CONFIGS)

DEMO_ARCH = "LlamaForCausalLM"
DEMO_CONFIG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=4, max_position_embeddings=2048)


def _training_files() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    files = [os.path.join(stdlib, name) for name in _STDLIB_FILES]
    return sorted(f for f in files if os.path.isfile(f))


def train_tokenizer(folder: str) -> str:
    """Train a ~2000-token byte-level BPE on standard-library sources and save it to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    files = _training_files()
    if not files:
        raise ValueError(f"no standard-library sources found under {sysconfig.get_paths()['stdlib']!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(folder, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def _copy_tokenizer(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in _TOKENIZER_FILES:
        path = os.path.join(src, name)
        if os.path.isfile(path):
            shutil.copy(path, os.path.join(dst, name))


def _special_ids(tokenizer_folder: str) -> dict[str, int]:
    with open(os.path.join(tokenizer_folder, "tokenizer.json")) as f:
        added = {t["content"]: t["id"] for t in json.load(f)["added_tokens"]}
    return {tok: added[tok] for tok in SPECIAL_TOKENS}


def _vocab_size(tokenizer_folder: str) -> int:
    with open(os.path.join(tokenizer_folder, "tokenizer.json")) as f:
        data = json.load(f)
    size = max(max(data["model"]["vocab"].values()), max(t["id"] for t in data["added_tokens"])) + 1
    return -(-size // 8) * 8  # 2000 tokens: no padded rows, so every id the model can emit decodes


def _build_config(arch: str, vocab_size: int, ids: dict[str, int], overrides: dict):
    import transformers

    if arch not in _ARCH_CONFIGS:
        raise ValueError(f"arch={arch!r} is not supported by make_checkpoint; supported: {list(SUPPORTED_ARCHS)}")
    config_name, base = _ARCH_CONFIGS[arch]
    kwargs = {
        **base,
        "vocab_size": vocab_size,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        **overrides,
    }
    config = getattr(transformers, config_name)(**kwargs)
    config.architectures = [arch]
    return config


def _reinit_weights(model, seed: int) -> None:
    """Re-draw weights at a scale that keeps tiny random models from collapsing onto one token."""
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
            params = dict(module.named_parameters(recurse=False))
            if not params:
                continue
            weight, bias = params.get("weight"), params.get("bias")
            if isinstance(module, (nn.Linear, Conv1D)):
                fan_in = weight.shape[1] if isinstance(module, nn.Linear) else weight.shape[0]
                weight.copy_(torch.randn(weight.shape, generator=gen) * (3.0 / math.sqrt(fan_in)))
            elif isinstance(module, nn.Embedding):
                weight.copy_(torch.randn(weight.shape, generator=gen) * (0.5 if "pos" in name or "wpe" in name else 1.0))
            elif weight is not None and weight.ndim == 1:  # norms
                weight.copy_(1.0 + 0.2 * torch.randn(weight.shape, generator=gen))
            if bias is not None:
                bias.copy_(0.1 * torch.randn(bias.shape, generator=gen))


def make_checkpoint(
    arch: str,
    folder: str,
    tokenizer_folder: str | None = None,
    *,
    dtype: str = "float32",
    seed: int = 0,
    **config_overrides,
) -> str:
    """Write a tiny random `arch` model (+ tokenizer, generation config) to `folder`; return `folder`.

    `config_overrides` are transformers config keywords (e.g. tie_word_embeddings=True,
    rope_scaling={...}, num_hidden_layers=3). Without `tokenizer_folder` a tokenizer is trained.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    os.makedirs(folder, exist_ok=True)
    if tokenizer_folder is None:
        train_tokenizer(folder)
    elif os.path.abspath(tokenizer_folder) != os.path.abspath(folder):
        _copy_tokenizer(tokenizer_folder, folder)
    ids = _special_ids(folder)
    config = _build_config(arch, _vocab_size(folder), ids, config_overrides)
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype name")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    _reinit_weights(model, seed)
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.save_pretrained(folder)
    GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids[IM_END]], pad_token_id=ids[PAD]
    ).save_pretrained(folder)
    logger.info("wrote a tiny %s checkpoint to %s", arch, folder)
    return folder


def ensure_demo_model(folder: str) -> str:
    """Build the demo model (a small Llama) in `folder` unless a complete one is already there."""
    folder = os.path.abspath(os.path.expanduser(folder))
    marker = os.path.join(folder, ".pagoda-demo-complete")
    if os.path.isfile(marker):
        return folder
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".pagoda-demo-", dir=parent)
    try:
        make_checkpoint(DEMO_ARCH, tmp, **DEMO_CONFIG)
        with open(os.path.join(tmp, ".pagoda-demo-complete"), "w") as f:
            f.write(DEMO_ARCH + "\n")
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


IMAGE_TOKEN = "<image>"
LLAVA_IMAGE_SIZE, LLAVA_PATCH_SIZE = 32, 8  # 16 patches: 16 image tokens per image ("default" drops CLS)
LLAVA_NEXT_GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32]]  # (height, width) tilings of 32x32 CLIP tiles


def make_llava_checkpoint(folder: str, tokenizer_folder: str | None = None, *, seed: int = 0,
                          text_arch: str = "LlamaForCausalLM") -> str:
    """Write a tiny random LlavaForConditionalGeneration (LLaVA-1.5 layout: CLIP vision tower, projector, a text
    model of `text_arch`: Llama, Mistral or Qwen2) with its real processor (LlavaProcessor: the tokenizer plus an
    "<image>" token, and a CLIP image processor) to `folder`; return `folder`."""
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor)

    return _make_vlm_checkpoint(folder, tokenizer_folder, seed, text_arch, LlavaConfig, {},
                                LlavaForConditionalGeneration, CLIPImageProcessor, {}, LlavaProcessor)


def make_llava_next_checkpoint(folder: str, tokenizer_folder: str | None = None, *, seed: int = 0) -> str:
    """Write a tiny random LlavaNextForConditionalGeneration (LLaVA-NeXT: any-resolution tiles of a 32x32 CLIP
    vision tower, projector, image_newline, Llama text model) with its real processor (LlavaNextProcessor: the
    tokenizer plus an "<image>" token, and a LLaVA-NeXT image processor) to `folder`; return `folder`."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    try:  # torchvision-free backend (torchvision does not import beside the CPU torch wheel)
        from transformers import LlavaNextImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import LlavaNextImageProcessor as ImageProcessor
    pinpoints = {"image_grid_pinpoints": LLAVA_NEXT_GRID_PINPOINTS}
    return _make_vlm_checkpoint(folder, tokenizer_folder, seed, "LlamaForCausalLM", LlavaNextConfig, pinpoints,
                                LlavaNextForConditionalGeneration, ImageProcessor, pinpoints, LlavaNextProcessor)


def _make_vlm_checkpoint(folder, tokenizer_folder, seed, text_arch, config_cls, config_extra, model_cls,
                         image_processor_cls, image_processor_extra, processor_cls) -> str:
    """The LLaVA builders' shared body: tokenizer with "<image>", tiny CLIP 32x32 / patch 8 tower, text config,
    random weights (_reinit_weights), processor, generation config."""
    import torch
    import transformers
    from transformers import CLIPVisionConfig, GenerationConfig, PreTrainedTokenizerFast

    os.makedirs(folder, exist_ok=True)
    if tokenizer_folder is None:
        train_tokenizer(folder)
    elif os.path.abspath(tokenizer_folder) != os.path.abspath(folder):
        _copy_tokenizer(tokenizer_folder, folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, IMAGE_TOKEN]})
    tokenizer.save_pretrained(folder)
    ids = _special_ids(folder)
    config_name, base = _ARCH_CONFIGS[text_arch]
    text = getattr(transformers, config_name)(**{**base, "vocab_size": _vocab_size(folder), "bos_token_id": ids[BOS],
                                                 "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]})
    vision = CLIPVisionConfig(image_size=LLAVA_IMAGE_SIZE, patch_size=LLAVA_PATCH_SIZE, hidden_size=32,
                              intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    config = config_cls(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        IMAGE_TOKEN), vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        **config_extra)
    config.architectures = [model_cls.__name__]
    torch.manual_seed(seed)
    model = model_cls(config)
    _reinit_weights(model, seed)
    model.config.dtype = torch.float32
    model.save_pretrained(folder)
    image_processor = image_processor_cls(size={"shortest_edge": LLAVA_IMAGE_SIZE},
                                          crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE},
                                          **image_processor_extra)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, patch_size=LLAVA_PATCH_SIZE,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    GenerationConfig(bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids[IM_END]],
                     pad_token_id=ids[PAD]).save_pretrained(folder)
    logger.info("wrote a tiny %s checkpoint to %s", model_cls.__name__, folder)
    return folder


QWEN_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VL_PATCH, QWEN_VL_MERGE = 4, 2
# Qwen2.5-VL's template shape: an image part becomes <|vision_start|><|image_pad|><|vision_end|>, which the
# processor expands to the image's merged-patch count.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_qwen2_5_vl_checkpoint(folder: str, tokenizer_folder: str | None = None, *, seed: int = 0) -> str:
    """Write a tiny random Qwen2_5_VLForConditionalGeneration (windowed ViT, patch 4, merge 2, windows of 2x2
    merge blocks, two full-attention blocks of four; a Qwen2 text model with M-RoPE) with its real processor
    (Qwen2_5_VLProcessor: the tokenizer plus the vision tokens, a Qwen2-VL image processor resizing to
    64-4096 pixels) to `folder`; return `folder`."""
    import torch
    from transformers import (GenerationConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                              Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)

    try:  # torchvision-free backend (torchvision does not import beside the CPU torch wheel)
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import Qwen2VLImageProcessor as ImageProcessor

    os.makedirs(folder, exist_ok=True)
    if tokenizer_folder is None:
        train_tokenizer(folder)
    elif os.path.abspath(tokenizer_folder) != os.path.abspath(folder):
        _copy_tokenizer(tokenizer_folder, folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, *QWEN_VL_TOKENS]})
    tokenizer.save_pretrained(folder)
    ids = _special_ids(folder)
    token_id = tokenizer.convert_tokens_to_ids
    _, base = _ARCH_CONFIGS["Qwen2ForCausalLM"]
    head_dim = base["hidden_size"] // base["num_attention_heads"]
    quarter = head_dim // 2 // 4  # rotary half-dims split t : h : w = 2 : 1 : 1 (Qwen's 16 : 24 : 24 shape)
    text = {**base, "vocab_size": _vocab_size(folder), "bos_token_id": ids[BOS], "eos_token_id": ids[EOS],
            "pad_token_id": ids[PAD],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]}}
    vision = dict(depth=4, fullatt_block_indexes=[1, 3], hidden_size=32, num_heads=4, intermediate_size=48,
                  patch_size=QWEN_VL_PATCH, temporal_patch_size=2, spatial_merge_size=QWEN_VL_MERGE,
                  window_size=2 * QWEN_VL_PATCH * QWEN_VL_MERGE, out_hidden_size=base["hidden_size"])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=token_id("<|image_pad|>"),
                              video_token_id=token_id("<|video_pad|>"),
                              vision_start_token_id=token_id("<|vision_start|>"),
                              vision_end_token_id=token_id("<|vision_end|>"),
                              tie_word_embeddings=False)
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _reinit_weights(model, seed)
    model.config.dtype = torch.float32
    model.save_pretrained(folder)
    unit = QWEN_VL_PATCH * QWEN_VL_MERGE
    image_processor = ImageProcessor(patch_size=QWEN_VL_PATCH, merge_size=QWEN_VL_MERGE, temporal_patch_size=2,
                                     size={"shortest_edge": unit * unit, "longest_edge": 4096})
    # The processor's files as Qwen/Qwen2.5-VL-*-Instruct ship them; Qwen2_5_VLProcessor itself cannot be built
    # without a video processor, which needs torchvision (multimodal/processing.py loads it images-only).
    image_processor.save_pretrained(folder)
    with open(os.path.join(folder, "processor_config.json"), "w") as f:
        json.dump({"processor_class": Qwen2_5_VLProcessor.__name__}, f)
    with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
        f.write(QWEN_VL_CHAT_TEMPLATE)
    GenerationConfig(bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids[IM_END]],
                     pad_token_id=ids[PAD]).save_pretrained(folder)
    logger.info("wrote a tiny Qwen2_5_VLForConditionalGeneration checkpoint to %s", folder)
    return folder
