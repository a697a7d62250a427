"""The Ray executor (distributed_executor_backend="ray") on a local Ray instance of 2 CPUs, gloo on CPU: TP=2 gives
TP=1's tokens, and so does pp=2 (the driver is rank 1); a placement group the cluster cannot hold is a clear error
(at once when its totals are short, after PAGODA_RAY_PG_TIMEOUT_S when they are busy); a killed actor fails every
open request within seconds; shutdown and garbage collection stop the actors and free their bundles."""

import gc
import os
import shutil
import tempfile
import time

import pytest

ray = pytest.importorskip("ray", reason="the Ray executor needs Ray: pip install 'pagoda[ray]' (the test extra has it)")

from tp_prompts import PROMPTS, kill_mid_run_fails_every_request  # noqa: E402
from pagoda import LLM, SamplingParams  # noqa: E402

PARAMS = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)] * 3 + [
    SamplingParams(temperature=1.0, top_p=0.9, seed=7 + i, max_tokens=8, ignore_eos=True) for i in range(2)]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; its temp dir short (Ray's unix socket paths must stay under ~107 chars)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    address = os.environ.pop("RAY_ADDRESS", None)
    if ray.is_initialized():  # an engine of an earlier test started one: these tests need their 2-CPU cluster
        ray.shutdown()
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if address is not None:
            os.environ["RAY_ADDRESS"] = address


def ray_llm(folder, **kwargs):
    return LLM(folder, device="cpu", enforce_eager=True, tensor_parallel_size=2, distributed_executor_backend="ray",
               **kwargs)


def generate(llm):
    try:
        outputs = llm.generate(PROMPTS[:len(PARAMS)], PARAMS, use_tqdm=False)
        assert all(o.outputs[0].finish_reason != "error" for o in outputs), [o.outputs[0] for o in outputs]
        return [list(o.outputs[0].token_ids) for o in outputs]
    finally:
        llm.llm_engine.shutdown()


def free_cpus_become(count, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0) != count:
        time.sleep(0.1)
    return ray.available_resources().get("CPU", 0) == count


def actor_dead(actor, timeout_s=10.0) -> bool:
    try:
        ray.get(actor.node_info.remote(), timeout=timeout_s)
    except ray.exceptions.RayActorError:
        return True
    return False


def test_tp2_on_ray_equals_tp1(local_ray, tp_checkpoint):
    """Greedy and seeded random requests; the driver is rank 0, one actor rank 1; shutdown frees the bundles."""
    folder = tp_checkpoint("LlamaForCausalLM")
    expected = generate(LLM(folder, device="cpu", enforce_eager=True, seed=1234))
    llm = ray_llm(folder, seed=1234)
    executor = llm.llm_engine.core.executor
    assert type(executor).__name__ == "RayExecutor"
    assert [rank for rank, _ in executor.actors] == [1]
    assert ray.available_resources().get("CPU", 0) == 0  # the two bundles hold the cluster's CPUs
    got = generate(llm)
    assert got == expected
    assert actor_dead(executor.actors[0][1])
    assert free_cpus_become(2)
    llm.llm_engine.shutdown()  # idempotent


def test_pp2_on_ray_the_driver_is_the_last_stage(local_ray, tp_checkpoint):
    """pp=2: the actor is rank 0 (the first stage, serving the rendezvous store), the driver rank 1."""
    folder = tp_checkpoint("LlamaForCausalLM")
    expected = generate(LLM(folder, device="cpu", enforce_eager=True, seed=1234))
    llm = LLM(folder, device="cpu", enforce_eager=True, pipeline_parallel_size=2, distributed_executor_backend="ray",
              seed=1234)
    assert [rank for rank, _ in llm.llm_engine.core.executor.actors] == [0]
    assert llm.llm_engine.core.executor.driver_rank == 1
    assert generate(llm) == expected


def test_host_ip_overrides(local_ray, monkeypatch):
    from pagoda.executor.ray_utils import actor_env_vars, host_ip

    monkeypatch.delenv("PAGODA_HOST_IP", raising=False)
    monkeypatch.delenv("VLLM_HOST_IP", raising=False)
    assert host_ip(ray) == ray.util.get_node_ip_address()
    monkeypatch.setenv("VLLM_HOST_IP", "10.0.0.7")
    assert host_ip(ray) == "10.0.0.7"
    monkeypatch.setenv("PAGODA_HOST_IP", "10.0.0.8")
    assert host_ip(ray) == "10.0.0.8"
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    env = actor_env_vars()
    assert env["NCCL_NVLS_ENABLE"] == "0" and "VLLM_HOST_IP" not in env and "PAGODA_HOST_IP" not in env


def test_unfulfillable_placement_group_is_a_clear_error_at_once(local_ray, tp_checkpoint):
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"Ray cluster cannot fulfill .*4 bundles of \{'CPU': 1.0\}.*"
                                         r"the cluster has \{'CPU': 2.0"):
        LLM(tp_checkpoint("LlamaForCausalLM"), device="cpu", tensor_parallel_size=4,
            distributed_executor_backend="ray")
    assert time.monotonic() - started < 10
    assert free_cpus_become(2)


def test_busy_cluster_is_a_clear_error_after_the_timeout(local_ray, tp_checkpoint, monkeypatch):
    from ray.util import placement_group, remove_placement_group

    hog = placement_group([{"CPU": 1.0}])
    ray.get(hog.ready(), timeout=30)
    monkeypatch.setenv("PAGODA_RAY_PG_TIMEOUT_S", "1")
    try:
        with pytest.raises(ValueError, match=r"cannot fulfill .*not placed within 1 s"):
            ray_llm(tp_checkpoint("LlamaForCausalLM"))
    finally:
        remove_placement_group(hog)
    assert free_cpus_become(2)  # the group that waited was removed too


def test_killed_actor_fails_every_request_within_seconds(local_ray, tp_checkpoint):
    llm = ray_llm(tp_checkpoint("LlamaForCausalLM"), max_model_len=512)
    engine = llm.llm_engine
    actor = engine.core.executor.actors[0][1]
    try:
        kill_mid_run_fails_every_request(engine, lambda: ray.kill(actor))
    finally:  # a failed check must not leave this process's distributed state to the next test
        engine.shutdown()
    assert free_cpus_become(2)


def test_garbage_collection_stops_the_actors(local_ray, tp_checkpoint):
    llm = ray_llm(tp_checkpoint("LlamaForCausalLM"))
    actor = llm.llm_engine.core.executor.actors[0][1]
    del llm
    gc.collect()
    assert actor_dead(actor)
    assert free_cpus_become(2)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    import sys

    from pagoda.executor.ray_utils import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when Ray is not installed
    with pytest.raises(ImportError, match=r"distributed_executor_backend='ray' needs Ray: pip install 'pagoda\[ray\]'"):
        import_ray()
