"""Which quantization a model runs with: detected from the checkpoint (config.json's quantization_config,
compression_config, text_config's, quantize_config.json / quant_config.json), confirmed or contradicted by
`quantization=` / --quantization / -q; every refusal is a ValueError naming the field and the allowed values."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from pagoda import LLM
from pagoda.engine_args import EngineArgs
from pagoda.model_executor.layers.quantization import (
    NOT_YET_METHODS,
    QUANTIZATION_METHODS,
    SUPPORTED_METHODS,
    resolve_quantization,
)
from pagoda.model_executor.layers.quantization.fp8 import Fp8Config

FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic"}


def config(**attrs):
    return SimpleNamespace(**attrs)


def test_method_names_are_vllms():
    assert list(SUPPORTED_METHODS) == ["fp8", "awq", "gptq", "compressed-tensors"]
    for name in ("bitsandbytes", "gguf", "modelopt", "awq_marlin", "gptq_marlin"):
        assert name in NOT_YET_METHODS
    assert len(set(QUANTIZATION_METHODS)) == len(QUANTIZATION_METHODS)


@pytest.mark.parametrize("user", [None, "fp8", "FP8"])
def test_checkpoint_method_is_detected_or_confirmed(user):
    assert resolve_quantization(user, config(quantization_config=dict(FP8)), None) == ("fp8", FP8)


def test_unquantized_checkpoint():
    assert resolve_quantization(None, config(), None) == (None, None)
    assert resolve_quantization("fp8", config(), None) == ("fp8", None)  # quantized at load time


def test_other_places_a_checkpoint_names_its_method(tmp_path):
    assert resolve_quantization(None, config(compression_config=dict(FP8)), None)[0] == "fp8"
    vlm = config(text_config=config(quantization_config=dict(FP8)))
    assert resolve_quantization(None, vlm, None)[0] == "fp8"
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128, "desc_act": False}))
    assert resolve_quantization(None, config(), str(tmp_path))[0] == "gptq"
    os.remove(tmp_path / "quantize_config.json")
    (tmp_path / "quant_config.json").write_text(json.dumps({"zero_point": True, "q_group_size": 128, "w_bit": 4,
                                                            "version": "GEMM"}))
    assert resolve_quantization(None, config(), str(tmp_path))[0] == "awq"


def test_mismatch_names_both_fields():
    with pytest.raises(ValueError) as info:
        resolve_quantization("fp8", config(quantization_config={"quant_method": "awq", "bits": 4}), None)
    message = str(info.value)
    assert "--quantization" in message and "config.json quantization_config.quant_method" in message
    assert "'awq'" in message and "'fp8'" in message


@pytest.mark.parametrize("user, needle", [
    ("int3", "is not a quantization method; supported: ['fp8', 'awq', 'gptq', 'compressed-tensors']"),
    ("gguf", "is not supported yet"),
    ("bitsandbytes", "is not supported yet"),
])
def test_user_names_unknown_or_not_yet(user, needle):
    with pytest.raises(ValueError, match="--quantization, -q") as info:
        resolve_quantization(user, config(), None)
    assert needle in str(info.value)


@pytest.mark.parametrize("quant, needle", [
    ({"quant_method": "quanto"}, "quant_method='quanto' is not a quantization method"),
    ({"bits": 4}, r"quantization_config.quant_method is required"),
    ({"quant_method": "bitsandbytes", "bits": 4}, "'bitsandbytes'.*not supported yet"),
    ({"quant_method": "compressed-tensors"}, r"config_groups is required"),
    ({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8"}}, "'modelopt'.*not supported yet"),
    ({"quant_method": "fp8"}, r"quantization_config.activation_scheme is required"),
    ({"quant_method": "fp8", "activation_scheme": "per_token"},
     r"quantization_config.activation_scheme='per_token' is not one of \['dynamic', 'static'\]"),
    ({**FP8, "weight_block_size": [128, 128]}, r"quantization_config.weight_block_size=\[128, 128\]: block-wise FP8 "
                                               "is not supported yet"),
    ({**FP8, "fmt": "e5m2"}, r"quantization_config.fmt='e5m2' is not supported yet"),
])
def test_checkpoint_configs_pagoda_cannot_run(quant, needle):
    with pytest.raises(ValueError, match=needle) as info:
        resolve_quantization(None, config(quantization_config=quant), None)
    assert "config.json quantization_config" in str(info.value)


def test_skip_list_of_the_wrong_type():
    with pytest.raises(TypeError, match="quantization_config.ignored_layers must be a list of module names"):
        resolve_quantization(None, config(quantization_config={**FP8, "ignored_layers": "lm_head"}), None)


def test_fp8_config_reads_both_skip_list_keys():
    assert Fp8Config.from_config({**FP8, "ignored_layers": ["lm_head"]}).skip_list == ["lm_head"]
    assert Fp8Config.from_config({**FP8, "modules_to_not_convert": ["a.b"]}).skip_list == ["a.b"]
    assert Fp8Config.online().activation_scheme == "dynamic" and not Fp8Config.online().is_checkpoint_fp8_serialized


def test_engine_arguments(fp8_checkpoint, float_checkpoint, edited_checkpoint):
    folder = fp8_checkpoint("LlamaForCausalLM")
    model = EngineArgs(model=folder, device="cpu").create_config().model
    assert (model.quantization, model.quantization_config["quant_method"]) == ("fp8", "fp8")
    model = EngineArgs(model=float_checkpoint("LlamaForCausalLM"), device="cpu", quantization="fp8").create_config().model
    assert (model.quantization, model.quantization_config) == ("fp8", None)
    assert EngineArgs(model=float_checkpoint("LlamaForCausalLM"), device="cpu").create_config().model.quantization is None
    with pytest.raises(ValueError, match=r"quantization='bitsandbytes' \(--quantization, -q\) is not supported yet"):
        EngineArgs(model=folder, quantization="bitsandbytes").check_options()  # before any folder is read
    bnb = edited_checkpoint(float_checkpoint("LlamaForCausalLM"), edit_config=lambda c: c.update(
        quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}))
    with pytest.raises(ValueError, match="quantization='fp8' .* does not match the checkpoint's method 'bitsandbytes'"):
        LLM(bnb, quantization="fp8")
    with pytest.raises(ValueError, match="quantized with 'bitsandbytes'.* not supported yet"):
        LLM(bnb)


def test_quantization_flag(fp8_checkpoint):
    import argparse

    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    for argv in (["-q", "fp8"], ["--quantization", "fp8"]):
        assert EngineArgs.from_cli_args(parser.parse_args(argv)).quantization == "fp8"
    assert EngineArgs.from_cli_args(parser.parse_args(["--quantization", "None"])).quantization is None
    group = next(g for g in parser._action_groups if g.title == "engine arguments")
    assert any("--quantization" in a.option_strings for a in group._group_actions)  # implemented, not compat
