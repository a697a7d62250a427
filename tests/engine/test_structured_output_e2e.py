"""Structured output end to end through LLM.generate: every finished output satisfies its constraint.

A tiny random-weight model samples (temperature 1, several seeds, n > 1) under a JSON schema, a regex,
a choice list and a grammar, on each backend; whenever an output ends with finish_reason "stop" it
must validate (jsonschema, re.fullmatch, membership). Greedy outputs under a grammar must not depend on
how the engine ran them (async scheduling on or off, chunked prefill, forced preemption, prefix
caching, n-gram speculative decoding), and hitting max_tokens inside a structure ends with "length".
"""

import json
import re
import threading

import jsonschema
import pytest

from pagoda import LLM, SamplingParams
from pagoda.sampling_params import GuidedDecodingParams, StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["ok", "color", "n"],
    "additionalProperties": False,
}
# outlines does not enforce minimum / maximum (it refuses them), so it gets the schema without the range
OUTLINES_SCHEMA = {**SCHEMA, "properties": {**SCHEMA["properties"], "n": {"type": "integer"}}}
REGEX = r"[a-c]{2,4}-[0-9]{1,2}"
CHOICES = ["positive", "negative", "neutral"]
GRAMMARS = {  # the same language: "yes" or "no", a space, one to three digits
    "xgrammar": 'root ::= ("yes" | "no") " " [0-9] [0-9]? [0-9]?',
    "guidance": 'start: ("yes" | "no") " " /[0-9]{1,3}/',
}
GRAMMAR_RE = r"(yes|no) [0-9]{1,3}"
PROMPTS = ["Answer in JSON:", "def f(x):", "The colour is", "a"]


def _llm(folder, **kwargs):
    kwargs.setdefault("kv_cache_memory_bytes", 64 << 20)
    kwargs.setdefault("max_model_len", 256)
    return LLM(folder, dtype="float32", **kwargs)


def _check(kind, text, backend=None):
    if kind == "json":
        jsonschema.validate(json.loads(text), OUTLINES_SCHEMA if backend == "outlines" else SCHEMA)
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif kind == "choice":
        assert text in CHOICES, text
    else:
        assert re.fullmatch(GRAMMAR_RE, text), text


def _params(kind, backend, **extra):
    if kind == "json":
        return StructuredOutputsParams(json=OUTLINES_SCHEMA if backend == "outlines" else SCHEMA, backend=backend,
                                       disable_any_whitespace=True, **extra)
    if kind == "regex":
        return StructuredOutputsParams(regex=REGEX, backend=backend, **extra)
    if kind == "choice":
        return StructuredOutputsParams(choice=CHOICES, backend=backend, **extra)
    return StructuredOutputsParams(grammar=GRAMMARS[backend], backend=backend, **extra)


@pytest.fixture(scope="module")
def llm(llama_dir):
    return _llm(llama_dir)


@pytest.mark.parametrize("backend,kind", [
    ("xgrammar", "json"), ("xgrammar", "regex"), ("xgrammar", "choice"), ("xgrammar", "grammar"),
    ("guidance", "json"), ("guidance", "regex"), ("guidance", "choice"), ("guidance", "grammar"),
    ("outlines", "json"), ("outlines", "regex"), ("outlines", "choice"),
])
def test_sampled_outputs_satisfy_the_constraint(llm, backend, kind):
    finished = 0
    for seed in range(3):
        params = SamplingParams(temperature=1.0, seed=seed, n=2, max_tokens=60,
                                structured_outputs=_params(kind, backend))
        for out in llm.generate(PROMPTS, params, use_tqdm=False):
            for completion in out.outputs:
                if completion.finish_reason == "stop":
                    _check(kind, completion.text, backend)
                    finished += 1
                else:
                    assert completion.finish_reason == "length"
    assert finished >= 6, f"only {finished} of 24 outputs finished; the test checks too little"


def test_guided_decoding_name_and_json_object(llm):
    params = SamplingParams(temperature=0.0, max_tokens=40,
                            guided_decoding=GuidedDecodingParams(choice=["yes", "no"]))
    out = llm.generate(PROMPTS, params, use_tqdm=False)
    assert all(o.outputs[0].text in ("yes", "no") and o.outputs[0].finish_reason == "stop" for o in out)
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=80,
                            structured_outputs=StructuredOutputsParams(json_object=True, disable_any_whitespace=True))
    for o in llm.generate(PROMPTS, params, use_tqdm=False):
        if o.outputs[0].finish_reason == "stop":
            assert isinstance(json.loads(o.outputs[0].text), dict)
        else:
            assert o.outputs[0].text.startswith("{")


