"""Bad input raises ValueError (or TypeError) naming the field."""

import json
import os
import shutil

import pytest

from pagoda import LLM, SamplingParams
from pagoda.engine_args import EngineArgs


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, max_model_len=64, max_logprobs=5)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=-2), "top_k"),
        (dict(n=0), "n"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(min_p=2.0), "min_p"),
        (dict(min_tokens=5, max_tokens=2), "min_tokens"),
        (dict(logprobs=-2), "logprobs"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(presence_penalty=-2.1), "presence_penalty"),
        (dict(frequency_penalty=-3.0), "frequency_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(n=3, best_of=2), "best_of"),
        (dict(best_of=0), "best_of"),
        (dict(allowed_token_ids=[]), "allowed_token_ids"),
        (dict(logit_bias={"x": 1.0}), "logit_bias"),
        (dict(bad_words=[" "]), "bad_words"),
        (dict(truncate_prompt_tokens=0), "truncate_prompt_tokens"),
        (dict(output_kind="delta"), "output_kind"),
        (dict(logits_processors=["not callable"]), "logits_processors"),
    ],
)
def test_sampling_params_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_token_ids_outside_the_vocabulary(llm):
    vocab = llm.llm_engine.config.model.vocab_size
    for kwargs, field in [(dict(logit_bias={vocab: 1.0}), "logit_bias"), (dict(logit_bias={-1: 1.0}), "logit_bias"),
                          (dict(allowed_token_ids=[1, vocab + 5]), "allowed_token_ids")]:
        with pytest.raises(ValueError, match=field):
            llm.generate("hi", SamplingParams(max_tokens=2, **kwargs), use_tqdm=False)
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        llm.generate("hi", SamplingParams(truncate_prompt_tokens=65), use_tqdm=False)
    with pytest.raises(ValueError, match="embed"):
        llm.embed(["hi"], use_tqdm=False)
    assert llm.generate("x", SamplingParams(max_tokens=2), use_tqdm=False)[0].finished


def test_logprobs_above_max_logprobs(llm):
    with pytest.raises(ValueError, match="max_logprobs"):
        llm.generate("hi", SamplingParams(logprobs=6), use_tqdm=False)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        llm.generate("hi", SamplingParams(prompt_logprobs=9), use_tqdm=False)


def test_prompt_longer_than_max_model_len(llm):
    with pytest.raises(ValueError, match="max_model_len=64"):
        llm.generate({"prompt_token_ids": [5] * 64}, use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate({"prompt_token_ids": [10**7]}, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)
    # The engine stays usable after rejected requests.
    assert llm.generate("x", SamplingParams(max_tokens=2), use_tqdm=False)[0].finished


def test_unknown_architecture_lists_supported(llama_dir):
    with pytest.raises(ValueError, match="LlamaForCausalLM") as info:
        LLM(llama_dir, hf_overrides={"architectures": ["NoSuchModelForCausalLM"]})
    assert "NoSuchModelForCausalLM" in str(info.value)


def test_missing_weights(llama_dir, tmp_path):
    folder = tmp_path / "no-weights"
    shutil.copytree(llama_dir, folder)
    for name in os.listdir(folder):
        if name.endswith((".safetensors", ".bin")) or name.endswith(".index.json"):
            os.remove(folder / name)
    with pytest.raises(ValueError, match="model"):
        LLM(str(folder))
    # dummy weights need no files
    assert LLM(str(folder), load_format="dummy", max_model_len=64).generate("a", SamplingParams(max_tokens=2), use_tqdm=False)


def test_missing_model_says_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="neither a local folder nor in the Hugging Face cache"):
        EngineArgs(model="some-org/not-here").create_config()


def test_engine_argument_errors(llama_dir):
    with pytest.raises(TypeError, match="max_num_seq"):
        LLM(llama_dir, max_num_seq=4)
    with pytest.raises(ValueError, match="dtype"):
        LLM(llama_dir, dtype="float8")
    with pytest.raises(ValueError, match="block_size"):
        LLM(llama_dir, block_size=12)
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(llama_dir, max_model_len=10**6)
    with pytest.raises(ValueError, match="scheduling_policy"):
        LLM(llama_dir, scheduling_policy="lifo")


def test_hub_id_resolves_from_local_cache(llama_dir, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snapshot = hub / "models--tiny-org--tiny-llama" / "snapshots" / "abc123"
    shutil.copytree(llama_dir, snapshot)
    (hub / "models--tiny-org--tiny-llama" / "refs").mkdir()
    (hub / "models--tiny-org--tiny-llama" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = EngineArgs(model="tiny-org/tiny-llama").create_config()
    assert config.model.model_path == str(snapshot)
    assert json.load(open(os.path.join(config.model.model_path, "config.json")))["architectures"] == ["LlamaForCausalLM"]


def test_batch_defaults_follow_the_gpu_and_the_caller(llama_dir, monkeypatch):
    """vLLM's defaults: 256 requests / 8192 tokens per step on CPU and small GPUs; on a GPU of at least
    70 GiB 1024 requests and 16384 tokens (LLM) or 8192 (server); graphs capture up to max_num_seqs
    (LLM) or 512 (server)."""
    from pagoda import engine_args as ea

    cpu = EngineArgs(model=llama_dir, device="cpu").create_config()
    assert (cpu.scheduler.max_num_seqs, cpu.scheduler.max_num_batched_tokens, cpu.max_cudagraph_capture_size) == (256, 8192, 256)
    monkeypatch.setattr(ea, "_big_gpu", lambda device: True)
    big = EngineArgs(model=llama_dir, device="cpu").create_config()
    assert (big.scheduler.max_num_seqs, big.scheduler.max_num_batched_tokens, big.max_cudagraph_capture_size) == (1024, 16384, 1024)
    served = EngineArgs(model=llama_dir, device="cpu", usage_context="server").create_config()
    assert (served.scheduler.max_num_batched_tokens, served.max_cudagraph_capture_size) == (8192, 512)
    mine = EngineArgs(model=llama_dir, device="cpu", max_num_seqs=64, max_num_batched_tokens=100, max_cudagraph_capture_size=16).create_config()
    assert (mine.scheduler.max_num_seqs, mine.scheduler.max_num_batched_tokens, mine.max_cudagraph_capture_size) == (64, 100, 16)
    with pytest.raises(ValueError, match="max_cudagraph_capture_size"):
        EngineArgs(model=llama_dir, max_cudagraph_capture_size=0).create_config()
    with pytest.raises(ValueError, match="usage_context"):
        EngineArgs(model=llama_dir, usage_context="batch").create_config()
