"""The server started with the KServe seed's exact speculative-decoding arguments serves, and reports
vLLM's speculative-decoding metrics and log line."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from openai_server_utils import MAX_MODEL_LEN, MODEL_NAME

SEED_ARGS = ["--speculative-model=[ngram]", "--num-speculative-tokens=4", "--ngram-prompt-lookup-max=3",
             "--use-v2-block-manager"]
COPY_HEAVY = "a b c d a b c d a b c d a b c d a b"


@pytest.fixture(scope="module")
def spec_server(start_server, model_dir):
    return start_server(["--model", model_dir, "--served-model-name", MODEL_NAME, "--max-model-len",
                         str(MAX_MODEL_LEN), "--disable-uvicorn-access-log", *SEED_ARGS],
                        env={"PAGODA_LOG_STATS_INTERVAL": "0.5"})


def _counter(families, name: str, **labels) -> float:
    family = families.get(name)
    if family is None:
        return 0.0
    return sum(s.value for s in family.samples
               if s.name == f"{name}_total" and all(s.labels.get(k) == v for k, v in labels.items()))


def test_seed_arguments_serve_and_report_spec_metrics(spec_server):
    client = spec_server.client()
    greedy = client.completions.create(model=MODEL_NAME, prompt=COPY_HEAVY, max_tokens=32, temperature=0.0)
    again = client.completions.create(model=MODEL_NAME, prompt=COPY_HEAVY, max_tokens=32, temperature=0.0)
    assert greedy.choices[0].text == again.choices[0].text and greedy.usage.completion_tokens == 32
    chat = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": COPY_HEAVY}],
                                          max_tokens=16, temperature=0.8, seed=1)
    assert chat.usage.completion_tokens >= 1
    deadline = time.monotonic() + 10
    while True:
        families = {f.name: f for f in text_string_to_metric_families(spec_server.get("/metrics").text)}
        drafts = _counter(families, "vllm:spec_decode_num_drafts", model_name=MODEL_NAME)
        if drafts > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert drafts > 0
    draft_tokens = _counter(families, "vllm:spec_decode_num_draft_tokens")
    accepted = _counter(families, "vllm:spec_decode_num_accepted_tokens")
    per_pos = {s.labels["position"]: s.value for s in families["vllm:spec_decode_num_accepted_tokens_per_pos"].samples
               if s.name.endswith("_total")}
    assert set(per_pos) == {"0", "1", "2", "3"}
    assert 0 <= accepted <= draft_tokens and sum(per_pos.values()) == accepted
    deadline = time.monotonic() + 10
    while "SpecDecoding metrics: Mean acceptance length" not in spec_server.log():
        assert time.monotonic() < deadline, "no SpecDecoding log line"
        time.sleep(0.2)


def test_seed_draft_model_arguments_serve_and_accept(start_server, model_dir):
    """The seed's draft-model form: the draft beside the target (here the target itself: near-total acceptance)."""
    server = start_server(["--model", model_dir, "--served-model-name", MODEL_NAME, "--max-model-len",
                           str(MAX_MODEL_LEN), "--disable-uvicorn-access-log", f"--speculative-model={model_dir}",
                           "--num-speculative-tokens=3", "--distributed-executor-backend=mp"])
    client = server.client()
    out = client.completions.create(model=MODEL_NAME, prompt=COPY_HEAVY, max_tokens=24, temperature=0.0)
    assert out.usage.completion_tokens == 24
    deadline = time.monotonic() + 10
    while True:  # the stats of the last step may reach /metrics just after the response
        families = {f.name: f for f in text_string_to_metric_families(server.get("/metrics").text)}
        if _counter(families, "vllm:spec_decode_num_draft_tokens") > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    drafted = _counter(families, "vllm:spec_decode_num_draft_tokens")
    accepted = _counter(families, "vllm:spec_decode_num_accepted_tokens")
    assert drafted > 0 and accepted >= 0.9 * drafted
    assert {s.labels["position"] for s in families["vllm:spec_decode_num_accepted_tokens_per_pos"].samples} == \
        {"0", "1", "2"}
