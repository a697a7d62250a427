"""vLLM's engine arguments as `LLM(...)` keywords: every one is accepted; a feature that a later issue adds
is a ValueError naming the keyword and the flag ("not supported yet"); options without effect are logged;
vLLM's spellings of implemented options work; --download-dir and the rope overrides are real (the rope
ones checked against transformers with the same config change)."""

import logging
import os
import shutil

import pytest
import torch

from pagoda import LLM, SamplingParams
from pagoda import engine_args_compat as compat
from pagoda.engine_args import EngineArgs
from tests.engine.conftest import PROMPTS

NOT_YET = [o for o in compat.ENGINE_OPTIONS if o.support == compat.NOT_YET]
NO_EFFECT = [o for o in compat.ENGINE_OPTIONS if o.support == compat.NO_EFFECT]


def other_value(opt: compat.Compat):
    """A value of the option's kind that differs from its default (and from what Pagoda accepts)."""
    default = opt.default
    if opt.kind == compat.BOOL:
        return not default
    if opt.kind == compat.INT:
        return 7 if default in (None, 0, 1) else default + 7
    samples = {compat.FLOAT: 3.5, compat.STR: "some-value", compat.OPTSTR: "hf_abc", compat.JSON: {"key": 1},
               compat.STRS: ["a", "b"], compat.INTS: [3, 5]}
    return samples[opt.kind]


def test_every_vllm_option_is_a_keyword_and_its_default_is_fine(llama_dir):
    defaults = {o.name: o.default for o in compat.ENGINE_OPTIONS}
    config = EngineArgs.from_kwargs(model=llama_dir, **defaults).create_config()
    assert config.parallel.world_size == 1
    accepted = EngineArgs(model=llama_dir, distributed_executor_backend="uni", limit_mm_per_prompt={"image": 0},
                          model_impl="vllm", config_format="hf", kv_cache_dtype="auto", cpu_offload_gb=0,
                          enable_lora=False, max_loras=1, tensor_parallel_size=1, ignore_patterns=["original/**/*"])
    accepted.check_options()
    EngineArgs(model=llama_dir, distributed_executor_backend="mp", tensor_parallel_size=1).check_options()  # 1 worker


@pytest.mark.parametrize("opt", NOT_YET, ids=lambda o: o.name)
def test_not_supported_yet_names_keyword_and_flag(opt, llama_dir):
    value = other_value(opt)
    with pytest.raises(ValueError) as info:
        EngineArgs(model=llama_dir, **{opt.name: value}).check_options()
    message = str(info.value)
    assert f"{opt.name}=" in message and opt.flag in message and "not supported yet" in message


@pytest.mark.parametrize("kwargs, flag", [
    ({"enable_lora": True}, "--enable-lora"),
    ({"quantization": "bitsandbytes"}, "--quantization"),
    ({"speculative_config": {"method": "eagle3", "model": "some/eagle", "num_speculative_tokens": 3}},
     "--speculative-config"),
    ({"speculative_model": "/models/draft", "num_speculative_tokens": 3, "speculative_model_quantization": "awq"},
     "--speculative-model-quantization"),
    ({"data_parallel_size": 2}, "-dp"),  # tensor and pipeline parallelism are implemented (tests/distributed)
    ({"distributed_executor_backend": "external_launcher"}, "--distributed-executor-backend"),
    ({"kv_cache_dtype": "fp8_inc"}, "--kv-cache-dtype"),  # fp8, fp8_e4m3, fp8_e5m2 are implemented
    ({"limit_mm_per_prompt": {"video": 2}}, "--limit-mm-per-prompt"),
    ({"load_format": "gguf"}, "--load-format"),
    ({"tokenizer_mode": "mistral"}, "--tokenizer-mode"),
    ({"runner": "draft"}, "--runner"),
    ({"convert": "classify"}, "--convert"),
    ({"task": "classify"}, "--task"),
])
def test_llm_refuses_features_not_supported_yet(kwargs, flag, llama_dir):
    with pytest.raises(ValueError, match="not supported yet") as info:
        LLM(llama_dir, **kwargs)
    assert flag in str(info.value)


def test_no_effect_options_are_logged_once(llama_dir, caplog, monkeypatch):
    monkeypatch.setattr(compat, "_logged", set())
    kwargs = {"swap_space": 16, "use_v2_block_manager": True, "disable_sliding_window": True,
              "num_scheduler_steps": 8, "prefix_caching_hash_algo": "xxhash"}
    with caplog.at_level(logging.WARNING, logger="pagoda.engine_args_compat"):
        EngineArgs(model=llama_dir, **kwargs).create_config()
        EngineArgs(model=llama_dir, **kwargs)
    lines = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert len(lines) == len(kwargs)  # one line each, not repeated
    for name in kwargs:
        assert any(line.startswith("--" + name.replace("_", "-")) for line in lines), name
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pagoda.engine_args_compat"):
        EngineArgs(model=llama_dir, swap_space=4.0, use_v2_block_manager=None)  # defaults: nothing to say
    assert not caplog.records
    for opt in NO_EFFECT:  # any value is accepted
        EngineArgs(model=llama_dir, **{opt.name: other_value(opt)}).check_options()


