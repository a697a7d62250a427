"""The float reference of an AWQ model, written from the format's description and independent of Pagoda's AWQ
code: transformers' fp32 model whose nn.Linear weights are the checkpoint's dequantized ones.

- Unpacking: nibble p (bits 4p .. 4p + 3) of packed int32 column c is logical column 8c + ORDER[p], with
  AutoAWQ's ORDER = [0, 2, 4, 6, 1, 3, 5, 7].
- Dequantization: w[i, j] = (q[i, j] - z[i // G, j]) * s[i // G, j] on the [in, out] layout; the
  nn.Linear weight is its transpose. G is the config's group size (-1: the whole input).

Also: building AWQ checkpoints once per arguments for all test modules, and running Pagoda greedily.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_made: dict = {}


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """[R, C] int32 -> [R, 8C] int64 values in logical column order."""
    wide = packed.to(torch.int64)
    out = torch.empty(packed.shape[0], packed.shape[1] * 8, dtype=torch.int64)
    for p, column in enumerate(ORDER):
        out[:, column::8] = (wide >> (4 * p)) & 15
    return out


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """The [in, out] fp32 weight."""
    rows = qweight.shape[0]
    group_of_row = torch.arange(rows) // (rows if group_size == -1 else group_size)
    q, z, s = unpack(qweight).float(), unpack(qzeros).float(), scales.float()
    return (q - z[group_of_row]) * s[group_of_row]


def quant_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f).get("quantization_config")
    if config is None:
        for name in ("quant_config.json", "quantize_config.json"):
            if os.path.isfile(os.path.join(folder, name)):
                with open(os.path.join(folder, name)) as f:
                    config = json.load(f)
    return config


def reference_model(folder: str, swap: tuple[str, str] | None = None):
    """transformers' fp32 model of AWQ checkpoint `folder` with dequantized weights. `swap=(a, b)` exchanges
    two modules' weights: a deliberately wrong reference, to show the comparison notices a misplaced piece."""
    quant = quant_config(folder)
    group_size = quant.get("group_size", quant.get("q_group_size"))
    return dequantized_model(folder, lambda state, name: dequantize(
        state.pop(name + ".qweight"), state.pop(name + ".qzeros"), state.pop(name + ".scales"), group_size), swap)


def dequantized_model(folder: str, weight_of, swap: tuple[str, str] | None = None):
    """transformers' fp32 model of packed checkpoint `folder` (any int4/int8 format): each layer with a `qweight`
    gets `weight_of(state, name)` ([in, out], its packed tensors popped from `state`), transposed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = load_file(os.path.join(folder, "model.safetensors"))
    for name in [k[: -len(".qweight")] for k in list(state) if k.endswith(".qweight")]:
        state[name + ".weight"] = weight_of(state, name).t().contiguous()
    if swap:
        a, b = (name + ".weight" for name in swap)
        state[a], state[b] = state[b], state[a]
    model.load_state_dict(state, strict=True)
    return model


def awq_checkpoint(tmp_path_factory, tok_dir: str, arch: str = "LlamaForCausalLM", **kwargs) -> str:
    """make_awq_checkpoint(arch, ..., **kwargs), built once per arguments for the whole session."""
    from pagoda.tiny_quantized_models import make_awq_checkpoint

    return cached_checkpoint(make_awq_checkpoint, "awq", tmp_path_factory, tok_dir, arch, kwargs)


def cached_checkpoint(builder, tag: str, tmp_path_factory, tok_dir: str, arch: str, kwargs: dict) -> str:
    """builder(arch, a new folder, tok_dir, **kwargs), built once per (builder, arguments) for the whole session."""
    key = (tag, arch, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())))
    if key not in _made:
        _made[key] = builder(arch, str(tmp_path_factory.mktemp(f"{tag}-{arch}")), tok_dir, **kwargs)
    return _made[key]


def pagoda_greedy(folder: str, prompt_ids, max_tokens: int, **kwargs):
    """(the LLM, [(greedy token ids, their logprobs)] per prompt)."""
    from pagoda import LLM, SamplingParams

    llm = LLM(folder, max_model_len=128, **{"dtype": "float32", **kwargs})
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=0)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    return llm, [(list(o.outputs[0].token_ids), [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs,
                                                                              o.outputs[0].token_ids)]) for o in outs]


def compare(reference, prompt_ids, ours, tol: float) -> tuple[int, int]:
    """(positions whose greedy token differs from the reference's, positions whose logprob differs by > tol)."""
    wrong_tokens = off = 0
    with torch.no_grad():
        for ids, (tokens, logprobs) in zip(prompt_ids, ours):
            logits = reference(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1]
            ref = torch.log_softmax(logits.float(), -1)
            wrong_tokens += sum(int(ref[j].argmax()) != t for j, t in enumerate(tokens))
            off += sum(abs(float(ref[j, t]) - lp) > tol for j, (t, lp) in enumerate(zip(tokens, logprobs)))
    return wrong_tokens, off
