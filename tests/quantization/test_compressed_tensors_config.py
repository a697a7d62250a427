"""compressed-tensors configs: detected from config.json (quant_method "compressed-tensors", either spelling from the
user), read as llm-compressor writes them; every malformed field is a ValueError naming it and its allowed values,
every scheme Pagoda does not run is "not supported yet" naming the scheme; per-layer schemes follow the groups'
targets ("Linear", names, "re:" regexes) and `ignore`, fused layers all or nothing."""

from __future__ import annotations

import copy
import re
from types import SimpleNamespace

import pytest

from pagoda.model_executor.layers.linear import UnquantizedLinearMethod
from pagoda.model_executor.layers.quantization import resolve_quantization
from pagoda.model_executor.layers.quantization.compressed_tensors import CompressedTensorsConfig
from pagoda.model_executor.layers.quantization.compressed_tensors_int8 import Int8W8A8LinearMethod
from pagoda.model_executor.layers.quantization.compressed_tensors_wna16 import WNA16LinearMethod
from pagoda.model_executor.layers.quantization.fp8 import Fp8LinearMethod
from pagoda.tiny_compressed_tensors import quant_args, quantization_config

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
W4A16 = quantization_config("W4A16", 32, True, "channel", "dynamic", ["lm_head"])
FP8 = quantization_config("FP8", None, True, "channel", "static", ["lm_head"])
INT8 = quantization_config("W8A8", None, True, "channel", "dynamic", ["lm_head"])
SOURCE = "config.json quantization_config"
G0 = SOURCE + r"\.config_groups\.group_0"


def edited(base: dict, edit) -> dict:
    config = copy.deepcopy(base)
    edit(config)
    return config


def group0(config: dict) -> dict:
    return config["config_groups"]["group_0"]


def resolve(quant: dict):
    return resolve_quantization(None, SimpleNamespace(quantization_config=quant), None)


@pytest.mark.parametrize("base", [W4A16, FP8, INT8])
def test_detected_from_the_checkpoint(base):
    assert resolve(base) == ("compressed-tensors", base)
    for user in ("compressed-tensors", "compressed_tensors"):
        assert resolve_quantization(user, SimpleNamespace(compression_config=base), None)[0] == "compressed-tensors"


def test_mismatch_with_the_users_method():
    with pytest.raises(ValueError, match="quantization='awq'.*does not match the checkpoint's method 'compressed-"):
        resolve_quantization("awq", SimpleNamespace(quantization_config=W4A16), None)


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.pop("config_groups"), rf"{SOURCE}\.config_groups is required"),
    (lambda c: c.update(config_groups=[]), rf"{SOURCE}\.config_groups must be a non-empty JSON object"),
    (lambda c: group0(c).update(targets="Linear"), rf"{G0}\.targets must be a non-empty list"),
    (lambda c: group0(c).update(targets=["re:(unclosed"]), rf"{G0}\.targets entry 're:\(unclosed' is not"),
    (lambda c: c.update(ignore=["lm_head", "re:*"]), rf"{SOURCE}\.ignore entry 're:\*' is not a valid regular"),
    (lambda c: group0(c)["weights"].update(type="uint"), rf"{G0}\.weights\.type='uint' is not one of \['int',"),
    (lambda c: group0(c)["weights"].update(num_bits="4"), rf"{G0}\.weights\.num_bits='4' is not a bit width"),
    (lambda c: group0(c)["weights"].update(symmetric="yes"), rf"{G0}\.weights\.symmetric='yes' must be true or false"),
    (lambda c: group0(c)["weights"].update(strategy="row"), rf"{G0}\.weights\.strategy='row' is not one of \['tensor'"),
    (lambda c: group0(c)["weights"].update(group_size=None), rf"{G0}\.weights\.group_size=None: strategy 'group'"),
    (lambda c: group0(c)["weights"].update(group_size=0), rf"{G0}\.weights\.group_size=0 is not a group size"),
    (lambda c: group0(c)["weights"].update(dynamic="sometimes"), rf"{G0}\.weights\.dynamic='sometimes' is not one of"),
    (lambda c: group0(c)["weights"].update(actorder="random"), rf"{G0}\.weights\.actorder='random' is not one of"),
    (lambda c: group0(c).update(format="bogus"), rf"{G0}\.format='bogus' is not a compressed-tensors format"),
    (lambda c: c.update(format="bogus"), rf"{SOURCE}\.format='bogus' is not a compressed-tensors format"),
    (lambda c: (group0(c).pop("format"), c.pop("format")), rf"{G0}\.format \(or the global format\) is required"),
])
def test_malformed_fields_are_named(edit, needle):
    with pytest.raises(ValueError, match=needle):
        resolve(edited(W4A16, edit))


def test_ignore_of_the_wrong_type():
    with pytest.raises(TypeError, match=rf"{SOURCE}\.ignore must be a list of module names"):
        resolve(edited(W4A16, lambda c: c.update(ignore="lm_head")))


