"""The frontend ↔ engine-core wire format: engine messages survive msgpack exactly, without re-running
SamplingParams' validation (which would reset the engine-filled stop ids)."""

import pytest
import torch

from pagoda.core.request import EngineCoreRequest
from pagoda.core.sched_output import EngineCoreOutput
from pagoda.engine import serial
from pagoda.engine.core_proc import EngineCoreOutputs
from pagoda.sampling_params import SamplingParams


def test_request_round_trip_keeps_engine_filled_fields():
    params = SamplingParams(n=1, temperature=0.7, top_k=5, seed=3, stop=["\n\n"], stop_token_ids=[7], max_tokens=9)
    params.all_stop_token_ids = {2, 7, 11}
    extra = {}
    if "logit_bias" in SamplingParams.__dataclass_fields__:
        extra = {"logit_bias": {5: 1.5}, "output_kind": params.output_kind}
        params.logit_bias = {5: 1.5}
    request = EngineCoreRequest("r-1", [0, 1, 2, 3], params, eos_token_id=2, arrival_time=12.5, priority=1)
    back = serial.decode(serial.encode(request))
    assert isinstance(back, EngineCoreRequest) and isinstance(back.sampling_params, SamplingParams)
    assert back.request_id == "r-1" and back.prompt_token_ids == [0, 1, 2, 3] and back.priority == 1
    assert back.sampling_params.all_stop_token_ids == {2, 7, 11}  # a set, untouched by __post_init__
    assert back.sampling_params == params
    for name, value in extra.items():
        assert getattr(back.sampling_params, name) == value
        assert type(getattr(back.sampling_params, name)) is type(value)


def test_outputs_round_trip_with_logprobs_and_tensors():
    out = EngineCoreOutput("r-1", [5, 6], new_logprobs=[([5, 9], [-0.1, -2.0], 1), ([6, 9], [-0.2, -1.0], 1)],
                           finish_reason="length", num_cached_tokens=16)
    message = EngineCoreOutputs(outputs=[out], stats={"num_running": 1, "kv_cache_usage": 0.5},
                                queue_times={"r-1": 0.01}, timestamp=1.0)
    back = serial.decode(serial.encode(message))
    got = back.outputs[0]
    assert got.new_token_ids == [5, 6] and got.finish_reason == "length" and got.num_cached_tokens == 16
    assert [list(p) for p in got.new_logprobs] == [list(p) for p in out.new_logprobs]  # tuples arrive as lists
    assert back.stats == message.stats and back.queue_times == {"r-1": 0.01}
    tensors = {"f32": torch.randn(3, 4), "bf16": torch.randn(5, dtype=torch.bfloat16)}
    decoded = serial.decode(serial.encode(tensors))
    assert torch.equal(decoded["f32"], tensors["f32"])
    assert torch.equal(decoded["bf16"], tensors["bf16"].float())


def test_other_values():
    assert serial.decode(serial.encode({1: {2, 3}, "x": (1, "a"), "b": b"\x00"})) == {1: {2, 3}, "x": [1, "a"],
                                                                                      "b": b"\x00"}
    assert serial.decode(serial.encode(frozenset({1}))) == {1}
    assert serial.decode(serial.encode(complex(1, 2))) == complex(1, 2)  # pickle fallback


def test_only_pagoda_classes_are_imported():
    import msgspec

    forged = msgspec.msgpack.encode(msgspec.msgpack.Ext(serial.EXT_DATACLASS,
                                                        msgspec.msgpack.encode(["os:system", []])))
    with pytest.raises(ValueError, match="only pagoda classes"):
        serial.decode(forged)