def test_vllm_spellings_of_implemented_options(llama_dir):
    assert EngineArgs(model=llama_dir, runner="pooling").create_config().model.task == "embed"
    assert EngineArgs(model=llama_dir, convert="embed").create_config().model.task == "embed"
    assert EngineArgs(model=llama_dir, runner="generate").create_config().model.task == "generate"
    assert EngineArgs(model=llama_dir, task="embedding").create_config().model.task == "embed"
    with pytest.raises(ValueError, match="runner"):
        EngineArgs(model=llama_dir, task="generate", runner="pooling").create_config()
    assert EngineArgs(model=llama_dir, tokenizer_mode="hf").create_config().model.tokenizer_mode == "auto"
    limit = EngineArgs(model=llama_dir).create_config().model.max_model_len
    assert EngineArgs(model=llama_dir, max_model_len=-1).create_config().model.max_model_len == limit
    mean = EngineArgs(model=llama_dir, runner="pooling", pooler_config={"pooling_type": "MEAN"}).create_config()
    assert mean.model.pooler_config.pooling_type == "MEAN"
    with pytest.raises(ValueError, match="pooler_config"):
        EngineArgs(model=llama_dir, pooler_config={"pooling_type": "MEAN"},
                   override_pooler_config={"pooling_type": "CLS"}).create_config()


def test_unknown_keyword_suggests_only_a_close_one(llama_dir):
    with pytest.raises(TypeError, match="Did you mean 'enable_lora'"):
        LLM(llama_dir, enable_lorra=True)
    with pytest.raises(TypeError) as info:
        LLM(llama_dir, foo_bar_baz=1)
    assert "Did you mean" not in str(info.value)


def _hub_cache(root, folder, repo="tiny-org/tiny-llama"):
    """A Hugging Face cache holding `folder` as the snapshot of `repo` (main)."""
    entry = root / ("models--" + repo.replace("/", "--"))
    snapshot = entry / "snapshots" / "abc123"
    shutil.copytree(folder, snapshot)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    return snapshot


