"""Tests for raynlp.train._internal.layout: a run that cannot work on the cluster's nodes is refused in one line
naming the setting; the layouts that can work pass."""

import pytest

from raynlp.errors import RaynlpError
from raynlp.train import load_config
from raynlp.train._internal.layout import Node, check_layout, cluster_nodes

TWO_SMALL_NODES = [Node(2), Node(2)]


def _config(*overrides: str):
    return load_config(None, ["task=finetune", "preset=bert_tiny_en_uncased", "data.dataset=rotten_tomatoes",
                              "run.output=s3://bucket/runs/x",
                              *overrides])


def test_one_worker_a_node_with_most_of_its_cpus_leaves_room_for_reading():
    """The layout that once hung: 2 nodes of 2 CPUs, a worker of 1.5 CPUs on each; reading tasks of 0.25 fit."""
    check_layout(_config("scaling.num_workers=2", "scaling.cpus_per_worker=1.5"), TWO_SMALL_NODES)
    check_layout(_config("scaling.num_workers=4", "scaling.cpus_per_worker=1"), [Node(4), Node(1)])


def test_workers_that_take_every_cpu_fit_when_their_shards_are_kept_in_memory():
    """No reading task runs beside workers that keep their shards in memory (they read them themselves); `auto`
    may stream (whether the shards fit is known only once tokenized), so it is refused like `stream`."""
    check_layout(_config("scaling.num_workers=2", "scaling.cpus_per_worker=2", "data.shard_cache=memory"),
                 TWO_SMALL_NODES)
    check_layout(_config("scaling.num_workers=4", "scaling.cpus_per_worker=1", "data.shard_cache=memory"), [Node(4)])
    for cache in ("auto", "stream"):
        with pytest.raises(RaynlpError, match="leaves no room beside the 2 workers"):
            check_layout(_config("scaling.num_workers=2", "scaling.cpus_per_worker=2", f"data.shard_cache={cache}"),
                         TWO_SMALL_NODES)


@pytest.mark.parametrize("overrides, nodes, message", [
    (["scaling.num_workers=2", "scaling.cpus_per_worker=2"], TWO_SMALL_NODES,
     r"^scaling.cpus_per_worker=2 leaves no room beside the 2 workers for the tasks that read their data \(0.25 CPU "
     r"each; nodes: 2 CPUs, 2 CPUs\): lower scaling.cpus_per_worker to 1.75 at most, or set data.shard_cache=memory "
     r"where each worker's share of the data fits its memory \(it then reads the share itself, once\)$"),
    (["scaling.num_workers=3", "scaling.cpus_per_worker=1.5"], TWO_SMALL_NODES,
     r"^scaling.num_workers=3 workers of scaling.cpus_per_worker=1.5 CPUs: this cluster's nodes \(2 CPUs, 2 CPUs\) "
     r"hold 2 at most: lower scaling.num_workers or scaling.cpus_per_worker$"),
    (["scaling.num_workers=4", "scaling.cpus_per_worker=1"], [Node(4)],
     r"^scaling.cpus_per_worker=1 leaves no room .*: lower scaling.cpus_per_worker to 0.75 at most, or set "
     r"data.shard_cache=memory where each worker"),
    (["scaling.use_gpu=true"], TWO_SMALL_NODES,
     r"^scaling.use_gpu=true, but no node of this cluster has a GPU \(2 CPUs, 2 CPUs\): set scaling.use_gpu=false"),
    (["scaling.use_gpu=true", "scaling.num_workers=3"], [Node(8, 1), Node(8, 1)],
     r"^scaling.num_workers=3 workers of scaling.cpus_per_worker=1 CPUs and a GPU: this cluster's nodes "
     r"\(8 CPUs \+ 1 GPUs, 8 CPUs \+ 1 GPUs\) hold 2 at most"),
    (["scaling.use_gpu=true", "scaling.gpus_per_worker=2", "train.batch_size=16"], [Node(8, 2), Node(8, 1)],
     r"^scaling.num_workers=2 workers of scaling.cpus_per_worker=1 CPUs and scaling.gpus_per_worker=2 GPUs: this "
     r"cluster's nodes \(8 CPUs \+ 2 GPUs, 8 CPUs \+ 1 GPUs\) hold 1 at most"),
    (["scaling.use_gpu=true", "scaling.gpus_per_worker=4", "scaling.num_workers=2"], [Node(8, 4), Node(8, 2)],
     r"hold 1 at most: lower scaling.num_workers or scaling.cpus_per_worker or scaling.gpus_per_worker$"),
    (["run.output=runs/x"], TWO_SMALL_NODES,
     r"^run.output=runs/x is a folder on this machine, but the cluster has 2 nodes: give a storage URI "
     r"\(s3://bucket/runs/x\) or set run.shared_filesystem=true where every node mounts it$"),
])
def test_a_layout_that_cannot_work_is_refused_naming_the_setting(overrides, nodes, message):
    with pytest.raises(RaynlpError, match=message):
        check_layout(_config(*overrides), nodes)


