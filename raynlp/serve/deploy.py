"""Start the classifier app on Ray Serve, or write it out as a Serve config file for `serve deploy` / KubeRay."""

from __future__ import annotations

import logging
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
            "args": config.model_dump(mode="json", exclude={"http", "address"}, exclude_none=True),
            "runtime_env": {"env_vars": dict(WORKER_ENV)},
        }],
    }


def export(config: ServeConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Ray Serve config written by `raynlp serve --export`.\n"
              "#   serve deploy THIS_FILE   (or embed `applications` in a KubeRay RayService's serveConfigV2)\n")
    path.write_text(header + yaml.safe_dump(serve_config_file(config), sort_keys=False))
    return path


def start(config: ServeConfig) -> str:
    """Start (or join) Ray, run the app on Serve and return its base URL once every replica is ready."""
    from ray import serve

    from raynlp._internal.cluster import ensure_ray
    from raynlp.inference.classifier import describe_classifier
    from raynlp.serve.app import build_app

    describe_classifier(config.preset)  # a wrong folder fails here, before any Ray resource is taken
    import ray

    joining = ray.is_initialized() or bool(config.address)
    if not joining:
        _check_port_free(config.http.host, config.http.port)
    ensure_ray(config.address)
    serve.start(http_options={"host": config.http.host, "port": config.http.port})
    serve.run(build_app(config), name=config.name, route_prefix=config.route_prefix)
    url = base_url(config)
    logger.info("serving %s at %s (POST /v1/classify, GET /v1/model, GET /healthz)", config.preset, url)
    return url


def stop(config: ServeConfig) -> None:
    from ray import serve

    serve.delete(config.name)


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
