"""The engine core comes back by itself, and never looks healthy while it is not.

Through real servers: a request that fails in the core fails alone; kill -9 or SIGSTOP of the core
turns /health to 503 at once, fails the requests that had produced output (no hang), resubmits the
ones that had not, and a new core serves again (/health 200, pagoda:engine_restarts_total moves); a
request in flight at two crashes is refused. Through AsyncLLM directly (for short timeouts): a core
stuck inside a step is declared unhealthy, a poison request is refused, restarts run out, deadlines
abort. Faults come from the PAGODA_TEST_FAULT hook (engine/core.py). Every wait is bounded.
"""

import asyncio
import os
import re
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from openai_server_utils import MODEL_NAME, httpx
from pagoda import EngineArgs, SamplingParams
from pagoda.engine.async_llm import (
    AsyncLLM,
    EngineDeadError,
    RequestCrashedEngineError,
    RequestTimeoutError,
)
from pagoda.metrics.prometheus import PrometheusStatLogger

RAISE_SEED, CRASH_SEED, HANG_SEED = 1111, 2222, 3333
LONG = {"model": MODEL_NAME, "prompt": "import os", "max_tokens": 4000, "ignore_eos": True, "temperature": 0}
SHORT = {"model": MODEL_NAME, "prompt": "def main():\n    return", "max_tokens": 8, "ignore_eos": True,
         "temperature": 0}
RESTART_BOUND_S = 180  # backoff plus a fresh core's start-up, on a loaded 2-core machine


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def core_pid(server) -> int:
    """The pid of the newest engine core (each start logs one line)."""
    return int(re.findall(r"engine core ready \(pid (\d+)", server.log())[-1])


def health(server) -> int:
    try:
        return httpx.get(server.url + "/health", timeout=10).status_code
    except httpx.HTTPError:
        return 0


def metric(server, name: str) -> float:
    return server.metric(name, model_name=MODEL_NAME)


@pytest.fixture(scope="module")
def long_model(model_dir, tmp_path_factory):
    """The tiny Llama with 4096 positions: 4000-token requests run for thousands of steps."""
    from pagoda.tiny_models import make_checkpoint

    return make_checkpoint("LlamaForCausalLM", str(tmp_path_factory.mktemp("healing-llama")), model_dir,
                           max_position_embeddings=4096)


@pytest.fixture(scope="module")
def healing_server(start_server, long_model):
    return start_server(["--model", long_model, "--served-model-name", MODEL_NAME, "--max-num-seqs", "2",
                         "--disable-log-requests", "--disable-uvicorn-access-log"],
                        env={"PAGODA_TEST_FAULT": f"raise:{RAISE_SEED},crash:{CRASH_SEED}"})


async def _first_chunk(aclient, url, body):
    response = await aclient.send(aclient.build_request("POST", url + "/v1/completions", json=body), stream=True)
    assert response.status_code == 200
    lines = response.aiter_lines()
    async for line in lines:
        if line.startswith("data: {"):
            return response, lines
    raise AssertionError("stream ended before its first chunk")


async def _rest(lines) -> list[str]:
    return [line[6:] async for line in lines if line.startswith("data: ")]


def test_a_request_failing_in_the_core_fails_alone(healing_server):
    server = healing_server
    pid = core_pid(server)
    expected = server.post("/v1/completions", SHORT).json()["choices"][0]["text"]

    async def both():
        async with httpx.AsyncClient(timeout=60) as aclient:
            bad = aclient.post(server.url + "/v1/completions", json={**SHORT, "seed": RAISE_SEED})
            good = aclient.post(server.url + "/v1/completions", json=SHORT)
            return await asyncio.gather(bad, good)

    bad, good = asyncio.run(both())
    assert bad.status_code >= 500 and "error" in bad.json()
    assert good.status_code == 200 and good.json()["choices"][0]["text"] == expected
    assert "injected failure while sampling" in server.log()
    assert health(server) == 200 and core_pid(server) == pid and metric(server, "pagoda:engine_restarts_total") == 0
    assert metric(server, "pagoda:engine_healthy") == 1


