"""A killed tensor- or pipeline-parallel worker fails every open request (no hang); shutting down leaves no process."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tp_prompts import kill_mid_run_fails_every_request
from pagoda import LLM, SamplingParams


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_killed_worker_fails_every_request_within_seconds(tp_checkpoint, tp, pp):
    """With pp=2 the killed worker is the first pipeline stage (the driver is the last)."""
    llm = LLM(tp_checkpoint("LlamaForCausalLM"), device="cpu", tensor_parallel_size=tp, pipeline_parallel_size=pp,
              max_model_len=512)
    engine = llm.llm_engine
    workers = [p.pid for p in engine.core.executor.procs]
    try:
        kill_mid_run_fails_every_request(engine, lambda: os.kill(workers[0], signal.SIGKILL))
    finally:  # a failed check must not leave this process's distributed state to the next test
        engine.shutdown()
    assert not wait_gone(workers)


def test_a_worker_killed_while_the_engine_is_idle_makes_the_core_dead(tp_checkpoint):
    """No step runs to meet the death: check_workers (the idle engine loop's check) finds it once the executor's
    monitor noted it, fails what is open (nothing here) and leaves the core dead, refusing new requests."""
    llm = LLM(tp_checkpoint("LlamaForCausalLM"), device="cpu", tensor_parallel_size=2, max_model_len=512)
    engine = llm.llm_engine
    core = engine.core
    workers = [p.pid for p in core.executor.procs]
    try:
        assert core.check_workers() == [] and core.dead is None  # all alive: nothing happens
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while core.executor.dead is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert core.executor.dead is not None, "the executor's monitor did not note the death"
        assert core.dead is None  # idle: no step met it
        assert core.check_workers() == []
        assert "died" in core.dead
        with pytest.raises(RuntimeError, match="died"):
            engine.add_request("late", "x = 1", SamplingParams(max_tokens=2))
    finally:
        engine.shutdown()
    assert not wait_gone(workers)


def test_shutdown_and_garbage_collection_stop_the_workers(tp_checkpoint):
    folder = tp_checkpoint("LlamaForCausalLM")
    llm = LLM(folder, device="cpu", tensor_parallel_size=2)
    workers = [p.pid for p in llm.llm_engine.core.executor.procs]
    assert all(alive(p) for p in workers)
    llm.llm_engine.shutdown()
    assert not wait_gone(workers)
    llm.llm_engine.shutdown()  # idempotent
    llm = LLM(folder, device="cpu", tensor_parallel_size=2)  # no shutdown: collected
    workers = [p.pid for p in llm.llm_engine.core.executor.procs]
    del llm
    gc.collect()
    assert not wait_gone(workers)


def test_no_worker_outlives_the_script(tp_checkpoint):
    """A script that exits (normally, or killed) without shutting the engine down leaves no worker behind."""
    script = textwrap.dedent(f"""
        import os, sys
        from pagoda import LLM
        if __name__ == "__main__":
            llm = LLM({tp_checkpoint("LlamaForCausalLM")!r}, device="cpu", tensor_parallel_size=2)
            print("WORKERS", *[p.pid for p in llm.llm_engine.core.executor.procs], flush=True)
            if sys.argv[1] == "kill":
                os.kill(os.getpid(), 9)
    """)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for how in ("exit", "kill"):
        result = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, timeout=120,
                                env=env)
        line = next((l for l in result.stdout.splitlines() if l.startswith("WORKERS")), None)
        assert line is not None, result.stdout + result.stderr
        workers = [int(p) for p in line.split()[1:]]
        assert not wait_gone(workers), (how, result.stderr[-2000:])