@pytest.mark.parametrize("base, edit, needle", [
    (W4A16, lambda c: group0(c).update(input_activations=quant_args(8, "int", True, "token", dynamic=True)),
     r"W4A8 \(pack-quantized weights with input_activations quantized\) is not supported yet"),
    (W4A16, lambda c: group0(c)["weights"].update(actorder="group"), r"W4A16 with activation order"),
    (W4A16, lambda c: group0(c)["weights"].update(strategy="tensor", group_size=None), "W4A16 per tensor"),
    (W4A16, lambda c: group0(c)["weights"].update(num_bits=2), "W2A16 int"),
    (FP8, lambda c: group0(c).update(input_activations=None), r"W8A16 FP8 \(fp8 weights with activations in the model"),
    (FP8, lambda c: group0(c)["weights"].update(strategy="block", block_structure=[128, 128]), "block-wise W8A8"),
    (FP8, lambda c: group0(c)["input_activations"].update(dynamic=True, strategy="tensor"),
     "dynamic input activations per tensor"),
    (FP8, lambda c: group0(c)["input_activations"].update(strategy="token"), "static input activations per token"),
    (INT8, lambda c: group0(c)["input_activations"].update(symmetric=False), r"W8A8 int8 \(asymmetric input"),
    (INT8, lambda c: group0(c)["weights"].update(symmetric=False), "W8A8 int"),
    (INT8, lambda c: group0(c).update(input_activations=None), "W8A16 int8"),
    (INT8, lambda c: group0(c).update(weights=None), "activation-only quantization"),
    (INT8, lambda c: group0(c).update(format="nvfp4-pack-quantized"), r"format='nvfp4-pack-quantized' is not"),
    (INT8, lambda c: group0(c).update(output_activations=quant_args(8, "int", True, "token")), "output_activations"),
    (INT8, lambda c: c.update(kv_cache_scheme=quant_args(8, "float", True, "tensor")), r"kv_cache_scheme"),
    (INT8, lambda c: c.update(sparsity_config={"format": "sparse-24-bitmask"}), r"sparsity_config"),
    (INT8, lambda c: c.update(quantization_status="frozen"), r"quantization_status='frozen'"),
])
def test_unsupported_schemes_are_named(base, edit, needle):
    with pytest.raises(ValueError, match="not supported yet") as info:
        resolve(edited(base, edit))
    assert re.search(needle, str(info.value)), str(info.value)


def methods(quant: dict, names: list[str]) -> dict:
    config = CompressedTensorsConfig.from_config(quant)
    config.packed_modules_mapping = PACKED
    return {name: type(config.get_linear_method(None, name)) for name in names}


L0 = "model.layers.0."
NAMES = [L0 + "self_attn.qkv_proj", L0 + "self_attn.o_proj", L0 + "mlp.gate_up_proj", L0 + "mlp.down_proj"]


def test_groups_by_class_name_regex_and_name():
    quant = copy.deepcopy(FP8)
    quant["format"] = "mixed-precision"
    quant["config_groups"] = {
        "attn_int4": {**copy.deepcopy(group0(W4A16)), "targets": ["re:.*self_attn\\.[qkv]_proj$"]},
        "down_int8": {**copy.deepcopy(group0(INT8)), "targets": [L0 + "mlp.down_proj"]},
        "rest_fp8": {**group0(quant), "targets": ["Linear"]},
    }
    assert methods(quant, NAMES) == {NAMES[0]: WNA16LinearMethod, NAMES[1]: Fp8LinearMethod,
                                     NAMES[2]: Fp8LinearMethod, NAMES[3]: Int8W8A8LinearMethod}
    group0_only = edited(W4A16, lambda c: group0(c).update(targets=["re:.*down_proj"]))  # nothing else targeted
    assert methods(group0_only, NAMES) == {NAMES[0]: UnquantizedLinearMethod, NAMES[1]: UnquantizedLinearMethod,
                                           NAMES[2]: UnquantizedLinearMethod, NAMES[3]: WNA16LinearMethod}
    other_class = edited(W4A16, lambda c: group0(c).update(targets=["Embedding"]))
    assert set(methods(other_class, NAMES).values()) == {UnquantizedLinearMethod}


def test_ignore_names_and_regexes_fused_all_or_nothing():
    quant = edited(W4A16, lambda c: c.update(ignore=["lm_head", "re:.*self_attn\\.[qkv]_proj", L0 + "mlp.down_proj"]))
    got = methods(quant, NAMES)
    assert got[NAMES[0]] is UnquantizedLinearMethod and got[NAMES[3]] is UnquantizedLinearMethod
    assert got[NAMES[1]] is WNA16LinearMethod and got[NAMES[2]] is WNA16LinearMethod
    fused_name = edited(W4A16, lambda c: c.update(ignore=[L0 + "mlp.gate_up_proj"]))
    assert methods(fused_name, NAMES)[NAMES[2]] is UnquantizedLinearMethod
    partial = edited(W4A16, lambda c: c.update(ignore=[L0 + "mlp.gate_proj"]))
    with pytest.raises(ValueError, match=r"names \['model.layers.0.mlp.gate_proj'\] but not all pieces of the fused"):
        methods(partial, NAMES)


def test_fused_pieces_with_different_schemes():
    quant = copy.deepcopy(W4A16)
    quant["config_groups"]["q_fp8"] = {**copy.deepcopy(group0(FP8)), "targets": [L0 + "self_attn.q_proj"]}
    quant["config_groups"] = {"q_fp8": quant["config_groups"].pop("q_fp8"), **quant["config_groups"]}
    with pytest.raises(ValueError, match=r"fused layer model.layers.0.self_attn.qkv_proj different schemes.*'q_fp8'"):
        methods(quant, NAMES)
    # equal schemes in different groups are fine
    quant["config_groups"]["q_fp8"] = {**copy.deepcopy(group0(W4A16)), "targets": [L0 + "self_attn.q_proj"]}
    assert methods(quant, NAMES)[NAMES[0]] is WNA16LinearMethod
