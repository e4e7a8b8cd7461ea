"""Shared pytest fixtures: one real local Ray cluster for the whole session."""

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster on 127.0.0.1, shared by every test that asks for it."""
    import ray

    from raynlp._internal.cluster import on_loopback

    if not ray.is_initialized():
        # CPUs are logical: leave room for Ray Data's actors beside any training workers.
        with on_loopback() as ip:
            ray.init(
                num_cpus=4,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}},
                _node_ip_address=ip,
            )
    yield ray
    ray.shutdown()
