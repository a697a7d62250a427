"""Every linear layer knows its checkpoint name (`prefix`), and quantization configs skip layers by it:
prefixes equal module names and the checkpoint's tensor names (fused layers: their pieces'), for Llama,
Qwen2, OPT, GPT-2 and BERT, and for the text model inside LLaVA and Qwen2.5-VL; skip lists match vLLM's
three rules, fused layers all or nothing, and `lm_head` is never quantized."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from pagoda.attention.torch_backend import TorchAttentionBackend
from pagoda.config import ModelConfig
from pagoda.engine_args import EngineArgs
from pagoda.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from pagoda.model_executor.layers.quantization.fp8 import Fp8Config, Fp8LinearMethod
from pagoda.model_executor.layers.quantization.skip import is_layer_skipped
from pagoda.model_executor.model_loader.loader import instantiate_model
from pagoda.model_executor.models.registry import ModelRegistry

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def shell(folder: str, quant: dict | None = None, quantization: str | None = None, **kwargs):
    """The model of `folder` built (on the meta device) with the quantization config the loader would give it."""
    model_config = EngineArgs(model=folder, device="cpu", dtype="float32", quantization=quantization,
                              **kwargs).create_config().model
    if quant is not None:
        model_config = ModelConfig(**{**vars(model_config), "quantization": "fp8", "quantization_config": quant})
    cls = ModelRegistry.resolve_model_cls(model_config.hf_config.architectures)
    with torch.device("meta"):
        return instantiate_model(cls, model_config, TorchAttentionBackend())


def linears(model) -> dict[str, LinearBase]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearBase)}


def checkpoint_names(folder: str) -> set[str]:
    with safe_open(f"{folder}/model.safetensors", framework="pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("arch, expected", [
    ("LlamaForCausalLM", "model.layers.1.self_attn.qkv_proj"),
    ("Qwen2ForCausalLM", "model.layers.0.mlp.gate_up_proj"),
    ("OPTForCausalLM", "model.decoder.layers.1.fc2"),
    ("GPT2LMHeadModel", "transformer.h.0.attn.c_attn"),
])
def test_prefixes_are_checkpoint_names(arch, expected, float_checkpoint):
    folder = float_checkpoint(arch)
    model = shell(folder, quantization="fp8")
    layers = linears(model)
    assert expected in layers
    names = checkpoint_names(folder)
    mapping = getattr(type(model), "packed_modules_mapping", {})
    for name, layer in layers.items():
        assert layer.prefix == name
        head, _, last = name.rpartition(".")
        pieces = [f"{head}.{p}" for p in mapping.get(last, [last])]
        assert all(p + ".weight" in names for p in pieces), (name, pieces)
        assert isinstance(layer.linear_method, Fp8LinearMethod)


def test_bert_prefixes(tmp_path):
    from pagoda.model_executor.models.bert import BertModel
    from transformers import BertConfig

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    with torch.device("meta"):
        model = BertModel(config, quant_config=Fp8Config.online())
    names = sorted(linears(model))
    assert names[:4] == ["encoder.layer.0.attention.output.dense", "encoder.layer.0.attention.self.qkv_proj",
                         "encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense"]
    assert all(m.prefix == n for n, m in linears(model).items())


def test_unquantized_models_are_built_as_before(float_checkpoint):
    model = shell(float_checkpoint("LlamaForCausalLM"))
    assert all(isinstance(m.linear_method, UnquantizedLinearMethod) for m in linears(model).values())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_quantized_shell_has_fp8_weights(fp8_checkpoint, float_checkpoint):
    """What a weights-fit check measures on the meta device: FP8 layers take a quarter of fp32's bytes."""
    def linear_bytes(model):
        return sum(p.numel() * p.element_size() for m in linears(model).values() for p in m.parameters())

    fp8, plain = shell(fp8_checkpoint("LlamaForCausalLM")), shell(float_checkpoint("LlamaForCausalLM"))
    assert linear_bytes(fp8) < 0.3 * linear_bytes(plain)


