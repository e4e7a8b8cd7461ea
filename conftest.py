"""Shared pytest fixtures: one real local Ray cluster for the whole session."""

import os

import pytest

from raynlp._internal.cluster import WORKER_ENV

for _name, _value in WORKER_ENV.items():
    os.environ.setdefault(_name, _value)
# The MLflow test's store is a folder: MLflow 3 refuses a file store unless allowed (a database store needs the
# full mlflow package, not the skinny one). Set before any Ray cluster starts: its workers inherit it.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def pytest_collection_modifyitems(items):
    """Files with a slow test first, each file's tests together and in their order. `make test`'s two processes
    take a whole file at a time (`--dist loadfile`, `--no-loadscope-reorder`: xdist would otherwise put files with
    many tests first, the few long ones last), so the many quick files come last and fill whichever process is
    free, rather than one long file running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: the order within each group stays


@pytest.fixture(scope="session", autouse=True)
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1 for the whole session, started before any Ray cluster
    (a test's own included): pyarrow (so Ray Data and Ray Train) reaches it through `AWS_ENDPOINT_URL`, set here in this process,
    whose environment the cluster's workers inherit. Yields that environment."""
    import socket
    import subprocess
    import sys
    import time

    from raynlp._internal.cluster import LOOPBACK, free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        os.environ.update(env)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A real local Ray cluster on 127.0.0.1, shared by every test that asks for it; its workers reach the
    session's S3 server."""
    import ray

    from raynlp._internal.cluster import on_loopback

    if not ray.is_initialized():
        # CPUs are logical: leave room for Ray Data's actors beside training workers of 1 CPU (a test whose
        # workers keep their shards in memory takes all 4: no reading task runs beside them).
        with on_loopback() as ip:
            ray.init(
                address="local",  # a cluster of its own, whatever Ray's record of a `ray start` head says
                num_cpus=4,
                # Unlike raynlp's own local clusters: nobody watches it, and on 2 cores its dashboard's share
                # of the CPU slows every test (jobs_test runs its own head, with a dashboard).
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": WORKER_ENV},
                _node_ip_address=ip,
            )
    yield ray
    ray.shutdown()


def _tiny_classifier(folder, *, seed: int, num_classes: int, sequence_length: int):
    """A random-init BERT-Tiny classifier saved as a plain keras-hub preset in `folder`, and the live model."""
    import keras
    import keras_hub

    from raynlp.presets import resolve

    keras.utils.set_random_seed(seed)
    base = resolve("bert_tiny_en_uncased_scratch")
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(base, sequence_length=sequence_length)
    classifier = keras_hub.models.BertTextClassifier.from_preset(base, num_classes=num_classes,
                                                                 preprocessor=preprocessor)
    classifier.save_to_preset(str(folder))
    return str(folder), classifier


@pytest.fixture(scope="session")
def keras_hub_classifier(tmp_path_factory):
    """A (random-init) 3-class BERT-Tiny classifier saved as a plain keras-hub preset (sequence length 48), and
    the live model: what inference and serving must agree with."""
    return _tiny_classifier(tmp_path_factory.mktemp("classifier") / "preset", seed=1, num_classes=3,
                            sequence_length=48)


@pytest.fixture(scope="session")
def second_keras_hub_classifier(tmp_path_factory):
    """Another classifier beside it: 2 classes, other weights, sequence length 32 (an app serving several)."""
    return _tiny_classifier(tmp_path_factory.mktemp("second") / "preset", seed=7, num_classes=2, sequence_length=32)


@pytest.fixture(scope="session")
def serve_port(ray_cluster):
    """Ray Serve on the session's cluster, started once: each test's app joins it under its own name and route
    prefix, as apps share the Serve instance of a real cluster, and deletes only that app. Yields its HTTP port
    on 127.0.0.1."""
    from ray import serve

    from raynlp._internal.cluster import LOOPBACK, free_port

    port = free_port()
    serve.start(http_options={"host": LOOPBACK, "port": port})
    yield port
    serve.shutdown()
