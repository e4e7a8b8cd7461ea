"""Past one machine: a run on a real Ray cluster of two raylet nodes (`ray.cluster_utils.Cluster`), one training
worker on each, its output in the session's S3 bucket.

The cluster lives in a process of its own (`_on_two_nodes`), with its own RAY_TMPDIR, so that the record of it
(`ray_current_cluster`) never points another test's `ray.init()` at it. Each node has 2 CPUs and each worker
takes 1.5 of them: the layout that once hung, its reading tasks waiting for a whole CPU that no node had left.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytestmark = pytest.mark.slow

BUCKET = "multi-node"

SCRIPT = textwrap.dedent('''
    import functools, json, sys

    import keras
    import ray
    from ray.cluster_utils import Cluster

    from raynlp._internal.cluster import on_loopback
    from raynlp.errors import RaynlpError
    from raynlp.train import load_config, train

    class NodeOfRank(keras.callbacks.Callback):
        """Records which Ray node each rank trained on."""
        def __init__(self, folder):
            super().__init__()
            self.folder = folder
        def on_train_begin(self, logs=None):
            context = ray.train.get_context()
            with open(f"{self.folder}/rank{context.get_world_rank()}.json", "w") as f:
                json.dump({"node": ray.get_runtime_context().get_node_id()}, f)

    output, folder = sys.argv[1], sys.argv[2]
    with on_loopback() as ip:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": ip,
                                                                "include_dashboard": False})
        cluster.add_node(num_cpus=2, node_ip_address=ip)
    cluster.wait_for_nodes()
    common = ["preset=bert_tiny_en_uncased_scratch", "data.dataset=rotten_tomatoes", "data.max_train_rows=256",
              "data.max_test_rows=64", "data.sequence_length=32", "train.batch_size=16", "train.epochs=1",
              f"run.address={cluster.address}", "scaling.num_workers=2", "run.max_failures=0"]
    outcome = {}
    try:
        train(load_config(None, ["task=finetune", *common, "scaling.cpus_per_worker=2", f"run.output={output}-x"]))
    except RaynlpError as error:
        outcome["refused"] = str(error)
    ray.shutdown()
    result = train(load_config(None, ["task=finetune", *common, "scaling.cpus_per_worker=1.5",
                                      f"run.output={output}", "run.feed_timeout_s=120"]),
                   callbacks=[functools.partial(NodeOfRank, folder)])
    outcome.update(preset=str(result.preset), nodes=[n["NodeID"] for n in ray.nodes() if n["Alive"]],
                   accuracy=result.final.get("val_accuracy"))
    print("OUTCOME " + json.dumps(outcome))
    ray.shutdown()
    cluster.shutdown()
''')


@pytest.fixture(scope="module")
def bucket(s3_server):
    import pyarrow.fs

    pyarrow.fs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(
        BUCKET)
    return f"s3://{BUCKET}"


def test_one_worker_a_node_trains_across_two_nodes_and_a_layout_without_room_is_refused(bucket, tmp_path):
    import keras_hub

    from raynlp.presets import resolve

    ray_tmp = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    done = subprocess.run([sys.executable, "-c", SCRIPT, f"{bucket}/run", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("OUTCOME ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    outcome = json.loads(lines[-1].removeprefix("OUTCOME "))
    # 2 CPUs a worker leave nothing for reading on either node: refused in one line, before Ray Train starts.
    assert outcome["refused"].startswith("scaling.cpus_per_worker=2 leaves no room beside the 2 workers for the "
                                         "tasks that read their data"), outcome
    assert outcome["refused"].endswith("lower scaling.cpus_per_worker to 1.75 at most"), outcome
    # 1.5 a worker: the workers on different nodes, reading beside them; the preset in the bucket loads.
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text())["node"] for r in (0, 1)]
    assert len(set(ranks)) == 2 and set(ranks) <= set(outcome["nodes"]), (ranks, outcome["nodes"])
    assert outcome["preset"] == f"{bucket}/run/preset"
    classifier = keras_hub.models.BertTextClassifier.from_preset(resolve(outcome["preset"]))
    assert classifier.backbone.num_layers == 2