def test_skip_list_and_lm_head(float_checkpoint):
    folder = float_checkpoint("LlamaForCausalLM")
    ignored = ["lm_head", "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.q_proj",
               "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"]
    model = shell(folder, {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ignored})
    plain = {n for n, m in linears(model).items() if isinstance(m.linear_method, UnquantizedLinearMethod)}
    assert plain == {"model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.qkv_proj"}
    assert model.model.layers[0].self_attn.o_proj.weight.dtype == torch.float32
    assert model.model.layers[0].self_attn.qkv_proj.weight.dtype == torch.float8_e4m3fn
    assert model.lm_head.weight.dtype == torch.float32  # the LM head is never an FP8 layer (as in vLLM)
    with pytest.raises(ValueError, match="not all pieces of the fused layer model.layers.0.mlp.gate_up_proj"):
        shell(folder, {"quant_method": "fp8", "activation_scheme": "dynamic",
                       "ignored_layers": ["model.layers.0.mlp.gate_proj"]})


def test_skip_rules():
    prefix = "model.layers.0.self_attn.qkv_proj"
    assert is_layer_skipped(prefix, ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                                     "model.layers.0.self_attn.v_proj"], PACKED)
    assert not is_layer_skipped(prefix, ["self_attn"], PACKED, "exact")  # FP8: whole names only
    assert is_layer_skipped(prefix, ["self_attn"], PACKED, "substr")  # AWQ / transformers: any part
    assert is_layer_skipped("model.layers.3.mlp.down_proj", ["re:.*mlp.down_proj$"], PACKED, "ignore")
    assert not is_layer_skipped("model.layers.3.mlp.down_proj", ["re:.*up_proj"], PACKED, "ignore")
    assert is_layer_skipped("model.layers.3.mlp.gate_up_proj", ["re:model.layers.3.mlp.*"], PACKED, "ignore")
    assert not is_layer_skipped(prefix, [], PACKED)
    with pytest.raises(ValueError, match="skip-list rule"):
        is_layer_skipped(prefix, ["x"], PACKED, "fuzzy")


def test_llava_text_model_prefixes_and_skip_list_names(tmp_path, tok_dir):
    from pagoda.tiny_models import make_llava_checkpoint

    folder = make_llava_checkpoint(str(tmp_path / "llava"), tok_dir)
    # transformers 5 names the text model "model.language_model.*"; the hub layout "language_model.model.*"
    ignored = ["model.language_model.layers.0.mlp.down_proj", "language_model.model.layers.1.self_attn.o_proj",
               "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1", "lm_head"]
    model = shell(folder, {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ignored},
                  limit_mm_per_prompt={"image": 1})
    layers = linears(model)
    assert all(name.startswith("language_model.model.layers.") and m.prefix == name for name, m in layers.items())
    plain = {n for n, m in layers.items() if isinstance(m.linear_method, UnquantizedLinearMethod)}
    assert plain == {"language_model.model.layers.0.mlp.down_proj", "language_model.model.layers.1.self_attn.o_proj"}
    assert model.vision_tower.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.float32
    assert type(model).module_name("model.vision_tower.encoder.layers.0.mlp.fc1") == \
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1"


def test_qwen2_5_vl_text_model_prefixes(tmp_path, tok_dir):
    from pagoda.tiny_models import make_qwen2_5_vl_checkpoint

    folder = make_qwen2_5_vl_checkpoint(str(tmp_path / "qwen-vl"), tok_dir)
    ignored = ["model.language_model.layers.1.mlp.down_proj"]
    model = shell(folder, {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ignored})
    layers = linears(model)
    assert layers and all(n.startswith("language_model.model.layers.") and m.prefix == n for n, m in layers.items())
    plain = {n for n, m in layers.items() if isinstance(m.linear_method, UnquantizedLinearMethod)}
    assert plain == {"language_model.model.layers.1.mlp.down_proj"}