def test_sigstop_turns_health_to_503_and_the_core_is_replaced(healing_server):
    server = healing_server
    pid = core_pid(server)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as aclient:
            response, lines = await _first_chunk(aclient, server.url, {**LONG, "stream": True})
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                events = await asyncio.wait_for(_rest(lines), 60)
                return events, time.monotonic() - stopped
            finally:
                await response.aclose()

    try:
        events, elapsed = asyncio.run(scenario())
        assert events[-1] == "[DONE]" and '"error"' in events[-2] and "heartbeat" in events[-2], events[-2:]
        assert elapsed < 30, f"the stream took {elapsed:.1f} s to fail"
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # Liveness stays 200 while the core is replaced (the pod must not be killed for healing itself).
    assert httpx.get(server.url + "/livez", timeout=10).status_code == 200
    wait_for(lambda: core_pid(server) != pid and health(server) == 200, RESTART_BOUND_S, "no new core")
    assert "declared unhealthy" in server.log() and metric(server, "pagoda:engine_restarts_total") == 1


def test_kill_9_fails_what_ran_resubmits_what_waited_and_heals(healing_server):
    server = healing_server
    pid = core_pid(server)
    expected = server.post("/v1/completions", SHORT).json()["choices"][0]["text"]
    down: dict = {}

    def watch_down():  # what /health and /metrics say while the core is gone
        if health(server) != 503:
            return False
        down["healthy"], down["running"] = metric(server, "pagoda:engine_healthy"), metric(
            server, "vllm:num_requests_running")
        return down["healthy"] == 0

    async def scenario():
        async with httpx.AsyncClient(timeout=RESTART_BOUND_S) as aclient:
            ran = asyncio.ensure_future(aclient.post(server.url + "/v1/completions", json=LONG))
            response, lines = await _first_chunk(aclient, server.url, {**LONG, "stream": True})
            waited = asyncio.ensure_future(aclient.post(server.url + "/v1/completions", json=SHORT))
            # Both sequence slots are taken (--max-num-seqs 2): the short request waits, producing nothing.
            await asyncio.to_thread(wait_for, lambda: metric(server, "vllm:num_requests_waiting") == 1, 30,
                                    "the short request never queued")
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(wait_for, watch_down, 30, "/health and /metrics did not report the engine down")
            events = await asyncio.wait_for(_rest(lines), 60)
            await response.aclose()
            return await asyncio.wait_for(ran, 60), events, await asyncio.wait_for(waited, RESTART_BOUND_S)

    ran, events, waited = asyncio.run(scenario())
    assert ran.status_code >= 500 and "error" in ran.json()  # produced output: fails, no hang
    assert events[-1] == "[DONE]" and '"error"' in events[-2] and "SIGKILL" in events[-2]
    assert waited.status_code == 200 and waited.json()["choices"][0]["text"] == expected  # replayed unseen
    assert down == {"healthy": 0, "running": 0}
    wait_for(lambda: health(server) == 200, RESTART_BOUND_S, "/health did not come back")
    assert core_pid(server) != pid and metric(server, "pagoda:engine_restarts_total") == 2
    assert metric(server, "pagoda:engine_healthy") == 1
    assert server.post("/v1/completions", SHORT).json()["choices"][0]["text"] == expected


def test_a_request_that_crashes_the_core_twice_is_refused(healing_server):
    server = healing_server
    started = time.monotonic()
    refused = server.post("/v1/completions", {**SHORT, "seed": CRASH_SEED}, timeout=2 * RESTART_BOUND_S)
    assert refused.status_code >= 400 and "crash" in refused.text.lower(), refused.text
    assert time.monotonic() - started < 2 * RESTART_BOUND_S
    assert "in flight at 2 engine-core crashes" in server.log()
    wait_for(lambda: health(server) == 200, RESTART_BOUND_S, "/health did not come back after the poison request")
    assert metric(server, "pagoda:engine_restarts_total") == 4
    assert server.post("/v1/completions", SHORT).status_code == 200
    assert server.proc.poll() is None


