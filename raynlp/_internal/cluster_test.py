"""Local clusters bind 127.0.0.1, not the machine's routable IP."""

import os
import subprocess
import sys

import pytest

from raynlp._internal.cluster import LOOPBACK


def _node_ip() -> str:
    import ray.util

    return ray.util.get_node_ip_address()


def test_session_cluster_runs_on_loopback(ray_cluster):
    ray = ray_cluster
    assert ray.get(ray.remote(_node_ip).remote()) == LOOPBACK
    assert ray.util.get_node_ip_address() == LOOPBACK
    assert ray.get_runtime_context().gcs_address.startswith(f"{LOOPBACK}:")


def test_jax_coordinator_address_is_on_loopback(ray_cluster):
    from raynlp.train._internal.distributed import _free_address

    host, port = ray_cluster.get(ray_cluster.remote(_free_address).remote()).rsplit(":", 1)
    assert host == LOOPBACK and 0 < int(port) < 65536


@pytest.mark.slow  # a Ray cluster of its own, in a process of its own
def test_ensure_ray_starts_a_local_cluster_on_loopback():
    # A process of its own: the tests' session cluster must stay as it is.
    script = (
        "import ray, ray._private.ray_constants as c\n"
        "from raynlp._internal.cluster import ensure_ray\n"
        "ensure_ray(num_cpus=1)\n"
        "task = ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote())\n"
        "print(task, ray.get_runtime_context().gcs_address.split(':')[0], c.ENABLE_RAY_CLUSTER)\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    # The single-machine switch is undone once the cluster is up.
    assert done.stdout.split() == [LOOPBACK, LOOPBACK, "True"]


def test_every_ray_process_gets_the_worker_environment(ray_cluster):
    from raynlp._internal.cluster import WORKER_ENV

    def environment():
        return {name: os.environ.get(name) for name in WORKER_ENV}

    assert ray_cluster.get(ray_cluster.remote(environment).remote()) == WORKER_ENV
    assert WORKER_ENV["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_tensorflow_is_kept_out_of_a_process_raynlp_starts_unless_it_is_in_already():
    # Fresh processes, as a Ray worker is. keras-hub, imported after the call, finds no TensorFlow and builds its
    # tokenizers without it. Where TensorFlow is in already, its GPUs are hidden instead: on a machine without a
    # GPU this shows the call is safe there (no TensorFlow op run yet); `raynlp bench gpu` checks on a GPU that
    # TensorFlow then sees none while JAX sees it.
    script = (
        "import sys\n"
        "from raynlp._internal.cluster import keep_tensorflow_out\n"
        "out = keep_tensorflow_out()\n"
        "import keras_hub\n"
        "from keras_hub.src.utils import tensor_utils\n"
        "tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=['[UNK]', 'a', '##b'])\n"
        "print(out, sys.modules['tensorflow'], tensor_utils.tf, tokenizer(['ab']))\n"
        "import tensorflow\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.stdout.split() == ["True", "None", "None", "[[1,", "2]]"], done.stderr[-2000:]
    assert done.returncode == 1 and done.stderr.strip().endswith("ModuleNotFoundError: import of tensorflow halted; "
                                                                 "None in sys.modules")
    script = ("import tensorflow as tf\n"
              "from raynlp._internal.cluster import keep_tensorflow_out\n"
              "print(keep_tensorflow_out(), tf.config.get_visible_devices('GPU'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "[]"]