def test_download_dir_is_the_cache_a_hub_id_resolves_in(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-default-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _hub_cache(tmp_path / "downloads", llama_dir)
    with pytest.raises(ValueError, match="empty-default-cache"):
        EngineArgs(model="tiny-org/tiny-llama").create_config()
    config = EngineArgs(model="tiny-org/tiny-llama", download_dir=str(tmp_path / "downloads")).create_config()
    assert config.model.model_path == str(snapshot) and config.model.tokenizer_path == str(snapshot)
    with pytest.raises(ValueError, match="elsewhere"):
        EngineArgs(model="tiny-org/tiny-llama", download_dir=str(tmp_path / "elsewhere")).create_config()
    # a local folder is used as it is, whatever download_dir says
    local = EngineArgs(model=llama_dir, download_dir=str(tmp_path / "elsewhere")).create_config()
    assert local.model.model_path == os.path.abspath(llama_dir)


# ---- rope overrides against transformers --------------------------------------------------------------
def _hf_greedy_with_rope(folder, rope_parameters, prompt_ids, max_new_tokens):
    """transformers' greedy tokens after setting config.rope_parameters (the same change, on its side)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    config.rope_parameters = rope_parameters
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
    results = []
    with torch.no_grad():
        for ids in prompt_ids:
            tokens = list(ids)
            for _ in range(max_new_tokens):
                tokens.append(int(torch.argmax(model(torch.tensor([tokens])).logits[0, -1])))
            results.append(tokens[len(ids):])
    return results, model


def _pagoda_greedy(folder, prompt_ids, max_new_tokens, **kwargs):
    llm = LLM(folder, dtype="float32", max_model_len=256, device="cpu", **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm


def _rope_cache_of(folder, **kwargs):
    from pagoda.attention.torch_backend import TorchAttentionBackend
    from pagoda.model_executor.layers.rotary import RotaryEmbedding
    from pagoda.model_executor.model_loader import get_model

    config = EngineArgs(model=folder, device="cpu", dtype="float32", **kwargs).create_config()
    model = get_model(config.model, config.load, "cpu", TorchAttentionBackend())
    return next(m for m in model.modules() if isinstance(m, RotaryEmbedding)).cos_sin_cache


@pytest.mark.parametrize("kwargs, rope_parameters", [
    ({"rope_theta": 50.0}, {"rope_type": "default", "rope_theta": 50.0}),
    ({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, {"rope_type": "linear", "factor": 4.0,
                                                                "rope_theta": 10000.0}),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 300.0},
     {"rope_type": "linear", "factor": 2.0, "rope_theta": 300.0}),
], ids=["theta", "linear", "legacy-type-and-theta"])
def test_rope_overrides_equal_transformers_with_the_same_config_change(kwargs, rope_parameters, llama_dir):
    from pagoda.kernels.rope_cache import build_cos_sin_cache

    base_cache, cache = _rope_cache_of(llama_dir), _rope_cache_of(llama_dir, **kwargs)
    assert not torch.equal(cache[: base_cache.shape[0]], base_cache)  # the override reached the rope cache
    expected = build_cos_sin_cache(rope_parameters["rope_theta"], cache.shape[1], cache.shape[0], rope_parameters)
    assert torch.equal(cache, expected)

    prompt_ids = [[int(t) for t in ids] for ids in _prompt_ids(llama_dir)]
    ours, llm = _pagoda_greedy(llama_dir, prompt_ids, 10, **kwargs)
    theirs, hf_model = _hf_greedy_with_rope(llama_dir, rope_parameters, prompt_ids, 10)
    assert ours == theirs
    base, _ = _pagoda_greedy(llama_dir, prompt_ids, 10)
    assert base != ours  # the outputs really changed
    inv_freq = hf_model.model.rotary_emb.inv_freq.float()  # transformers' frequencies, its scaling applied
    rot = cache.shape[1] // 2
    positions = torch.arange(cache.shape[0], dtype=torch.float32)
    assert torch.allclose(cache[:, :rot], torch.cos(torch.outer(positions, inv_freq)), atol=1e-5)


def _prompt_ids(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return [tokenizer.encode(p) for p in PROMPTS[:4]]


def test_linear_rope_scaling_stretches_the_model_limit_as_vllm(llama_dir):
    limit = EngineArgs(model=llama_dir).create_config().model.max_model_len
    scaled = EngineArgs(model=llama_dir, rope_scaling={"rope_type": "linear", "factor": 2.0}).create_config()
    assert scaled.model.max_model_len == 2 * limit
    assert scaled.model.hf_config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


@pytest.mark.parametrize("arch, kwargs, error, match", [
    ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, ValueError,
     r"rope_type='yarn' is not supported; supported: \['default', 'linear', 'llama3'\]"),
    ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "linear"}}, ValueError, "needs factor > 0"),
    ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, ValueError, "low_freq_factor"),
    ("LlamaForCausalLM", {"rope_scaling": {"factor": 2.0}}, ValueError, "rope_type=None is not supported"),
    ("LlamaForCausalLM", {"rope_scaling": "linear"}, TypeError, "rope_scaling must be a dict"),
    ("LlamaForCausalLM", {"rope_theta": -5.0}, ValueError, "rope_theta must be a number > 0"),
    ("LlamaForCausalLM", {"rope_theta": "big"}, ValueError, "rope_theta must be a number > 0"),
    ("GPT2LMHeadModel", {"rope_theta": 1000.0}, ValueError, "rope_theta: model_type 'gpt2' has no"),
    ("OPTForCausalLM", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, ValueError, "rope_scaling: model_type"),
], ids=["yarn", "linear-without-factor", "llama3-without-fields", "no-type", "not-a-dict", "negative-theta",
        "text-theta", "gpt2-has-no-rope", "opt-has-no-rope"])
def test_bad_rope_overrides_are_clear_errors(arch, kwargs, error, match, checkpoint):
    with pytest.raises(error, match=match):
        EngineArgs(model=checkpoint(arch), **kwargs).create_config()


def test_llama3_rope_override_equals_transformers(llama_dir):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    prompt_ids = _prompt_ids(llama_dir)[:2]
    ours, _ = _pagoda_greedy(llama_dir, prompt_ids, 8, rope_scaling=scaling)
    theirs, _ = _hf_greedy_with_rope(llama_dir, {**scaling, "rope_theta": 10000.0}, prompt_ids, 8)
    assert ours == theirs


def test_reasoning_parser_is_accepted_offline_with_no_effect(caplog):
    """vLLM code passes reasoning_parser to LLM(...); offline it changes nothing (the server's flag splits chat)."""
    import logging

    with caplog.at_level(logging.INFO):
        args = EngineArgs.from_kwargs(model="m", reasoning_parser="deepseek_r1")
    assert args.reasoning_parser == "deepseek_r1"
    assert "reasoning_parser" in caplog.text and "no effect" in caplog.text
