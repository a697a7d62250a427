"""Speculative decoding options as vLLM spells them: the `speculative_config` dict (`LLM(...)`), its JSON
flag (`--speculative-config`, also dotted), vLLM 0.6's flags that KServe seeds still pass, parsed by the real
`pagoda serve` parser; vLLM's defaults and method inference (n-gram, or a draft model); the draft model's
ModelConfig built like the target's and checked against it (vocabulary, generative, position limit, offline
resolution); a clear error for everything Pagoda cannot do yet (other methods, vLLM keys it does not
implement); async scheduling off with speculation."""

import json
import logging
import os
import shlex
import shutil

import pytest

from pagoda.spec_decode import args as spec_args_module
from pagoda import engine_args_compat as compat
from pagoda.config import SpeculativeConfig
from pagoda.engine_args import EngineArgs
from pagoda.entrypoints.cli.main import build_parser
from pagoda.entrypoints.openai import cli_args

# a KServe seed's vLLM flags, verbatim
SEED_FLAGS = "--speculative-model=[ngram] --num-speculative-tokens=5 --ngram-prompt-lookup-max=4 --use-v2-block-manager"
# a KServe seed's vLLM flags for a draft model ({draft}: the folder mounted at /mnt/models/<draft>)
DRAFT_SEED_FLAGS = "--speculative-model={draft} --num-speculative-tokens=4 --distributed-executor-backend=mp"


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


# ---- a draft model, without its folder (the server's early check) --------------------------------------------
def draft(k, model="/models/tiny-draft", **rest):
    return SpeculativeConfig(method="draft_model", num_speculative_tokens=k, model=model, **rest)


@pytest.mark.parametrize("kwargs, expected", [
    ({"speculative_config": {"model": "/models/tiny-draft", "num_speculative_tokens": 4}}, draft(4)),  # inferred
    ({"speculative_config": {"method": "draft_model", "model": "/models/tiny-draft", "num_speculative_tokens": 3,
                             "max_model_len": 100, "disable_by_batch_size": 4, "draft_tensor_parallel_size": 1}},
     draft(3, max_model_len=100, disable_by_batch_size=4)),
    ({"speculative_config": {"model": "some-org/draft", "num_speculative_tokens": 2}}, draft(2, "some-org/draft")),
    ({"speculative_model": "/models/tiny-draft", "num_speculative_tokens": 5}, draft(5)),  # vLLM 0.6's keywords
    ({"speculative_model": "/models/tiny-draft", "num_speculative_tokens": 5, "speculative_max_model_len": 64,
      "speculative_disable_by_batch_size": 8, "speculative_draft_tensor_parallel_size": 1},
     draft(5, max_model_len=64, disable_by_batch_size=8)),
], ids=["inferred", "method", "hub-id", "old-flags", "every-old-flag"])
def test_draft_model_without_its_folder(kwargs, expected):
    config = spec(**kwargs)
    assert config == expected
    assert config.prompt_lookup_max is None and config.prompt_lookup_min is None
    assert config.draft_model_config is None  # built by create_config, with the folder
    assert spec(speculative_config=expected) == expected  # a SpeculativeConfig passes through


def test_draft_model_seed_flags_parse_verbatim():
    args = serve_args(shlex.split(DRAFT_SEED_FLAGS.format(draft="/mnt/models/tiny-draft")))
    assert (args.speculative_model, args.num_speculative_tokens) == ("/mnt/models/tiny-draft", 4)
    assert args.distributed_executor_backend == "mp"
    assert args.create_speculative_config() == draft(4, "/mnt/models/tiny-draft")
    args = serve_args(["--speculative-config", '{"model": "/mnt/models/tiny-draft", "num_speculative_tokens": 3}'])
    assert args.create_speculative_config() == draft(3, "/mnt/models/tiny-draft")


@pytest.mark.parametrize("backend", ["uni", "mp", "ray"])
def test_executor_backends_are_accepted(backend):
    args = serve_args(["--distributed-executor-backend", backend])
    args.check_options()
    assert args.distributed_executor_backend == backend


@pytest.mark.parametrize("backend", ["external_launcher"])
def test_external_launcher_is_not_supported_yet(backend):
    with pytest.raises(ValueError) as info:
        serve_args(["--distributed-executor-backend", backend])
    message = str(info.value)
    for word in (f"distributed_executor_backend={backend!r}", "--distributed-executor-backend",
                 "not supported yet", "the external-launcher executor comes in a later step",
                 "allowed: None, 'uni', 'mp', 'ray'"):
        assert word in message, (word, message)


