"""Whether a run fits the cluster it joined, checked before anything is tokenized or Ray Train starts.

Ray Train waits for resources it cannot get without a word: workers that no node can hold, a GPU on a cluster of
CPUs, or a data feed with no CPU left beside the workers (Ray Data's reading tasks then wait forever while the
workers wait for their batches; shards kept in memory need no reading task). A cluster with an autoscaler may grow
into a layout, so only the checks that do not depend on its size apply there. Each refusal is one line naming the
setting to change.
"""

from __future__ import annotations

import math
import os

from raynlp._internal import storage
from raynlp._internal.cluster import Node, cluster_nodes
from raynlp._internal.ray_data import FEED_TASK_CPUS
from raynlp.errors import RaynlpError


def check_layout(config, nodes: list[Node], can_grow: bool = False) -> None:
    """Refuse a run whose output, workers or data feed cannot work on `nodes`."""
    s, output = config.scaling, config.run.output
    if len(nodes) > 1 and not storage.is_uri(output) and not config.run.shared_filesystem:
        raise RaynlpError(f"run.output={output} is a folder on this machine, but the cluster has {len(nodes)} nodes: "
                          "give a storage URI (s3://bucket/runs/x) or set run.shared_filesystem=true where every "
                          "node mounts it")
    if can_grow:
        return
    described = ", ".join(str(n) for n in nodes)
    if s.use_gpu and not any(n.gpus for n in nodes):
        raise RaynlpError(f"scaling.use_gpu=true, but no node of this cluster has a GPU ({described}): set "
                          "scaling.use_gpu=false or join a cluster with GPUs (run.address)")
    gpus = s.gpus_per_worker if s.use_gpu else 0
    placed = _place(nodes, s.num_workers, s.cpus_per_worker, gpus)
    if placed is None:
        fit = sum(_capacity(n, s.cpus_per_worker, gpus) for n in nodes)
        each = {0: "", 1: " and a GPU"}.get(gpus, f" and scaling.gpus_per_worker={gpus} GPUs")
        lower = "scaling.cpus_per_worker or scaling.gpus_per_worker" if gpus > 1 else "scaling.cpus_per_worker"
        raise RaynlpError(f"scaling.num_workers={s.num_workers} workers of scaling.cpus_per_worker="
                          f"{s.cpus_per_worker:g} CPUs{each}: this cluster's nodes ({described}) hold {fit} at most: "
                          f"lower scaling.num_workers or {lower}")
    # Shards kept in memory are read by the workers themselves: no reading task runs beside them. (`auto` may
    # stream: whether the shards fit is known only once they are tokenized, after this check.)
    if config.data.shard_cache != "memory" and not _room_to_read(nodes, placed, s.cpus_per_worker):
        most = _most_cpus_per_worker(nodes, s.num_workers, gpus)
        advice = f"lower scaling.cpus_per_worker to {most:g} at most" if most else "lower scaling.num_workers"
        raise RaynlpError(f"scaling.cpus_per_worker={s.cpus_per_worker:g} leaves no room beside the "
                          f"{s.num_workers} workers for the tasks that read their data ({FEED_TASK_CPUS:g} CPU each; "
                          f"nodes: {described}): {advice}, or set data.shard_cache=memory where each worker's share "
                          "of the data fits its memory (it then reads the share itself, once)")


# How long Ray Train waits to place a worker group before it counts a failed start (Ray's default: 60 s).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def placement_attempts(wait_s: float | None) -> int:
    """Failed starts of the worker group Ray Train may retry (`FailureConfig.controller_failure_limit`) so that a
    run waits about `wait_s` for room before it stops; -1 (no limit) for None. Each start waits START_TIMEOUT_ENV."""
    if wait_s is None:
        return -1
    return max(math.ceil(wait_s / float(os.environ.get(START_TIMEOUT_ENV, 60))) - 1, 0)


def no_room_error(config, error, checkpoints: str) -> RaynlpError | None:
    """What to tell the user when Ray Train gave up placing the workers (`error`, a Ray Train ControllerError),
    None for any other controller error."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    if not isinstance(getattr(error, "controller_failure", None), WorkerGroupStartupTimeoutError):
        return None
    s = config.scaling
    nodes, _ = cluster_nodes()
    gpus = f" and {s.gpus_per_worker} GPU{'s' if s.gpus_per_worker > 1 else ''}" if s.use_gpu else ""
    return RaynlpError(
        f"the cluster found no room for {s.num_workers} workers of {s.cpus_per_worker:g} CPUs{gpus} for about "
        f"{config.run.wait_for_workers_s:g} s (run.wait_for_workers_s; nodes now: "
        f"{', '.join(str(n) for n in nodes)}): the run stopped; run the same command again once the cluster has "
        f"room, and it resumes from its last checkpoint (in {checkpoints}), if it made one")


def _capacity(node: Node, cpus: float, gpus: int) -> int:
    fit = int(node.cpus // cpus + 1e-9)
    return min(fit, int(node.gpus // gpus)) if gpus else fit


def _place(nodes: list[Node], workers: int, cpus: float, gpus: int) -> list[int] | None:
    """Workers a node as Ray Train's PACK placement lays them out (the fullest nodes first), None if they do not
    all fit."""
    placed, left = [0] * len(nodes), workers
    for i in sorted(range(len(nodes)), key=lambda i: -_capacity(nodes[i], cpus, gpus)):
        placed[i] = min(left, _capacity(nodes[i], cpus, gpus))
        left -= placed[i]
    return placed if left == 0 else None


def _room_to_read(nodes: list[Node], placed: list[int], cpus: float) -> bool:
    """Whether some node keeps a reading task's CPUs beside the workers placed on it."""
    return max(n.cpus - k * cpus for n, k in zip(nodes, placed)) >= FEED_TASK_CPUS - 1e-9


def _most_cpus_per_worker(nodes: list[Node], workers: int, gpus: int) -> float | None:
    """The most CPUs a worker, in steps of FEED_TASK_CPUS, that places every worker and leaves a reading task
    room on some node."""
    steps = int(max(n.cpus for n in nodes) / FEED_TASK_CPUS)
    for cpus in (k * FEED_TASK_CPUS for k in range(steps, 0, -1)):
        placed = _place(nodes, workers, cpus, gpus)
        if placed and _room_to_read(nodes, placed, cpus):
            return cpus
    return None
