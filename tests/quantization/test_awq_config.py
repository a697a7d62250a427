"""AWQ's config: detected from config.json's quantization_config and from AutoAWQ's older quant_config.json /
quantize_config.json, confirmed by quantization="awq"; every unsupported or malformed setting is a ValueError
naming the field (bits, group size, zero_point, version, modules_to_not_convert)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pagoda.engine_args import EngineArgs
from pagoda.model_executor.layers.quantization import build_quant_config, resolve_quantization
from pagoda.model_executor.layers.quantization.awq import AwqConfig

AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
       "modules_to_not_convert": None}
SOURCE = "config.json quantization_config"


def config(**attrs):
    return SimpleNamespace(**attrs)


@pytest.mark.parametrize("user", [None, "awq", "AWQ"])
def test_detected_from_config_json_or_confirmed(user):
    assert resolve_quantization(user, config(quantization_config=dict(AWQ)), None) == ("awq", AWQ)


@pytest.mark.parametrize("file", ["quant_config.json", "quantize_config.json"])
def test_detected_from_autoawq_files(file, tmp_path):
    old = {"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"}
    (tmp_path / file).write_text(json.dumps(old))
    assert resolve_quantization(None, config(), str(tmp_path)) == ("awq", old)
    assert resolve_quantization("awq", config(), str(tmp_path))[0] == "awq"
    quant = build_quant_config("awq", old, file)
    assert (quant.group_size, quant.weight_bits, quant.zero_point, quant.skip_list) == (64, 4, True, [])


def test_other_methods_and_unquantized_checkpoints():
    with pytest.raises(ValueError, match="quantization='fp8' .* does not match the checkpoint's method 'awq'"):
        resolve_quantization("fp8", config(quantization_config=dict(AWQ)), None)
    with pytest.raises(ValueError, match="quantization='awq' needs a checkpoint quantized with it"):
        resolve_quantization("awq", config(), None)
    with pytest.raises(ValueError, match="'awq_marlin'.*not supported yet"):  # vLLM's Marlin kernel for AWQ
        resolve_quantization("awq_marlin", config(quantization_config=dict(AWQ)), None)
    EngineArgs(model="/nowhere", quantization="awq").check_options()  # a supported name now


def test_settings_read():
    quant = AwqConfig.from_config({**AWQ, "modules_to_not_convert": ["visual", "lm_head"], "version": "GEMM"})
    assert (quant.group_size, quant.skip_list, quant.skip_rule) == (128, ["visual", "lm_head"], "substr")
    assert AwqConfig.from_config({k: v for k, v in AWQ.items() if k != "version"}).group_size == 128  # gemm
    assert AwqConfig.from_config({**AWQ, "group_size": -1}).group_size == -1


@pytest.mark.parametrize("change, needle", [
    ({"bits": 8}, f"{SOURCE}.bits=8 is not supported: AWQ weights are 4-bit"),
    ({"bits": None, "w_bit": 3}, f"{SOURCE}.w_bit=3 is not supported"),
    ({"bits": None}, rf"{SOURCE}.bits is required"),
    ({"group_size": 0}, f"{SOURCE}.group_size=0 is not a group size"),
    ({"group_size": "128"}, f"{SOURCE}.group_size='128' is not a group size"),
    ({"zero_point": False}, rf"{SOURCE}.zero_point=false \(symmetric AWQ, no zero points\) is not supported yet"),
    ({"zero_point": None}, f"{SOURCE}.zero_point is required"),
    ({"zero_point": "yes"}, f"{SOURCE}.zero_point='yes' must be true or false"),
    ({"version": "gemv"}, rf"{SOURCE}.version='gemv' is not supported yet \(supported: 'gemm'"),
    ({"version": "GEMV_FAST"}, f"{SOURCE}.version='GEMV_FAST' is not supported yet"),
    ({"version": "marlin"}, f"{SOURCE}.version='marlin' is not supported yet"),
])
def test_unsupported_settings_name_the_field(change, needle):
    settings = {k: v for k, v in {**AWQ, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=needle):
        resolve_quantization(None, config(quantization_config=settings), None)


def test_skip_list_of_the_wrong_type():
    with pytest.raises(TypeError, match=f"{SOURCE}.modules_to_not_convert must be a list of module names"):
        resolve_quantization(None, config(quantization_config={**AWQ, "modules_to_not_convert": "lm_head"}), None)
