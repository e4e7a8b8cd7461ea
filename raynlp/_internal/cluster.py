"""Start or join the Ray cluster a command runs on, what its nodes hold, and what each process on it gets."""

import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Set in every Ray worker and job: Keras fixes its backend at import (and workers may import it while unpickling);
# TensorFlow's start-up chatter would hide the logs; TensorFlow is there only for keras-hub's tokenizers and, where
# a process has it and it touches a GPU before `keep_tensorflow_off_gpus` hides them, takes memory as it needs it,
# not nearly all of it.
WORKER_ENV = {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"), "TF_CPP_MIN_LOG_LEVEL": "3",
              "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def worker_env(num_gpus: float = 0) -> dict[str, str]:
    """WORKER_ENV for a process given `num_gpus`. One that shares a GPU (a fraction of one) also keeps JAX from
    taking most of the GPU's memory when it starts, its default, which would leave the other sharers none."""
    return {**WORKER_ENV, **({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if 0 < num_gpus < 1 else {})}


def keep_tensorflow_out() -> bool:
    """Keep TensorFlow out of this process, one raynlp started to train or run a model (a Ray Train worker, an
    evaluation actor, a Serve replica): it runs JAX on arrays raynlp's own tokenizer packed, and keras-hub imports
    TensorFlow, when it is installed, only for its tf.data preprocessing and tf-text tokenizers, which it then
    does without (pure-Python tokenizers). The process starts sooner, holds less memory and leaves the GPUs to
    JAX. Call it before keras-hub is imported, and never in a caller's own process (its later `import
    tensorflow` would fail). Where TensorFlow is in already, hides the GPUs from it instead
    (`keep_tensorflow_off_gpus`); returns whether it is out."""
    if sys.modules.get("tensorflow") is not None:
        keep_tensorflow_off_gpus()
        return False
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError in this process from now on
    return True


def keep_tensorflow_off_gpus() -> bool:
    """Hide this process's GPUs from TensorFlow (JAX keeps them): keras-hub imports TensorFlow for its tokenizers,
    and TensorFlow, once it starts on a GPU, holds most of its memory. Call it before anything runs a TensorFlow
    op; returns False when TensorFlow had started its devices already (then only TF_FORCE_GPU_ALLOW_GROWTH
    bounds what it holds)."""
    try:
        import tensorflow as tf
    except ImportError:
        return True
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # "Visible devices cannot be modified after being initialized"
        logger.debug("TensorFlow's devices were set up before raynlp could hide the GPUs from it")
        return False
    return True


@dataclass(frozen=True)
class Node:
    """An alive node's resources, as `ray.nodes()` gives them."""

    cpus: float
    gpus: float = 0

    def __str__(self) -> str:
        return f"{self.cpus:g} CPUs" + (f" + {self.gpus:g} GPUs" if self.gpus else "")


def cluster_nodes() -> tuple[list[Node], bool]:
    """The alive nodes of the cluster this process joined, and whether an autoscaler may add more."""
    import ray
    from ray._private import state

    nodes = [Node(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["Alive"]]
    try:
        can_grow = state.state.get_cluster_config() is not None  # an autoscaler publishes its node types
    except Exception:  # an older head without the record: assume it may grow, as Ray Train would wait
        can_grow = True
    return nodes, can_grow


# Which cluster a command runs on, as `ensure_ray` chooses it: for every --address flag and `address` field.
ADDRESS_HELP = ("Ray cluster to join (default: RAY_ADDRESS, else the local cluster `ray start` runs on this machine, "
                "else a new local cluster for this command)")

# A local cluster binds the loopback address only, never the machine's routable IP.
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nobody listens on now (free only until someone takes it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def on_loopback():
    """Make a local cluster started inside the block bind 127.0.0.1: `ray.init(..., _node_ip_address=ip)`.

    `_node_ip_address="127.0.0.1"` alone does nothing on Linux: Ray 2.60's `ray.init` turns a loopback address
    into the IP of the default route ("remotely reachable", `services.resolve_ip_for_localhost`), except in its
    single-machine mode, the one it uses on macOS and Windows (`ray_constants.ENABLE_RAY_CLUSTER`, read from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when ray is imported). The block switches that mode on for this process
    while the cluster starts; the node then records 127.0.0.1, and every worker it starts inherits that address.
    """
    import ray._private.ray_constants as ray_constants

    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield LOOPBACK
    finally:
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


def ensure_ray(address: str | None = None, num_cpus: int | None = None):
    """The Ray cluster a command runs on, in this order: `address` (or `RAY_ADDRESS`) when given; the local
    cluster `ray start` runs on this machine, when its record points at a live head; else a new local cluster on
    127.0.0.1, which ends with the command. A record of a head that is gone is passed over (Ray's own
    `ray.init()` fails on it)."""
    import ray

    if ray.is_initialized():
        return ray
    given = address or os.environ.get("RAY_ADDRESS")
    joined = given or running_local_head()
    if joined:
        # Inside a Ray job the job's runtime env (working_dir, env vars) applies too: merge ours into it.
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
        # address=None for the recorded head: Ray then joins it as `ray.init()` does, with this machine's auth
        # token (a `ray start` head has token authentication on), which it sends for an explicit address only
        # in RAY_AUTH_MODE=token.
        with on_loopback() if joined.startswith(LOOPBACK) else contextlib.nullcontext():
            ray.init(address=given, runtime_env={"env_vars": WORKER_ENV})
        logger.info("joined the Ray cluster at %s%s", joined, "" if given else
                    " (the local one `ray start` runs; give --address or RAY_ADDRESS for another)")
    else:
        # Ray's CPU count is logical: leave room for Ray Data's actors beside the training workers.
        cpus = num_cpus or max(4, os.cpu_count() or 1)
        # The dashboard lets the user watch the command's jobs, actors and logs while it runs.
        # address="local": a new cluster, whatever Ray's record of an earlier one says.
        with on_loopback() as ip:
            ray.init(address="local", num_cpus=cpus, include_dashboard=True, runtime_env={"env_vars": WORKER_ENV},
                     _node_ip_address=ip)
        logger.info("started a local Ray cluster for this command (%d CPUs): %s", cpus,
                    ray.get_runtime_context().gcs_address)
    return ray


def started_here() -> bool:
    """Whether this process started the Ray cluster it is connected to (`ensure_ray`'s local cluster, a test
    session's, a notebook's `ray.init()`): one node on this machine unless others join it, and the cluster ends
    with the process."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node is not None and node.head


def running_local_head() -> str | None:
    """The address of the head `ray start --head` runs on this machine (Ray's record of the last one started,
    under RAY_TMPDIR or /tmp), if it still answers; None when there is none or it is gone."""
    from ray._private.utils import read_ray_address

    recorded = read_ray_address()
    if not recorded:
        return None
    host, _, port = recorded.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError):
        logger.info("Ray's record names a local cluster at %s that is gone: starting a new one", recorded)
        return None
    return recorded


@contextlib.contextmanager
def nodes_on_this_machine(*cpus: float):
    """A Ray cluster of several raylet nodes on this machine, one a CPU count (the first is the head), all on
    127.0.0.1: Ray's own `ray.cluster_utils.Cluster`, the stand-in for a cluster of machines in the tests and in
    `raynlp bench train --nodes`. Its record lies in a folder of its own (RAY_TMPDIR while the block runs), so no
    other `ray.init()` on this machine joins it; the folder (Ray's logs) is removed when the block ends well.
    Yields the Cluster (`add_node_on_this_machine`, `remove_node`); the block's end stops it."""
    import shutil
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    saved = os.environ.get("RAY_TMPDIR")
    folder = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: sockets live in it
    cluster = None
    try:
        with on_loopback() as ip:
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": cpus[0], "node_ip_address": ip, "include_dashboard": False})
        for count in cpus[1:]:
            add_node_on_this_machine(cluster, count)
        yield cluster
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR")
        else:
            os.environ["RAY_TMPDIR"] = saved


def add_node_on_this_machine(cluster, cpus: float, env: dict[str, str] | None = None):
    """One more raylet node of `cpus` CPUs in `cluster` (from `nodes_on_this_machine`), on 127.0.0.1, its raylet
    and workers given `env` on top of this process's environment; returns once the node has joined."""
    with on_loopback() as ip:
        node = cluster.add_node(num_cpus=cpus, node_ip_address=ip, **({"env_vars": env} if env else {}))
    cluster.wait_for_nodes()
    return node
