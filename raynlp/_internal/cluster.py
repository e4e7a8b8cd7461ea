"""Start or join the Ray cluster a command runs on."""

import contextlib
import logging
import os
import socket

logger = logging.getLogger(__name__)

# Keras fixes its backend at import, and Ray workers may import it while unpickling: set it for every worker.
WORKER_ENV = {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"), "TF_CPP_MIN_LOG_LEVEL": "3"}

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
    """Join `address` (or `RAY_ADDRESS`) when given; else start a local cluster on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Inside a Ray job the job's runtime env (working_dir, env vars) applies too: merge ours into it.
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
        ray.init(address=address, runtime_env={"env_vars": WORKER_ENV})
    else:
        # Ray's CPU count is logical: leave room for Ray Data's actors beside the training workers.
        cpus = num_cpus or max(4, os.cpu_count() or 1)
        # The dashboard serves Ray's State API, through which Ray Train's placement-group cleaner watches the
        # training controller: without it the cleaner cannot work and logs a warning every second of a run.
        with on_loopback() as ip:
            ray.init(num_cpus=cpus, include_dashboard=True, runtime_env={"env_vars": WORKER_ENV}, _node_ip_address=ip)
    logger.info("Ray cluster: %s", ray.get_runtime_context().gcs_address)
    return ray