def test_mixed_batch_leaves_unconstrained_requests_alone(llm):
    free = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, free, use_tqdm=False)]
    constrained = SamplingParams(temperature=0.0, max_tokens=30,
                                 structured_outputs=StructuredOutputsParams(regex=REGEX))
    outs = llm.generate(PROMPTS * 2, [free] * len(PROMPTS) + [constrained] * len(PROMPTS), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs[:len(PROMPTS)]] == alone
    for o in outs[len(PROMPTS):]:
        assert re.fullmatch(REGEX, o.outputs[0].text), o.outputs[0].text


def test_max_tokens_inside_a_structure_ends_with_length(llm):
    params = SamplingParams(temperature=0.0, max_tokens=3, structured_outputs=StructuredOutputsParams(json=SCHEMA))
    out = llm.generate(PROMPTS, params, use_tqdm=False)
    for o in out:
        assert o.outputs[0].finish_reason == "length"
        assert len(o.outputs[0].token_ids) == 3
        assert o.outputs[0].text.startswith("{")


def test_bad_constraints_are_refused_naming_the_field(llm):
    with pytest.raises(ValueError, match="structured_outputs"):
        llm.generate("a", SamplingParams(structured_outputs=StructuredOutputsParams(json="{not json")),
                     use_tqdm=False)
    with pytest.raises(ValueError, match="regex"):
        llm.generate("a", SamplingParams(structured_outputs=StructuredOutputsParams(regex="(unclosed")),
                     use_tqdm=False)
    with pytest.raises(ValueError, match="outlines does not enforce the JSON-schema keyword 'minimum'"):
        llm.generate("a", SamplingParams(structured_outputs=StructuredOutputsParams(json=SCHEMA, backend="outlines")),
                     use_tqdm=False)
    with pytest.raises(ValueError, match="lm-format-enforcer"):
        llm.generate("a", SamplingParams(structured_outputs=StructuredOutputsParams(
            regex="a+", backend="lm-format-enforcer")), use_tqdm=False)
    # the engine still serves afterwards
    ok = llm.generate("a", SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(choice=["x"])),
                      use_tqdm=False)
    assert ok[0].outputs[0].text == "x"


GREEDY_KINDS = ["json", "regex", "grammar"]


@pytest.fixture(scope="module")
def greedy_reference(llm):
    return {kind: _greedy(llm, kind) for kind in GREEDY_KINDS}


def _greedy(llm, kind):
    params = SamplingParams(temperature=0.0, max_tokens=40, structured_outputs=_params(kind, "xgrammar"))
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.mark.parametrize("engine", [
    dict(async_scheduling=False),
    dict(enable_prefix_caching=True, block_size=8, max_num_batched_tokens=5),  # chunked prefill
    dict(enable_prefix_caching=False, block_size=8, num_gpu_blocks_override=12, max_num_seqs=4),  # preemption
    dict(speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2,
                             "prompt_lookup_min": 1}),
], ids=["sync", "chunked", "preempt", "ngram"])
def test_greedy_outputs_do_not_depend_on_how_the_engine_ran(llama_dir, greedy_reference, engine):
    if "num_gpu_blocks_override" in engine:
        engine = dict(engine, kv_cache_memory_bytes=None, max_model_len=96)
    other = _llm(llama_dir, **engine)
    for kind in GREEDY_KINDS:
        assert _greedy(other, kind) == greedy_reference[kind], kind
    stats = other.llm_engine.stats()
    if "speculative_config" in engine:
        assert stats["spec_decode_num_draft_tokens"] > 0  # drafts were checked against the grammars and verified
    if "num_gpu_blocks_override" in engine:
        assert stats["num_preemptions"] > 0


def test_drafts_under_a_grammar_are_verified_with_its_masks(llama_dir):
    """A draft the grammar allows is verified at its position under the mask of the tokens before it: with
    drafts that are the constrained greedy continuation (acceptance 1), the output is unchanged."""
    llm = _llm(llama_dir, speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                                              "prompt_lookup_max": 2, "prompt_lookup_min": 1})
    reference = _greedy(_llm(llama_dir), "json")
    spec = llm.llm_engine.core.executor.worker.runner.spec
    from pagoda.spec_decode.oracle_proposer import OracleProposer

    prompt_ids = [o.prompt_token_ids for o in llm.generate(PROMPTS, SamplingParams(max_tokens=1), use_tqdm=False)]
    spec.proposer = OracleProposer(4, [list(p) + list(r) for p, r in zip(prompt_ids, reference)], key_len=1)
    assert _greedy(llm, "json") == reference
    stats = llm.llm_engine.stats()
    assert stats["spec_decode_num_accepted_tokens"] > 0.5 * stats["spec_decode_num_draft_tokens"] > 0


