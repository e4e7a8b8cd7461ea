"""Start or join the Ray cluster a command runs on."""

import logging
import os

logger = logging.getLogger(__name__)

# Keras fixes its backend at import, and Ray workers may import it while unpickling: set it for every worker.
WORKER_ENV = {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"), "TF_CPP_MIN_LOG_LEVEL": "3"}


def ensure_ray(address: str | None = None, num_cpus: int | None = None):
    """Join `address` (or `RAY_ADDRESS`) when given; else start a local cluster on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": WORKER_ENV})
    else:
        # Ray's CPU count is logical: leave room for Ray Data's actors beside the training workers.
        cpus = num_cpus or max(4, os.cpu_count() or 1)
        ray.init(num_cpus=cpus, include_dashboard=False, runtime_env={"env_vars": WORKER_ENV})
    logger.info("Ray cluster: %s", ray.get_runtime_context().gcs_address)
    return ray
