"""Speculative decoding options as vLLM spells them: the `speculative_config` dict (`LLM(...)`), its JSON
flag (`--speculative-config`, also dotted), vLLM 0.6's flags that KServe seeds still pass, parsed by the real
`pagoda serve` parser; vLLM's defaults and method inference; a clear error for everything Pagoda cannot do
yet (draft models, other methods, vLLM keys it does not implement); async scheduling off with speculation."""

import logging
import shlex

import pytest

from pagoda.spec_decode import args as spec_args_module
from pagoda import engine_args_compat as compat
from pagoda.config import SpeculativeConfig
from pagoda.engine_args import EngineArgs
from pagoda.entrypoints.cli.main import build_parser
from pagoda.entrypoints.openai import cli_args

# a KServe seed's vLLM flags, verbatim
SEED_FLAGS = "--speculative-model=[ngram] --num-speculative-tokens=5 --ngram-prompt-lookup-max=4 --use-v2-block-manager"


def spec(**kwargs):
    return EngineArgs(model="unused", **kwargs).create_speculative_config()


def serve_args(argv, model="unused"):
    args = build_parser().parse_args(["serve", model, *argv])
    cli_args.validate_args(args)
    return cli_args.engine_args_from(args)


def ngram(k, low, high, **rest):
    return SpeculativeConfig(method="ngram", num_speculative_tokens=k, prompt_lookup_min=low,
                             prompt_lookup_max=high, **rest)


# ---- the dict form and vLLM's defaults ------------------------------------------------------------------
def test_no_speculation_by_default():
    assert spec() is None
    assert spec(speculative_config={}) is None
    assert spec(speculative_config=None) is None


@pytest.mark.parametrize("given, expected", [
    ({"method": "ngram", "num_speculative_tokens": 3}, ngram(3, 5, 5)),  # vLLM: both bounds default to 5
    ({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}, ngram(3, 4, 4)),  # min = max
    ({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2}, ngram(3, 2, 2)),  # max = min
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 1, "prompt_lookup_max": 4},
     ngram(2, 1, 4)),
    ({"model": "[ngram]", "num_speculative_tokens": 3}, ngram(3, 5, 5)),  # vLLM infers the method
    ({"model": "ngram", "num_speculative_tokens": 3}, ngram(3, 5, 5)),
    ({"method": "[ngram]", "num_speculative_tokens": 3}, ngram(3, 5, 5)),
    ({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 6,
      "disable_by_batch_size": 8, "max_model_len": 100, "draft_tensor_parallel_size": 1},
     ngram(4, 2, 6, disable_by_batch_size=8, max_model_len=100)),
    # keys of vLLM's that Pagoda does not implement are fine at vLLM's defaults
    ({"method": "ngram", "num_speculative_tokens": 3, "quantization": None, "disable_padded_drafter_batch": False,
      "disable_logprobs": False}, ngram(3, 5, 5)),
], ids=["defaults", "only-max", "only-min", "both", "model-[ngram]", "model-ngram", "method-[ngram]", "every-key",
        "vllm-defaults"])
def test_speculative_config_dict(given, expected):
    assert spec(speculative_config=given) == expected
    assert spec(speculative_config=expected) == expected  # a SpeculativeConfig passes through


def test_json_flag_and_its_dotted_spelling():
    args = serve_args(["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4, '
                                               '"prompt_lookup_max": 3, "prompt_lookup_min": 2}'])
    assert args.create_speculative_config() == ngram(4, 2, 3)
    args = serve_args(["--speculative-config.method", "ngram", "--speculative-config.num_speculative_tokens", "4"])
    assert args.create_speculative_config() == ngram(4, 5, 5)


# ---- vLLM 0.6's flags -------------------------------------------------------------------------------------------
def test_kserve_seed_flags_parse_verbatim():
    args = serve_args(shlex.split(SEED_FLAGS))
    assert (args.speculative_model, args.num_speculative_tokens, args.ngram_prompt_lookup_max) == ("[ngram]", 5, 4)
    assert args.create_speculative_config() == ngram(5, 1, 4)  # vLLM 0.6: prompt_lookup_min defaults to 1


