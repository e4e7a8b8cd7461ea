"""Start the classifier app on Ray Serve, or write it out as a Serve config file for `serve deploy` / KubeRay."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import yaml

from raynlp.errors import RaynlpError
from raynlp.serve.config import ServeConfig

logger = logging.getLogger(__name__)

APP_BUILDER = "raynlp.serve.app:build_app"


def serve_config_file(config: ServeConfig) -> dict:
    """The Serve config (`serve deploy FILE`, a RayService's `serveConfigV2`) that runs this app.

    The application is raynlp's builder with the whole config as its `args`, so a cluster runs exactly what
    `raynlp serve` runs here. The preset folder must be readable where the replicas run: a shared path, or a
    storage URI each replica downloads (with the credentials of its node).
    """
    from raynlp._internal.cluster import WORKER_ENV

    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.http.host, "port": config.http.port},
        "applications": [{
            "name": config.name,
            "route_prefix": config.route_prefix,
            "import_path": APP_BUILDER,
            # Only the way the config names its models (`preset` or `models`), not the other one left empty.
            "args": config.model_dump(mode="json", exclude={"http", "address"} | ({"models"} if not config.models
                                                                                 else set()), exclude_none=True),
            "runtime_env": {"env_vars": dict(WORKER_ENV)},
        }],
    }


def export(config: ServeConfig, path: str | Path) -> Path:
    warn_if_open(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Ray Serve config written by `raynlp serve --export`.\n"
              "#   serve deploy THIS_FILE   (or embed `applications` in a KubeRay RayService's serveConfigV2)\n")
    path.write_text(header + yaml.safe_dump(serve_config_file(config), sort_keys=False))
    return path


def start(config: ServeConfig) -> str:
    """Start (or join) Ray, run the app on Serve and return its base URL once every replica is ready.

    Where Serve already runs on the cluster, the app joins that Serve instance, beside its other apps, and answers
    on its HTTP host and port.
    """
    from ray import serve

    from raynlp._internal.cluster import ensure_ray
    from raynlp.inference.classifier import describe_classifier
    from raynlp.serve.app import build_app

    for preset in config.presets().values():
        describe_classifier(preset)  # a wrong folder fails here, before any Ray resource is taken
    name = config.auth.token_env
    if name and not os.environ.get(name, "").strip():
        raise RaynlpError(f"auth.token_env={name}, but {name} is not set: export {name}=TOKEN before serving")
    warn_if_open(config)
    import ray

    joining = ray.is_initialized() or bool(config.address)
    if not joining:
        _check_port_free(config.http.host, config.http.port)
    ensure_ray(config.address)
    running = running_http_address()
    if running is None:
        serve.start(http_options={"host": config.http.host, "port": config.http.port})
    elif running != (config.http.host, config.http.port):
        # Serve's HTTP address belongs to the Serve instance, not to an app: every app on the cluster shares it,
        # and it cannot change while Serve runs. Whoever deploys onto a cluster that already serves wants the app
        # there, as `serve deploy` would add it; refusing would only make them look up the address the cluster
        # chose. The URL returned and logged names where the app answers.
        logger.warning("Serve already runs on this Ray cluster at %s:%d: the app joins it there, not at the "
                       "configured http.host:http.port %s:%d", *running, config.http.host, config.http.port)
        config = config.model_copy(update={"http": config.http.model_copy(
            update={"host": running[0], "port": running[1]})})
    serve.run(build_app(config), name=config.name, route_prefix=config.route_prefix)
    url = base_url(config)
    logger.info("serving %s at %s (POST /v1/classify, GET /v1/models, GET /healthz)",
                ", ".join(p if n is None else f"{n}: {p}" for n, p in config.presets().items()), url)
    return url


def warn_if_open(config: ServeConfig) -> None:
    """Warn where the server would listen beyond this machine with no token."""
    if config.http.host in ("0.0.0.0", "::") and not config.auth.token_env:
        logger.warning("serving on %s with no token: anyone who reaches this machine can call it (set "
                       "auth.token_env to require a bearer token)", config.http.host)


def stop(config: ServeConfig) -> None:
    from ray import serve

    serve.delete(config.name)


def running_http_address() -> tuple[str, int] | None:
    """The HTTP host and port of the Serve instance running on the connected Ray cluster; None when Serve does not
    run there."""
    # Private API: Ray 2.60 has no public call that tells (`serve.status()` lists proxies and apps, not where they
    # listen). The controller client holds the instance's HTTP options; `serve.start` checks new ones against it.
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    return client.http_config.host, client.http_config.port


@contextlib.contextmanager
def serve_instance(host: str = "127.0.0.1"):
    """The Serve instance to run apps on, as `(host, port)`: the one the connected cluster runs, else one started
    here on a free port and shut down on leaving. Apps run inside are the caller's to delete."""
    from ray import serve

    from raynlp._internal.cluster import free_port

    running = running_http_address()
    if running is not None:
        yield running
        return
    port = free_port(host)
    serve.start(http_options={"host": host, "port": port})
    try:
        yield host, port
    finally:
        serve.shutdown()


def base_url(config: ServeConfig) -> str:
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    return f"http://{host}:{config.http.port}{config.route_prefix.rstrip('/')}"


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        # As the HTTP server will: connections of an earlier server lingering in TIME_WAIT do not hold the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise RaynlpError(f"cannot serve on {host}:{port}: {e.strerror}; choose another port (--port)") from None