# ---- AsyncLLM directly ---------------------------------------------------------------------------
def _render(prometheus: PrometheusStatLogger) -> dict[str, float]:
    text = prometheus.render().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("pagoda:")}


def test_a_core_stuck_in_a_step_is_declared_unhealthy_then_restarts_run_out(model_dir, monkeypatch):
    monkeypatch.setenv("PAGODA_TEST_FAULT", f"hang:{HANG_SEED}")  # inherited by the spawned core
    prometheus = PrometheusStatLogger(MODEL_NAME, 512)

    async def scenario():
        engine = AsyncLLM(EngineArgs(model=model_dir, max_model_len=512), engine_stall_timeout_s=2.0,
                          max_engine_restarts=2, engine_restart_backoff_s=0.2, stat_loggers=[prometheus])
        reasons: set[str] = set()

        async def watch():
            while True:
                if engine.dead_error is not None:
                    reasons.add(engine.dead_error)
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch())
        try:
            hang = SamplingParams(max_tokens=5, seed=HANG_SEED)
            with pytest.raises(RequestCrashedEngineError, match="in flight at 2 engine-core crashes"):
                await asyncio.wait_for(_drain(engine.generate("import os", hang, request_id="stuck")), RESTART_BOUND_S)
            await asyncio.wait_for(_until(lambda: engine.dead_error is None), RESTART_BOUND_S)
            final = await asyncio.wait_for(_drain(engine.generate("import os", SamplingParams(max_tokens=3),
                                                                  request_id="after")), 60)
            healed = _render(prometheus)
            os.kill(engine.client.proc.pid, signal.SIGKILL)  # a third death within the window: the last
            await asyncio.wait_for(_until(lambda: "not restarted again" in (engine.dead_error or "")), 30)
            started = time.monotonic()
            with pytest.raises(EngineDeadError, match="not restarted again"):
                engine.add_request("refused", "import os", SamplingParams(max_tokens=3))
            refused_in = time.monotonic() - started
            # /metrics follows /health as soon as the output task has read the dead core's last message.
            await asyncio.wait_for(_until(lambda: _render(prometheus)["pagoda:engine_healthy"] == 0), 10)
            leftovers = engine.num_unfinished_requests + engine.engine.output_processor.has_unfinished()
            return reasons, final, healed, _render(prometheus), refused_in, leftovers
        finally:
            watcher.cancel()
            engine.shutdown()

    reasons, final, healed, dead, refused_in, leftovers = asyncio.run(scenario())
    assert any("declared unhealthy" in r and "ran no step" in r for r in reasons), reasons
    assert any("restarting" in r for r in reasons), reasons
    assert final.finished and len(final.outputs[0].token_ids) == 3
    assert healed["pagoda:engine_healthy"] == 1 and healed["pagoda:engine_restarts_total"] == 2
    assert dead["pagoda:engine_healthy"] == 0 and dead["pagoda:engine_restarts_total"] == 2
    assert refused_in < 1 and leftovers == 0  # nothing left in the StatsTracker or the OutputProcessor


def test_a_request_past_its_deadline_is_aborted(long_model):
    async def scenario():
        engine = AsyncLLM(EngineArgs(model=long_model), request_timeout_s=1.5, max_engine_restarts=0)
        try:
            short = await asyncio.wait_for(_drain(engine.generate("import os", SamplingParams(max_tokens=2),
                                                                  request_id="quick")), 60)
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError, match="request timeout of 1.5 s"):
                endless = SamplingParams(max_tokens=4000, ignore_eos=True)
                await asyncio.wait_for(_drain(engine.generate("import os", endless, request_id="slow")), 60)
            waited = time.monotonic() - started
            await asyncio.wait_for(_until(lambda: engine.num_unfinished_requests == 0), 10)
            return short, waited
        finally:
            engine.shutdown()

    short, waited = asyncio.run(scenario())
    assert short.finished and 1.0 < waited < 30


async def _drain(stream):
    last = None
    async for last in stream:
        pass
    return last


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.05)