def test_every_old_flag_reaches_the_config():
    argv = ["--speculative-model", "[ngram]", "--num-speculative-tokens", "3", "--ngram-prompt-lookup-max", "6",
            "--ngram-prompt-lookup-min", "2", "--speculative-disable-by-batch-size", "16",
            "--speculative-max-model-len", "200", "-spec-draft-tp", "1"]
    assert serve_args(argv).create_speculative_config() == ngram(3, 2, 6, disable_by_batch_size=16,
                                                                 max_model_len=200)
    args = serve_args(["--speculative-model", "ngram", "--num-speculative-tokens", "2", "--ngram-prompt-lookup-max",
                       "2", "--speculative-draft-tensor-parallel-size", "1"])
    assert args.create_speculative_config() == ngram(2, 1, 2)


def test_old_keywords_of_llm():
    assert spec(speculative_model="[ngram]", num_speculative_tokens=4, ngram_prompt_lookup_max=3) == ngram(4, 1, 3)


def test_old_flags_without_speculative_model(caplog, monkeypatch):
    monkeypatch.setattr(spec_args_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="pagoda.engine_args"):
        assert spec(ngram_prompt_lookup_max=4) is None  # vLLM 0.6 ignores it too
    assert any("--ngram-prompt-lookup-max has no effect without --speculative-model" in r.getMessage()
               for r in caplog.records)


def test_other_old_spec_flags_are_recognised(monkeypatch, caplog):
    monkeypatch.setattr(compat, "_logged", set())
    argv = [*shlex.split(SEED_FLAGS), "--spec-decoding-acceptance-method", "rejection_sampler",
            "--typical-acceptance-sampler-posterior-threshold", "0.09",
            "--typical-acceptance-sampler-posterior-alpha", "0.3", "--disable-logprobs-during-spec-decoding",
            "False", "--speculative-disable-mqa-scorer"]
    with caplog.at_level(logging.WARNING, logger="pagoda.engine_args_compat"):
        args = serve_args(argv)
    assert args.create_speculative_config() == ngram(5, 1, 4)
    lines = [r.getMessage() for r in caplog.records]
    for flag in ("--typical-acceptance-sampler-posterior-threshold", "--typical-acceptance-sampler-posterior-alpha",
                 "--disable-logprobs-during-spec-decoding", "--speculative-disable-mqa-scorer"):
        assert any(line.startswith(flag + " ") and "has no effect" in line for line in lines), flag
    assert serve_args(["--disable-logprobs-during-spec-decoding"]).disable_logprobs_during_spec_decoding is True
    for argv, flag in ((["--spec-decoding-acceptance-method", "typical_acceptance_sampler"],
                        "--spec-decoding-acceptance-method"),
                       (["--speculative-model-quantization", "awq"], "--speculative-model-quantization")):
        with pytest.raises(ValueError, match="not supported yet") as info:
            serve_args(argv)
        assert flag in str(info.value)


# ---- errors -----------------------------------------------------------------------------------------------------
DRAFT = "draft-model speculative decoding is not supported yet; use method 'ngram'"


