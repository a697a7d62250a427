"""generation_config.json supplies default sampling settings and EOS ids (vLLM's --generation-config)."""

import json
import os
import shutil

import pytest

from pagoda import LLM, SamplingParams
from tests.engine.conftest import PROMPTS


def _write_generation_config(folder, **values):
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(values, f)


@pytest.fixture(scope="module")
def folder(llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("genconfig") / "model"
    shutil.copytree(llama_dir, folder)
    return str(folder)


def test_generation_config_modes(folder, llama_dir):
    eos = json.load(open(os.path.join(llama_dir, "generation_config.json")))["eos_token_id"]
    prompt = PROMPTS[1]
    settings = dict(temperature=0.0, repetition_penalty=1.8, top_k=50, top_p=0.9, max_new_tokens=7)
    _write_generation_config(folder, **settings, eos_token_id=eos)
    # "none" reads nothing from the file: find a token the greedy, penalized run makes, to be an extra EOS.
    none = LLM(folder, generation_config="none", max_model_len=128)
    assert none.get_default_sampling_params() == SamplingParams()
    explicit = SamplingParams(temperature=0, repetition_penalty=1.8, max_tokens=7, ignore_eos=False)
    tokens = none.generate(prompt, explicit, use_tqdm=False)[0].outputs[0].token_ids
    extra = tokens[3]
    assert extra not in tokens[:3]
    _write_generation_config(folder, **settings, eos_token_id=eos + [extra])

    auto = LLM(folder, max_model_len=128)
    defaults = auto.get_default_sampling_params()
    # top_k=50 is transformers' default, so (as in vLLM) it is not taken; greedy resets top_p.
    assert (defaults.temperature, defaults.repetition_penalty, defaults.top_k, defaults.max_tokens) == (0.0, 1.8, -1, 7)
    out = auto.generate(prompt, use_tqdm=False)[0].outputs[0]
    assert out.token_ids == tokens[:4] and out.finish_reason == "stop"  # the extra EOS id stops it
    assert none.generate(prompt, explicit, use_tqdm=False)[0].outputs[0].token_ids == tokens  # "none": no extra EOS

    vllm = LLM(folder, generation_config="vllm", max_model_len=128)
    assert vllm.get_default_sampling_params() == SamplingParams()
    assert vllm.generate(prompt, explicit, use_tqdm=False)[0].outputs[0].token_ids == tokens[:4]

    override = LLM(folder, max_model_len=128, override_generation_config={"max_new_tokens": 2, "temperature": 0.0})
    assert override.get_default_sampling_params().max_tokens == 2
    with pytest.raises(ValueError, match="generation_config"):
        LLM(folder, generation_config="/no/such/folder")


def test_max_tokens_none_runs_to_max_model_len(llama_dir):
    llm = LLM(llama_dir, max_model_len=40, block_size=8)
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 40
    assert out.outputs[0].finish_reason == "length"
