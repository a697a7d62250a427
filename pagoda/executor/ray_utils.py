"""Ray set-up for the Ray executor (executor/ray.py): importing Ray, joining or starting a cluster, the placement
group that reserves one bundle per rank, the environment and CPU share the actors get.

Invariants:
- Ray is optional (`pip install 'pagoda[ray]'`): `import_ray()` is the one import of it, and without it the
  error names the extra. Nothing here shuts a Ray down: the Ray an engine joined or started may serve others.
- `init_ray()` reuses this process's Ray when there is one, else joins the cluster of `address` / RAY_ADDRESS,
  else starts a local Ray on this node.
- `RankBundles` holds one bundle per global rank: `driver` is the engine core's own (on this node, forced with
  Ray's `node:<ip>` resource when the group is ours), `others` the actors' (world_size - 1 of them). A group
  that cannot be placed is a ValueError saying what the cluster has and what is needed, never a hang: at once
  when the cluster's totals are short, after PAGODA_RAY_PG_TIMEOUT_S (default 300) when they are busy.
- Actors get the driver's NCCL_* / GLOO_* / TORCH_NCCL_* / PAGODA_* / VLLM_* / TRITON_* variables (so every
  rank sees the same settings: NCCL_NVLS_ENABLE, PAGODA_PP_LAYER_PARTITION, ...), except the host-IP
  overrides, which belong to each node.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

HOST_IP_ENVS = ("PAGODA_HOST_IP", "VLLM_HOST_IP")  # this node's IP for the rendezvous, first one set wins
PG_TIMEOUT_ENV = "PAGODA_RAY_PG_TIMEOUT_S"
FORWARDED_ENV_PREFIXES = ("NCCL_", "GLOO_", "TORCH_NCCL_", "PAGODA_", "VLLM_", "TRITON_")
_INSTALL_HINT = "distributed_executor_backend='ray' needs Ray: pip install 'pagoda[ray]'"


def import_ray():
    try:
        import ray
        import ray.util  # noqa: F401 - placement groups, node IP
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    return ray


def init_ray(ray, address: str | None = None) -> None:
    """Use this process's Ray, else join `address` / RAY_ADDRESS ("auto" finds the local node's cluster), else
    start a local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    else:
        logger.info("starting a local Ray instance (set RAY_ADDRESS to join a cluster)")
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=True)


def host_ip(ray) -> str:
    """This node's IP for the rendezvous: PAGODA_HOST_IP or VLLM_HOST_IP when set, else the one Ray reports."""
    for name in HOST_IP_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return ray.util.get_node_ip_address()


def actor_env_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) and k not in HOST_IP_ENVS}


@dataclass
class RankBundles:
    group: Any  # the PlacementGroup
    driver: int  # the engine core's bundle index
    others: list[int]  # the actors' bundle indices, world_size - 1 of them
    owned: bool  # made here (removed at shutdown), or the placement group this code already runs in


def rank_bundles(ray, world_size: int, cuda: bool) -> RankBundles:
    """The placement group of `world_size` bundles (GPU + CPU each on CUDA, one CPU each on CPU), waited for."""
    from ray.util import get_current_placement_group

    node_id = ray.get_runtime_context().get_node_id()
    current = get_current_placement_group()
    if current is not None:
        return _reuse(ray, current, world_size, cuda, node_id)
    bundle = {"GPU": 1.0, "CPU": 1.0} if cuda else {"CPU": 1.0}
    node = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
    if cuda and node.get("Resources", {}).get("GPU", 0) < 1:
        raise ValueError(_cannot_fulfill(ray, world_size, bundle, "this node, where the engine runs its own "
                                         "rank, has no GPU in the Ray cluster"))
    short = {k: need for k, need in _needed(world_size, bundle).items() if ray.cluster_resources().get(k, 0) < need}
    if short:
        raise ValueError(_cannot_fulfill(ray, world_size, bundle, "the cluster's total is smaller"))
    bundles = [dict(bundle) for _ in range(world_size)]
    if node.get("NodeManagerAddress"):  # the driver's bundle on this node
        bundles[0][f"node:{node['NodeManagerAddress']}"] = 0.001
    from ray.util import placement_group, remove_placement_group

    group = placement_group(bundles, strategy="PACK")
    try:
        _wait_ready(ray, group, world_size, bundle)
    except BaseException:
        remove_placement_group(group)
        raise
    return RankBundles(group, 0, list(range(1, world_size)), owned=True)


def _reuse(ray, group, world_size: int, cuda: bool, node_id: str) -> RankBundles:
    from ray.util import placement_group_table

    specs = group.bundle_specs
    if len(specs) < world_size:
        raise ValueError(f"the current Ray placement group has {len(specs)} bundles, but the world "
                         f"(tensor_parallel_size x pipeline_parallel_size) needs {world_size}")
    _wait_ready(ray, group, world_size, specs[0])
    nodes = placement_group_table(group).get("bundles_to_node_id", {})
    usable = [i for i in range(len(specs)) if not cuda or specs[i].get("GPU", 0) >= 1]
    if len(usable) < world_size:
        raise ValueError(f"the current Ray placement group has {len(usable)} bundles with a GPU; {world_size} needed")
    local = [i for i in usable if nodes.get(i) == node_id]
    if cuda and not local:
        raise ValueError("the current Ray placement group has no GPU bundle on this node, where the engine runs its "
                         "own rank")
    driver = local[0] if local else usable[0]
    return RankBundles(group, driver, [i for i in usable if i != driver][:world_size - 1], owned=False)


def _wait_ready(ray, group, world_size: int, bundle: dict) -> None:
    timeout_s = float(os.environ.get(PG_TIMEOUT_ENV, "300"))
    deadline = time.monotonic() + timeout_s
    ready_ref = group.ready()
    while True:
        left = deadline - time.monotonic()
        ready, _ = ray.wait([ready_ref], timeout=max(0.0, min(10.0, left)))
        if ready:
            return
        if time.monotonic() >= deadline:
            raise ValueError(_cannot_fulfill(ray, world_size, bundle, f"it was not placed within {timeout_s:g} s "
                                             f"({PG_TIMEOUT_ENV}): the resources are busy or on no single node"))
        logger.info("waiting for the Ray placement group of %d x %s (%.0f s left); available now: %s", world_size,
                    bundle, deadline - time.monotonic(), _resources(ray.available_resources()))


def _needed(world_size: int, bundle: dict) -> dict:
    return {k: v * world_size for k, v in bundle.items()}


def _resources(resources: dict) -> dict:
    return {k: v for k, v in sorted(resources.items()) if k in ("CPU", "GPU") or k.startswith("accelerator_type")}


def _cannot_fulfill(ray, world_size: int, bundle: dict, why: str) -> str:
    nodes = sum(node.get("Alive", True) for node in ray.nodes())
    return (f"The Ray cluster cannot fulfill the placement group of the Ray executor: it needs {world_size} "
            f"bundles of {bundle} (one per rank: tensor_parallel_size x pipeline_parallel_size = {world_size}), "
            f"{_needed(world_size, bundle)} in all; the cluster has {_resources(ray.cluster_resources())} "
            f"({_resources(ray.available_resources())} available now) on {nodes} node(s); {why}. "
            "(Ray's autoscaler: 'No available node types can fulfill resource request'.) Add nodes with "
            "`ray start --address=HEAD:6379`, lower the parallel sizes, or see `ray status`.")