# ---- errors -----------------------------------------------------------------------------------------------------

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
    ({"speculative_config": {"method": "eagle", "num_speculative_tokens": 3}}, ValueError,
     ["only methods 'ngram' and 'ngram_gpu' (prompt lookup) and 'draft_model' are implemented"]),
    ({"speculative_config": {"method": "magic", "num_speculative_tokens": 3}}, ValueError,
     ["'magic' is not a speculative method", "['ngram', 'ngram_gpu', 'draft_model']"]),
    # a draft model
    ({"speculative_config": {"model": "/models/tiny-draft"}}, ValueError,
     ["speculative_config['num_speculative_tokens'] (--speculative-config) is required with method 'draft_model'"]),
    ({"speculative_config": {"method": "draft_model", "num_speculative_tokens": 3}}, ValueError,
     ["speculative_config['model'] (--speculative-config) is required with method 'draft_model'"]),
    ({"speculative_config": {"method": "draft_model", "model": "[ngram]", "num_speculative_tokens": 3}}, ValueError,
     ["speculative_config['model'] (--speculative-config): method 'draft_model' needs a draft model folder"]),
    ({"speculative_config": {"model": "/models/tiny-draft", "num_speculative_tokens": 3, "prompt_lookup_max": 4}},
     ValueError, ["speculative_config['prompt_lookup_max'] (--speculative-config) is an n-gram (prompt lookup) "
                  "option; it does not apply to method 'draft_model'", "'/models/tiny-draft'"]),
    ({"speculative_config": {"method": "draft_model", "model": "/models/tiny-draft", "num_speculative_tokens": 3,
                             "prompt_lookup_min": 1}}, ValueError,
     ["speculative_config['prompt_lookup_min'] (--speculative-config) is an n-gram (prompt lookup) option"]),
    ({"speculative_config": {"model": "/models/tiny-draft", "num_speculative_tokens": 3,
                             "draft_tensor_parallel_size": 2}}, ValueError,
     ["speculative_config['draft_tensor_parallel_size']", "2 is not supported yet", "allowed: 1"]),
    ({"speculative_model": "/models/tiny-draft"}, ValueError,
     ["num_speculative_tokens (--num-speculative-tokens) is required with method 'draft_model'"]),
    ({"speculative_model": "/models/tiny-draft", "num_speculative_tokens": 3, "ngram_prompt_lookup_max": 4},
     ValueError, ["ngram_prompt_lookup_max (--ngram-prompt-lookup-max) is an n-gram (prompt lookup) option"]),
    ({"speculative_model": "/models/tiny-draft", "num_speculative_tokens": 3, "ngram_prompt_lookup_min": 1},
     ValueError, ["ngram_prompt_lookup_min (--ngram-prompt-lookup-min) is an n-gram (prompt lookup) option"]),
    ({"speculative_model": "/models/tiny-draft", "num_speculative_tokens": 3,
      "speculative_draft_tensor_parallel_size": 2}, ValueError,
     ["speculative_draft_tensor_parallel_size (--speculative-draft-tensor-parallel-size): 2 is not supported yet"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3}, "speculative_model": "[ngram]",
      "num_speculative_tokens": 3}, ValueError, ["--speculative-config", "--speculative-model",
                                                 "--num-speculative-tokens", "give one of them"]),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 3}, "ngram_prompt_lookup_max": 3},
     ValueError, ["--ngram-prompt-lookup-max", "give one of them"]),
    ({"speculative_config": {"method": "ngram"}}, ValueError,
     ["speculative_config['num_speculative_tokens']", "is required"]),
    ({"speculative_config": {"num_speculative_tokens": 3}}, ValueError, ["needs 'method'",
                                                                         "['ngram', 'ngram_gpu', 'draft_model']"]),
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
    ({"num_speculative_tokens": 3}, ValueError, ["without speculative_model (--speculative-model)",
                                                 "'[ngram]' or a draft model folder"]),
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


def test_draft_model_errors_stop_the_server_before_loading():
    with pytest.raises(ValueError, match=r"ngram_prompt_lookup_max \(--ngram-prompt-lookup-max\) is an n-gram"):
        serve_args(["--speculative-model", "/models/tiny-draft", "--num-speculative-tokens", "3",
                    "--ngram-prompt-lookup-max", "4"])
    with pytest.raises(ValueError, match=r"num_speculative_tokens'\] \(--speculative-config\) is required"):
        serve_args(["--speculative-config", '{"model": "/models/tiny-draft"}'])


