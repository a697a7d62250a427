"""`--tensor-parallel-size 2` and `--pipeline-parallel-size 2`: the server's engine core drives a second rank and
answers /v1/completions."""

import re

import pytest

from openai_server_utils import RemoteServer
from test_tp_faults import wait_gone

from pagoda import LLM, SamplingParams


@pytest.mark.parametrize("flag", ["--tensor-parallel-size", "--pipeline-parallel-size"])
def test_server_with_two_ranks(tp_checkpoint, tmp_path, flag):
    folder = tp_checkpoint("LlamaForCausalLM")
    llm = LLM(folder, device="cpu")
    expected = llm.generate(["def main():"], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
                            use_tqdm=False)[0].outputs[0].text
    server = RemoteServer(["--model", folder, "--served-model-name", "tiny-tp", "--max-model-len", "256",
                           flag, "2", "--device", "cpu"], str(tmp_path / "server.log"))
    try:
        completion = server.client().completions.create(model="tiny-tp", prompt="def main():", max_tokens=6,
                                                         temperature=0.0, extra_body={"ignore_eos": True})
        assert completion.choices[0].text == expected
        layout = r"tp=2 x pp=1, gloo\), the driver is rank 0" if flag == "--tensor-parallel-size" else \
            r"tp=1 x pp=2, gloo\), the driver is rank 1"
        workers = [int(p) for p in re.search(r"parallelism: 2 ranks \(" + layout + r", workers \[([\d, ]+)\]",
                                             server.log()).group(1).split(",")]
    finally:
        server.close()
    assert not wait_gone(workers)  # SIGTERM to the server: the core exits and its worker with it


@pytest.mark.parametrize("in_flight", [True, False], ids=["under-load", "idle"])
def test_a_killed_worker_fails_the_servers_requests_and_the_core_is_replaced(tp_checkpoint, tmp_path, in_flight):
    """A tensor-parallel worker killed under load (the request in flight ends with an error) or while the server is
    idle (no step meets the death; the idle engine loop finds it): /health says the engine is down while the
    supervisor restarts the core (with new workers), and then the server serves again."""
    import os
    import signal
    import time

    import openai

    folder = tp_checkpoint("LlamaForCausalLM")
    server = RemoteServer(["--model", folder, "--served-model-name", "tiny-tp", "--max-model-len", "512",
                           "--tensor-parallel-size", "2", "--device", "cpu"], str(tmp_path / "server.log"))
    try:
        client = server.client()
        client.completions.create(model="tiny-tp", prompt="x", max_tokens=2)
        first = _workers(server.log())
        if in_flight:
            stream = client.completions.create(model="tiny-tp", prompt="def main():", max_tokens=400, stream=True,
                                               extra_body={"ignore_eos": True})
            next(iter(stream))  # the request runs
        os.kill(first[0], signal.SIGKILL)
        killed = time.monotonic()
        if in_flight:
            with pytest.raises(openai.APIError):
                for _ in stream:
                    pass
            assert time.monotonic() - killed < 15
        deadline, healthy = time.monotonic() + 90, False
        while time.monotonic() < deadline and not healthy:
            healthy = server.get("/health").status_code == 200 and len(re.findall(WORKERS, server.log())) > 1
            time.sleep(0.5)
        assert healthy, server.log()[-3000:]
        out = client.completions.create(model="tiny-tp", prompt="def main():", max_tokens=4)
        assert out.choices[0].finish_reason == "length"
        assert _workers(server.log()) != first
    finally:
        server.close()


WORKERS = r"parallelism: 2 ranks \(tp=2 x pp=1, gloo\), the driver is rank 0, workers \[([\d, ]+)\]"


def _workers(log):
    """The worker pids of the newest core, from its start-up log line."""
    return [int(p) for p in re.findall(WORKERS, log)[-1].split(",")]
