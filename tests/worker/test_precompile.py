"""The start-up compile pass's wiring (worker/precompile.py, worker.py) with fakes: which forwards run,
whether they run inside compile-only mode, what turns the pass off."""

import logging
import threading
import types

import pytest
import torch

from pagoda.worker import precompile as pc


def _in_mode() -> bool:
    from pagoda.kernels import background_compile

    return background_compile._owner == threading.get_ident()


@pytest.fixture
def mode_on(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # tests/conftest.py sets it on CPU


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.delenv(pc.THREADS_ENV, raising=False)
    monkeypatch.setattr(pc.os, "cpu_count", lambda: 64)
    assert pc.compile_threads() == 16
    monkeypatch.setattr(pc.os, "cpu_count", lambda: 2)
    assert pc.compile_threads() == 2
    monkeypatch.setenv(pc.THREADS_ENV, "0")
    assert pc.compile_threads() == 0
    monkeypatch.setenv(pc.THREADS_ENV, "5")
    assert pc.compile_threads() == 5
    monkeypatch.setenv(pc.THREADS_ENV, "many")
    assert pc.compile_threads() == 2


def test_zero_threads_runs_nothing(monkeypatch):
    calls = []
    monkeypatch.setenv(pc.THREADS_ENV, "0")
    assert pc.precompile("test", [("f", lambda: calls.append(1))]) is None
    assert calls == []


def test_forwards_run_inside_the_mode_and_a_failing_one_is_skipped(mode_on, caplog):
    seen = []

    def boom():
        seen.append(("boom", _in_mode()))
        raise RuntimeError("bad forward")

    forwards = [("a", lambda: seen.append(("a", _in_mode()))), ("boom", boom),
                ("b", lambda: seen.append(("b", _in_mode())))]
    with caplog.at_level(logging.INFO, logger=pc.__name__):
        stats = pc.precompile("test", forwards, threads=2)
    assert seen == [("a", True), ("boom", True), ("b", True)]
    assert stats.active and not _in_mode()
    assert "boom raised RuntimeError('bad forward')" in caplog.text
    assert "compile pass (test): 0 kernel variants on 2 threads in" in caplog.text


def test_under_the_interpreter_no_forward_runs(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    stats = pc.precompile("test", [("f", lambda: calls.append(1))], threads=2)
    assert not stats.active and calls == []


def test_startup_forwards_are_the_warm_up_then_every_graph_shape(monkeypatch, mode_on):
    calls = []
    import pagoda.worker.warmup as warmup

    monkeypatch.setattr(warmup, "run_warm_up_forwards",
                        lambda runner, size: calls.append(("warm-up", runner, size, _in_mode())))

    class FakeGraphs:
        def __init__(self, name, shapes):
            self.name, self._shapes = name, shapes

        def shapes(self):
            return self._shapes

        def _forward(self, size, q):
            calls.append((self.name, size, q, _in_mode()))

    runner = object()
    target, draft = FakeGraphs("target", [(8, 1), (1, 16)]), FakeGraphs("draft", [(4, 3)])
    pc.precompile_startup(runner, 8, [target, draft], threads=1)
    assert calls == [("warm-up", runner, 8, True), ("target", 8, 1, True), ("target", 1, 16, True),
                     ("draft", 4, 3, True)]


def test_profile_pass_runs_the_profile_quietly(monkeypatch, mode_on, caplog):
    import pagoda.worker.gpu_memory as gpu_memory

    calls = []

    def fake_profile(worker):
        calls.append((worker, _in_mode()))
        gpu_memory.logger.info("GPU KV cache size: garbage")
        return 123

    monkeypatch.setattr(gpu_memory, "profile_num_blocks", fake_profile)
    worker = object()
    with caplog.at_level(logging.INFO):
        pc.precompile_profile(worker, threads=1)
    assert calls == [(worker, True)]
    assert "garbage" not in caplog.text and "compile pass (memory profile)" in caplog.text
    assert gpu_memory.logger.level == logging.NOTSET


def test_worker_runs_the_profile_pass_right_before_the_profile(monkeypatch):
    import pagoda.worker.gpu_memory as gpu_memory
    from pagoda.worker.worker import Worker

    order = []
    monkeypatch.setattr(pc, "precompile_profile", lambda worker: order.append("precompile"))
    monkeypatch.setattr(gpu_memory, "profile_num_blocks", lambda worker: order.append("profile") or 77)
    worker = Worker.__new__(Worker)
    worker.device = torch.device("cuda")
    worker.kv_spec = types.SimpleNamespace(num_layers=2)
    worker.config = types.SimpleNamespace(
        cache=types.SimpleNamespace(num_gpu_blocks_override=None, kv_cache_memory_bytes=None, block_size=16))
    assert worker.determine_num_blocks() == 77
    assert order == ["precompile", "profile"]
    order.clear()
    worker.config.cache.kv_cache_memory_bytes = 1 << 30  # no profile: no pass
    worker.bytes_per_block = lambda: 1 << 20
    assert worker.determine_num_blocks() == 1024 and order == []