@pytest.mark.parametrize("kwargs, error", [
    ({"num_speculative_tokens": 0, "prompt_lookup_min": 1, "prompt_lookup_max": 1},
     "num_speculative_tokens must be >= 1"),
    ({"num_speculative_tokens": 1, "prompt_lookup_min": 3, "prompt_lookup_max": 2}, "prompt_lookup_min must be <= "),
    ({"num_speculative_tokens": 1, "prompt_lookup_min": 1, "prompt_lookup_max": 1, "method": "eagle"},
     "method: 'eagle' is not one of ['ngram', 'ngram_gpu', 'draft_model']"),
    ({"num_speculative_tokens": 1}, "prompt_lookup_max is required with method 'ngram'"),
    ({"method": "draft_model", "num_speculative_tokens": 2}, "model is required with method 'draft_model'"),
    ({"method": "draft_model", "num_speculative_tokens": 2, "model": "/d", "prompt_lookup_max": 3},
     "prompt_lookup_max is an n-gram (prompt lookup) option"),
])
def test_speculative_config_validates_itself(kwargs, error):
    with pytest.raises(ValueError) as info:
        SpeculativeConfig(**{"method": "ngram", **kwargs})
    assert error in str(info.value)


# ---- with a model: the engine config ---------------------------------------------------------------------------
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


# ---- a draft model, with its folder: the draft's ModelConfig -------------------------------------------------
@pytest.fixture(scope="module")
def draft_dir(checkpoint):
    """A smaller Llama of the target's vocabulary, saved in bfloat16 (the target's dtype must win)."""
    return checkpoint("LlamaForCausalLM", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                      dtype="bfloat16")


def _draft_config(target, draft_folder, **kwargs):
    return EngineArgs(model=target, device="cpu", speculative_config={"model": draft_folder,
                                                                      "num_speculative_tokens": 4},
                      **kwargs).create_config()


@pytest.mark.parametrize("how", ["dict", "method", "old-keywords"])
def test_draft_model_config_is_built_like_the_targets(llama_dir, draft_dir, how):
    given = {"dict": {"speculative_config": {"model": draft_dir, "num_speculative_tokens": 4}},
             "method": {"speculative_config": {"method": "draft_model", "model": draft_dir,
                                               "num_speculative_tokens": 4}},
             "old-keywords": {"speculative_model": draft_dir, "num_speculative_tokens": 4}}[how]
    config = EngineArgs(model=llama_dir, device="cpu", dtype="float16", seed=7, **given).create_config()
    speculative = config.speculative
    assert speculative == draft(4, os.path.abspath(draft_dir))  # model: the resolved folder
    assert (speculative.method, speculative.prompt_lookup_max, speculative.prompt_lookup_min) == (
        "draft_model", None, None)
    assert speculative.max_model_len is None  # the draft reaches as far as the target (512 positions each)
    draft_config = speculative.draft_model_config
    assert draft_config.model_path == os.path.abspath(draft_dir) == draft_config.tokenizer_path
    assert draft_config.architecture == "LlamaForCausalLM" and draft_config.runner_type == "generate"
    assert draft_config.hf_config.num_hidden_layers == 1 and draft_config.hf_config.hidden_size == 32
    assert draft_config.hf_config.vocab_size == config.model.hf_config.vocab_size
    assert draft_config.dtype_name == config.model.dtype_name == "float16"  # the target's, not the draft's bf16
    assert draft_config.max_model_len == config.model.max_model_len == 512
    assert (draft_config.seed, draft_config.revision) == (7, None)
    assert config.scheduler.async_scheduling is True  # the draft model drafts on the device
    assert config.model.model_path == os.path.abspath(llama_dir)  # the target is untouched


def test_draft_model_takes_the_targets_resolved_dtype(llama_dir, draft_dir):
    config = _draft_config(llama_dir, draft_dir)  # auto: the float32 target checkpoint on CPU
    assert config.model.dtype_name == config.speculative.draft_model_config.dtype_name == "float32"


def test_kserve_draft_seed_through_the_server_parser(llama_dir, draft_dir, caplog):
    with caplog.at_level(logging.INFO, logger="pagoda.engine_args"):
        args = serve_args(shlex.split(DRAFT_SEED_FLAGS.format(draft=draft_dir)), model=llama_dir)
        config = args.create_config()
    assert args.distributed_executor_backend == "mp"
    assert config.speculative == draft(4, os.path.abspath(draft_dir))
    assert config.speculative.draft_model_config.model_path == os.path.abspath(draft_dir)
    assert config.parallel.world_size == 1
    assert config.scheduler.async_scheduling is True  # the draft model drafts on the device
    assert "async scheduling is off" not in caplog.text