def test_what_a_cluster_that_grows_or_shares_a_folder_may_do():
    # An autoscaler may add the GPUs and CPUs: only the output folder is checked.
    check_layout(_config("scaling.use_gpu=true", "scaling.num_workers=8"), [Node(2)], can_grow=True)
    with pytest.raises(RaynlpError, match="^run.output=/data/x is a folder on this machine"):
        check_layout(_config("run.output=/data/x"), TWO_SMALL_NODES, can_grow=True)
    check_layout(_config("run.output=/data/x", "run.shared_filesystem=true"), TWO_SMALL_NODES)
    check_layout(_config("run.output=runs/x", "scaling.num_workers=1"), [Node(4)])  # one node: a local folder
    check_layout(_config("scaling.use_gpu=true", "scaling.num_workers=2", "scaling.cpus_per_worker=4"),
                 [Node(16, 2)])
    # Two workers of 4 GPUs each: one a node of 4, or both on a node of 8.
    check_layout(_config("scaling.use_gpu=true", "scaling.gpus_per_worker=4", "train.batch_size=16"),
                 [Node(16, 4), Node(16, 4)])
    check_layout(_config("scaling.use_gpu=true", "scaling.gpus_per_worker=4", "train.batch_size=16"), [Node(32, 8)])


def test_the_nodes_of_a_real_cluster(ray_cluster):
    nodes, can_grow = cluster_nodes()
    assert nodes == [Node(4, 0)] and not can_grow  # conftest's cluster: one node, 4 CPUs, no autoscaler


def test_how_long_a_run_waits_for_room_to_place_its_workers(monkeypatch):
    from raynlp.train._internal.layout import START_TIMEOUT_ENV, placement_attempts

    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    assert placement_attempts(600) == 9  # Ray Train waits 60 s a start: the first and 9 more
    assert placement_attempts(30) == 0 and placement_attempts(None) == -1
    monkeypatch.setenv(START_TIMEOUT_ENV, "10")
    assert placement_attempts(600) == 59 and placement_attempts(10) == 0


def test_ray_trains_placement_timeout_becomes_a_message_that_says_what_to_do(ray_cluster):
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError, WorkerGroupStartupTimeoutError

    from raynlp.train._internal.layout import no_room_error

    config = _config("scaling.num_workers=3", "scaling.cpus_per_worker=1.5", "run.wait_for_workers_s=120")
    error = no_room_error(config, ControllerError(WorkerGroupStartupTimeoutError(3)), "s3://bucket/runs/x/ray_train")
    assert str(error) == ("the cluster found no room for 3 workers of 1.5 CPUs for about 120 s "
                          "(run.wait_for_workers_s; nodes now: 4 CPUs): the run stopped; run the same command again "
                          "once the cluster has room, and it resumes from its last checkpoint (in "
                          "s3://bucket/runs/x/ray_train), if it made one")
    assert no_room_error(config, ControllerError(WorkerGroupStartupFailedError("no")), "x") is None