@pytest.mark.parametrize("kwargs, error, words", [
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_maxx": 4}}, ValueError,
     ["unknown key(s) ['prompt_lookup_maxx']", "did you mean 'prompt_lookup_max'", "allowed keys: ['method', 'model',",
      "'draft_tensor_parallel_size'", "--speculative-config"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "quantization": "awq",
                             "revision": "main"}}, ValueError,
     ["['quantization', 'revision'] are not supported yet", "--speculative-config"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "speculative_token_tree": "[(0,)]"}},
     ValueError, ["['speculative_token_tree'] are not supported yet"]),
    ({"speculative_config": {"method": "eagle", "model": "yuhuili/EAGLE-LLaMA3-Instruct-8B",
                             "num_speculative_tokens": 3}}, ValueError, ["'eagle' is not supported yet",
                                                                         "--speculative-config"]),
    ({"speculative_config": {"method": "eagle3", "model": "x", "num_speculative_tokens": 3}}, ValueError,
     ["'eagle3' is not supported yet"]),
    ({"speculative_config": {"method": "medusa", "model": "x", "num_speculative_tokens": 3}}, ValueError,
     ["'medusa' is not supported yet"]),
    ({"speculative_config": {"method": "mtp", "num_speculative_tokens": 1}}, ValueError,
     ["'mtp' is not supported yet"]),
    ({"speculative_config": {"method": "deepseek_mtp", "num_speculative_tokens": 1}}, ValueError,
     ["'deepseek_mtp' is not supported yet"]),
    ({"speculative_config": {"method": "suffix", "num_speculative_tokens": 3}}, ValueError,
     ["'suffix' is not supported yet"]),
    ({"speculative_config": {"method": "magic", "num_speculative_tokens": 3}}, ValueError,
     ["'magic' is not a speculative method", "['ngram']"]),
    ({"speculative_config": {"model": "/models/tiny-draft", "num_speculative_tokens": 3}}, ValueError,
     [DRAFT, "/models/tiny-draft", "--speculative-config"]),
    ({"speculative_config": {"method": "draft_model", "model": "/models/tiny-draft", "num_speculative_tokens": 3}},
     ValueError, [DRAFT]),
    ({"speculative_model": "/models/tiny-draft", "num_speculative_tokens": 3}, ValueError,
     [DRAFT, "--speculative-model"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3}, "speculative_model": "[ngram]",
      "num_speculative_tokens": 3}, ValueError, ["--speculative-config", "--speculative-model",
                                                 "--num-speculative-tokens", "give one of them"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3}, "ngram_prompt_lookup_max": 3},
     ValueError, ["--ngram-prompt-lookup-max", "give one of them"]),
    ({"speculative_config": {"method": "ngram"}}, ValueError,
     ["speculative_config['num_speculative_tokens']", "is required"]),
    ({"speculative_config": {"num_speculative_tokens": 3}}, ValueError, ["needs 'method'", "['ngram']"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 0}}, ValueError,
     ["speculative_config['num_speculative_tokens']", "must be >= 1, got 0"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": "4"}}, TypeError,
     ["speculative_config['num_speculative_tokens']", "must be an integer"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 0}}, ValueError,
     ["speculative_config['prompt_lookup_min']", "must be >= 1, got 0"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 4,
                             "prompt_lookup_max": 2}}, ValueError,
     ["speculative_config['prompt_lookup_min'] (--speculative-config) must be <= "
      "speculative_config['prompt_lookup_max']", "got 4 > 2"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": 1}},
     ValueError, ["speculative_config['disable_by_batch_size']", "must be >= 2, got 1"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "max_model_len": 0}}, ValueError,
     ["speculative_config['max_model_len']", "must be >= 1"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "draft_tensor_parallel_size": 2}},
     ValueError, ["speculative_config['draft_tensor_parallel_size']", "2 is not supported yet", "allowed: 1"]),
    ({"speculative_config": '{"method": "ngram"}'}, TypeError, ["speculative_config must be a dict"]),
    ({"num_speculative_tokens": 3}, ValueError, ["without speculative_model (--speculative-model)"]),
    ({"speculative_model": "[ngram]", "num_speculative_tokens": 3}, ValueError,
     ["ngram_prompt_lookup_max (--ngram-prompt-lookup-max) is required"]),
    ({"speculative_model": "[ngram]", "ngram_prompt_lookup_max": 3}, ValueError,
     ["num_speculative_tokens (--num-speculative-tokens) is required"]),
    ({"speculative_model": "[ngram]", "num_speculative_tokens": 0, "ngram_prompt_lookup_max": 3}, ValueError,
     ["num_speculative_tokens (--num-speculative-tokens) must be >= 1, got 0"]),
    ({"speculative_model": "[ngram]", "num_speculative_tokens": 3, "ngram_prompt_lookup_max": 3,
      "ngram_prompt_lookup_min": 5}, ValueError,
     ["ngram_prompt_lookup_min (--ngram-prompt-lookup-min) must be <= ngram_prompt_lookup_max"]),
    ({"speculative_model": "[ngram]", "num_speculative_tokens": 3, "ngram_prompt_lookup_max": 3,
      "speculative_draft_tensor_parallel_size": 2}, ValueError,
     ["speculative_draft_tensor_parallel_size (--speculative-draft-tensor-parallel-size): 2 is not supported yet"]),
    ({"speculative_model": "[ngram]", "num_speculative_tokens": 3, "ngram_prompt_lookup_max": 3,
      "speculative_disable_by_batch_size": 1}, ValueError,
     ["speculative_disable_by_batch_size (--speculative-disable-by-batch-size) must be >= 2"]),
], ids=lambda v: None if isinstance(v, (dict, list, type)) else str(v))
def test_errors_name_the_key_or_flag(kwargs, error, words):
    with pytest.raises(error) as info:
        spec(**kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


def test_draft_model_flag_stops_the_server_before_loading():
    with pytest.raises(ValueError, match="--speculative-model") as info:
        serve_args(["--speculative-model", "/models/tiny-draft", "--num-speculative-tokens", "3"])
    assert DRAFT in str(info.value)
    with pytest.raises(ValueError, match=DRAFT):
        serve_args(["--speculative-config", '{"model": "/models/tiny-draft", "num_speculative_tokens": 3}'])


@pytest.mark.parametrize("kwargs, error", [
    ({"num_speculative_tokens": 0, "prompt_lookup_min": 1, "prompt_lookup_max": 1},
     "num_speculative_tokens must be >= 1"),
    ({"num_speculative_tokens": 1, "prompt_lookup_min": 3, "prompt_lookup_max": 2}, "prompt_lookup_min must be <= "),
    ({"num_speculative_tokens": 1, "prompt_lookup_min": 1, "prompt_lookup_max": 1, "method": "eagle"},
     "method: 'eagle' is not one of ['ngram']"),
])
def test_speculative_config_validates_itself(kwargs, error):
    with pytest.raises(ValueError) as info:
        SpeculativeConfig(**{"method": "ngram", **kwargs})
    assert error in str(info.value)


# ---- with a model: the engine config ---------------------------------------------------------------------------
def test_speculation_turns_async_scheduling_off(llama_dir, caplog):
    plain = EngineArgs(model=llama_dir).create_config()
    assert plain.speculative is None and plain.scheduler.async_scheduling is True
    with caplog.at_level(logging.INFO, logger="pagoda.engine_args"):
        config = EngineArgs(model=llama_dir, speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                                                 "prompt_lookup_max": 3}).create_config()
    assert config.speculative == ngram(3, 3, 3)
    assert config.scheduler.async_scheduling is False
    lines = [r.getMessage() for r in caplog.records if "async scheduling" in r.getMessage()]
    assert lines == ["async scheduling is off: speculative decoding does not support it yet"]
    seed = serve_args(shlex.split(SEED_FLAGS), model=llama_dir).create_config()
    assert seed.speculative == ngram(5, 1, 4) and seed.scheduler.async_scheduling is False


def test_speculative_max_model_len_is_bounded_by_the_models(llama_dir):
    limit = EngineArgs(model=llama_dir).create_config().model.max_model_len
    config = EngineArgs(model=llama_dir, speculative_config={"method": "ngram", "num_speculative_tokens": 2,
                                                             "max_model_len": limit}).create_config()
    assert config.speculative.max_model_len == limit
    with pytest.raises(ValueError, match=r"speculative_max_model_len \(--speculative-max-model-len\) cannot be "
                                         rf"larger than the model's max_model_len \({limit}\)"):
        EngineArgs(model=llama_dir, speculative_model="[ngram]", num_speculative_tokens=2, ngram_prompt_lookup_max=2,
                   speculative_max_model_len=limit + 1).create_config()


def test_pooling_model_with_speculation_is_an_error(llama_dir):
    with pytest.raises(ValueError, match="not supported for pooling"):
        EngineArgs(model=llama_dir, runner="pooling",
                   speculative_config={"method": "ngram", "num_speculative_tokens": 3}).create_config()