def test_draft_model_from_the_hub_cache(llama_dir, draft_dir, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snapshot = hub / "models--tiny-org--tiny-draft" / "snapshots" / "abc123"
    shutil.copytree(draft_dir, snapshot)
    (hub / "models--tiny-org--tiny-draft" / "refs").mkdir()
    (hub / "models--tiny-org--tiny-draft" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _draft_config(llama_dir, "tiny-org/tiny-draft")
    assert config.speculative.model == str(snapshot) == config.speculative.draft_model_config.model_path


def test_missing_draft_model_says_offline(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError) as info:
        EngineArgs(model=llama_dir, speculative_model=str(tmp_path / "no-draft"),
                   num_speculative_tokens=3).create_config()
    message = str(info.value)
    for word in ("the draft model of speculative_model (--speculative-model)", str(tmp_path / "no-draft"),
                 "is neither a local folder nor in the Hugging Face cache", "Pagoda works offline"):
        assert word in message, (word, message)
    with pytest.raises(ValueError, match=r"the draft model of speculative_config\['model'\] \(--speculative-config\)"
                                         r": model='some-org/not-here' is neither a local folder"):
        _draft_config(llama_dir, "some-org/not-here")


def test_draft_model_vocabulary_must_match(llama_dir, checkpoint):
    other = checkpoint("LlamaForCausalLM", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                       vocab_size=2048)
    target_vocab = EngineArgs(model=llama_dir).create_config().model.hf_config.vocab_size
    assert target_vocab != 2048
    with pytest.raises(ValueError) as info:
        _draft_config(llama_dir, other)
    assert str(info.value) == (f"speculative_config['model'] (--speculative-config): the draft model {other} has a "
                               f"vocabulary of 2048 tokens, the target model {target_vocab}; speculative decoding "
                               "needs the same vocabulary (tokenizer)")


def _config_only_copy(folder, tmp_path, architectures):
    """`folder`'s config.json (and tokenizer) with other architectures: the draft checks read no weights."""
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    with open(tmp_path / "config.json") as f:
        hf = json.load(f)
    hf["architectures"] = architectures
    (tmp_path / "config.json").write_text(json.dumps(hf))
    return str(tmp_path)


def test_pooling_draft_model_is_an_error(llama_dir, tmp_path):
    headless = _config_only_copy(llama_dir, tmp_path, ["LlamaModel"])  # a decoder saved without its LM head
    with pytest.raises(ValueError) as info:
        _draft_config(llama_dir, headless)
    message = str(info.value)
    for word in ("speculative_config['model'] (--speculative-config)", headless, "(LlamaModel) is an embedding "
                 "(pooling) model", "a draft model must be a generative decoder"):
        assert word in message, (word, message)


def test_unknown_draft_architecture_is_an_error(llama_dir, tmp_path):
    odd = _config_only_copy(llama_dir, tmp_path, ["MysteryForCausalLM"])
    with pytest.raises(ValueError, match=r"has architectures \['MysteryForCausalLM'\], which Pagoda does not run"):
        EngineArgs(model=llama_dir, speculative_model=odd, num_speculative_tokens=2).create_config()


def test_draft_model_position_limit_bounds_the_speculative_max_model_len(llama_dir, checkpoint):
    short = checkpoint("LlamaForCausalLM", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                       max_position_embeddings=128)
    # the draft reaches 128 positions, the target 512: no drafts past 128
    config = _draft_config(llama_dir, short)
    assert config.model.max_model_len == 512
    assert config.speculative.max_model_len == config.speculative.draft_model_config.max_model_len == 128
    # the user's speculative limit below the draft's: kept
    config = EngineArgs(model=llama_dir, speculative_model=short, num_speculative_tokens=2,
                        speculative_max_model_len=100).create_config()
    assert config.speculative.max_model_len == config.speculative.draft_model_config.max_model_len == 100
    # above the draft's: the draft's limit
    config = EngineArgs(model=llama_dir, speculative_config={"model": short, "num_speculative_tokens": 2,
                                                             "max_model_len": 300}).create_config()
    assert config.speculative.max_model_len == config.speculative.draft_model_config.max_model_len == 128
    # a target served shorter than the draft's limit: the draft follows it, no speculative limit needed
    config = _draft_config(llama_dir, short, max_model_len=64)
    assert config.speculative.max_model_len is None and config.speculative.draft_model_config.max_model_len == 64
    # still bounded by the target's
    with pytest.raises(ValueError, match=r"speculative_config\['max_model_len'\] \(--speculative-config\) cannot "
                                         r"be larger than the model's max_model_len \(64\), got 100"):
        EngineArgs(model=llama_dir, max_model_len=64, speculative_config={
            "model": short, "num_speculative_tokens": 2, "max_model_len": 100}).create_config()


def test_user_speculative_limit_equal_to_the_targets_is_kept(llama_dir, draft_dir):
    config = EngineArgs(model=llama_dir, speculative_config={"model": draft_dir, "num_speculative_tokens": 2,
                                                             "max_model_len": 512}).create_config()
    assert config.speculative.max_model_len == 512 == config.speculative.draft_model_config.max_model_len


def test_draft_model_for_a_pooling_target_is_an_error(llama_dir, draft_dir):
    with pytest.raises(ValueError, match="not supported for pooling"):
        EngineArgs(model=llama_dir, task="embed", speculative_model=draft_dir,
                   num_speculative_tokens=2).create_config()
