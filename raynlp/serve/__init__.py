"""Online serving on Ray Serve: a batched, autoscaled classifier behind a small HTTP API, and its client.

    >>> from raynlp.serve import load_serve_config, start, Client
    >>> url = start(load_serve_config("configs/serve.yaml", ["preset=runs/finetune/preset"]))
    >>> Client(url).classify(["a gem of a film"])
"""

from raynlp.serve.client import Client, Prediction, ServerError
from raynlp.serve.config import ServeConfig, load_serve_config
from raynlp.serve.deploy import export, serve_config_file, start, stop

__all__ = ["Client", "Prediction", "ServeConfig", "ServerError", "export", "load_serve_config",
           "serve_config_file", "start", "stop"]