# ---- reasoning: the grammar starts after the end-of-reasoning marker ---------------------------------------
MARKERS = ("<|im_start|>", "<|pad|>")  # one token each in the test tokenizer (and no stop token), as <think> </think>


def _forcing(forced):
    """A logits processor that makes the first len(forced) output tokens `forced`, then changes nothing."""
    def processor(output_ids, logits):
        if len(output_ids) < len(forced):
            token = forced[len(output_ids)]
            logits.fill_(float("-inf"))
            logits[token] = 0.0
        return logits
    return processor


def test_the_grammar_waits_for_the_end_of_reasoning(llama_dir):
    llm = _llm(llama_dir, structured_outputs_config={"reasoning_markers": list(MARKERS)})
    tokenizer = llm.get_tokenizer()
    start, end = (tokenizer.convert_tokens_to_ids(m) for m in MARKERS)
    thought = tokenizer.encode(" thinking hard", add_special_tokens=False)
    choice = StructuredOutputsParams(choice=["yes", "no"])
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=30, skip_special_tokens=False,
                            structured_outputs=choice, logits_processors=[_forcing(thought + [end])])
    out = llm.generate({"prompt_token_ids": tokenizer.encode("Question?")}, params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids[:len(thought) + 1] == thought + [end]  # the reasoning was not constrained
    answer = tokenizer.decode(out.token_ids[len(thought) + 1:], skip_special_tokens=True)
    assert answer in ("yes", "no") and out.finish_reason == "stop"  # ... and the answer was
    # A prompt that already closed the reasoning: the grammar applies from the first token.
    closed = tokenizer.encode("Question?") + [start] + thought + [end]
    plain = SamplingParams(temperature=1.0, seed=0, max_tokens=30, structured_outputs=choice)
    first = llm.generate({"prompt_token_ids": closed}, plain, use_tqdm=False)[0].outputs[0]
    assert first.text in ("yes", "no") and first.finish_reason == "stop"


def test_without_a_reasoning_parser_the_grammar_constrains_the_reasoning_too(llm):
    tokenizer = llm.get_tokenizer()
    thought = tokenizer.encode(" thinking hard", add_special_tokens=False)
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=30, logits_processors=[_forcing(thought)],
                            structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    out = llm.generate({"prompt_token_ids": tokenizer.encode("Question?")}, params, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "error" and "not allowed by the request's grammar" in out.error


def test_a_request_aborted_while_its_grammar_compiles_leaves_nothing_behind(llm):
    engine = llm.llm_engine
    core = engine.core
    gate = threading.Event()
    manager = core.structured._get_manager()
    busy = [manager._pool.submit(gate.wait) for _ in range(manager._pool._max_workers)]  # compiles wait
    params = SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(regex="q+ abort me"))
    engine.add_request("parked-1", {"prompt_token_ids": [5, 6, 7]}, params)
    assert "parked-1" in core.structured.parked and core.has_unfinished_requests()
    from pagoda.core.request import EngineCoreRequest

    with pytest.raises(ValueError, match="already in use"):  # a parked id is taken, for any request
        core.add_request(EngineCoreRequest("parked-1", [5, 6], SamplingParams(max_tokens=2), None))
    engine.abort_request("parked-1")
    assert "parked-1" not in core.structured.parked and "parked-1" not in core.scheduler.requests
    assert not engine.has_unfinished_requests()
    gate.set()
    for future in busy:
        future.result(timeout=10)
    out = llm.generate("a", SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(choice=["z"])),
                       use_tqdm=False)
    assert out[0].outputs[0].text == "z"  # the engine serves on


def test_masks_are_filled_on_the_grammar_thread_while_outputs_go_out(llm, monkeypatch):
    """With async scheduling a step's bitmask is filled on the engine's grammar thread (the engine thread
    meanwhile returns the previous step's outputs); every output still satisfies its constraint."""
    from pagoda.engine.structured_requests import StructuredRequests

    threads = set()
    original = StructuredRequests.fill

    def fill(self, *args):
        threads.add(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(StructuredRequests, "fill", fill)
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=40, structured_outputs=_params("json", "xgrammar"))
              for s in range(6)]
    outs = llm.generate(PROMPTS[:2] * 3, params, use_tqdm=False)
    assert threads and all(name.startswith("grammar-fill") for name in threads), threads
    for out in outs:
        if out.outputs[0].finish_reason == "stop":
            _check("json", out.outputs[0].text)


def test_a_failing_mask_fill_fails_that_steps_requests_and_the_engine_goes_on(llm, monkeypatch):
    from pagoda.engine.structured_requests import StructuredRequests

    original, calls = StructuredRequests.fill, {"n": 0}

    def fill(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected fill failure")
        return original(self, *args)

    monkeypatch.setattr(StructuredRequests, "fill", fill)
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=20, ignore_eos=True,
                            structured_outputs=_params("json", "xgrammar"))
    outs = llm.generate(PROMPTS[:2], params, use_tqdm=False)
    assert {o.outputs[0].finish_reason for o in outs} == {"error"}
    monkeypatch.setattr(StructuredRequests, "fill", original)
    again = llm.generate("a", SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(choice=["z"])),
                         use_tqdm=False)
    assert again[0].outputs[0].text == "z"


def _sampled(llm, kinds=("json", "regex", "grammar")):
    """Seeded samples of several constraints with different lengths, so requests join and leave the batch."""
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=8 + 5 * seed, n=1 + seed % 2,
                             structured_outputs=_params(kind, "xgrammar"))
              for seed, kind in enumerate(kinds * 2)]
    outs = llm.generate(PROMPTS[:3] * 2, params, use_tqdm=False)
    return [[c.token_ids for c in o.outputs] for o in outs]


def test_tokens_reach_the_grammars_on_the_grammar_thread(llm, llama_dir, monkeypatch):
    """With async scheduling (no drafts) each step's tokens are given to the grammars on the grammar thread as
    soon as they reach the host, and the masks filled there are reused by the next step; the outputs equal a
    run without async scheduling, where the engine thread does both, while requests join and leave."""
    from pagoda.structured_output.request_grammar import RequestGrammar

    threads, original = set(), RequestGrammar.accept_batch

    def accept_batch(grammars, tokens):
        threads.add(threading.current_thread().name)
        return original(grammars, tokens)

    monkeypatch.setattr(RequestGrammar, "accept_batch", staticmethod(accept_batch))
    got = _sampled(llm)
    assert threads and all(name.startswith("grammar-fill") for name in threads), threads
    monkeypatch.setattr(RequestGrammar, "accept_batch", staticmethod(original))
    assert got == _sampled(_llm(llama_dir, async_scheduling=False))


def _refuse_once(monkeypatch, action):
    """Make the grammar thread's 3rd batch accept refuse (or raise for) its first request; that request's id."""
    from pagoda.structured_output.request_grammar import RequestGrammar

    original, calls, hit = RequestGrammar.accept_batch, {"n": 0}, {}

    def accept_batch(grammars, tokens):
        calls["n"] += 1
        if calls["n"] != 3 or not threading.current_thread().name.startswith("grammar-fill"):
            return original(grammars, tokens)
        hit["id"] = grammars[0].request_id
        if action == "raise":
            raise RuntimeError("injected accept failure")
        return [False] + original(grammars[1:], tokens[1:])

    monkeypatch.setattr(RequestGrammar, "accept_batch", staticmethod(accept_batch))
    return hit


def test_a_token_refused_on_the_grammar_thread_fails_its_request_only(llm, monkeypatch):
    hit = _refuse_once(monkeypatch, "refuse")
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=12, ignore_eos=True,
                            structured_outputs=_params("regex", "xgrammar"))
    outs = llm.generate(PROMPTS[:3], params, use_tqdm=False)
    reasons = {o.request_id: o.outputs[0].finish_reason for o in outs}
    assert reasons.pop(hit["id"]) == "error"
    assert set(reasons.values()) <= {"stop", "length"}
    for out in outs:
        if out.outputs[0].finish_reason == "stop":
            _check("regex", out.outputs[0].text)


def test_a_failing_accept_on_the_grammar_thread_fails_its_steps_requests_and_the_engine_goes_on(llm, monkeypatch):
    _refuse_once(monkeypatch, "raise")
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=20, ignore_eos=True,
                            structured_outputs=_params("json", "xgrammar"))
    outs = llm.generate(PROMPTS[:2], params, use_tqdm=False)
    assert {o.outputs[0].finish_reason for o in outs} == {"error"}
    again = llm.generate("a", SamplingParams(max_tokens=5, structured_outputs=StructuredOutputsParams(choice=["z"])),
                         use_tqdm=False)
    assert again[0].outputs[0].text == "z"
