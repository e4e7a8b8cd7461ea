"""The Serve application: one deployment, a FastAPI ingress, a classifier in every replica.

    POST /v1/classify  {"texts": ["...", ...]}  →  {"model": ..., "predictions": [{label, label_name, probabilities}]}
    GET  /v1/model     name, preset folder, labels, sequence length, version
    GET  /healthz      {"status": "ok"}

Every text of a request becomes one item of Serve's dynamic batcher (`@serve.batch`), so texts from concurrent
requests share one model call, and a request of 40 texts is spread over batches like 40 requests of one. A batch
is padded up to one of a few fixed sizes (`batch_buckets`), each compiled at start-up: no request waits on a
compilation. Requests are checked completely before any text reaches the batcher, so a bad request is answered
with a 4xx JSON error and never shares a batch with good ones.

`build_app(config)` is a Serve application builder: `raynlp serve --export` names it as the `import_path` of a
Serve config file, with the config as its `args`.
"""

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from raynlp.serve.config import ServeConfig

logger = logging.getLogger("ray.serve")

api = FastAPI(title="raynlp classifier", description="Text classification served by raynlp on Ray Serve.")


class RequestError(Exception):
    """A request the server refuses: answered with `status` and a JSON body that says what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error_body(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


@api.exception_handler(RequestError)
async def _refused(_request: Request, error: RequestError) -> JSONResponse:
    return _error_body(error.status, error.message)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    # Unknown routes and methods get the same JSON error shape as refused requests.
    return _error_body(error.status_code, str(error.detail))


def parse_texts(body: bytes, *, max_texts: int, max_body_bytes: int) -> list[str]:
    """The texts of a `/v1/classify` body, or a RequestError saying what is wrong with it."""
    if len(body) > max_body_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_body_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"request body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, 'request body must be a JSON object: {"texts": ["...", ...]}')
    if "texts" not in payload:
        raise RequestError(400, 'field "texts" is missing: send {"texts": ["...", ...]}')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(400, f'"texts" must be a list of strings, not {_json_type(texts)}')
    if not texts:
        raise RequestError(400, '"texts" is empty; send at least one text')
    if len(texts) > max_texts:
        raise RequestError(413, f'"texts" holds {len(texts)} texts; at most {max_texts} per request')
    for i, item in enumerate(texts):
        if not isinstance(item, str):
            raise RequestError(400, f"texts[{i}] is {_json_type(item)}, not a string")
        if not item.strip():
            raise RequestError(400, f"texts[{i}] is empty")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            # JSON escapes can spell a lone surrogate ("\ud800"), which is no text and which the tokenizer rejects.
            raise RequestError(400, f"texts[{i}] is not valid Unicode (a lone surrogate)") from None
    return texts


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def fingerprint(folder: str) -> str:
    """A short content hash of a model folder: the version `/v1/model` reports (same files, same version)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


@serve.deployment(name="Classifier")
@serve.ingress(api)
class ClassifierServer:
    def __init__(self, config: ServeConfig):
        from raynlp.inference import TextClassifier

        start = time.perf_counter()
        self.config = config
        self.classifier = TextClassifier.load(config.preset, max_batch_size=config.batching.max_batch_size,
                                              sequence_length=config.sequence_length)
        self.classifier.warm_up()
        self.version = fingerprint(self.classifier.folder)
        self._classify_batch.set_max_batch_size(config.batching.max_batch_size)
        self._classify_batch.set_batch_wait_timeout_s(config.batching.wait_timeout_ms / 1000)
        logger.info("raynlp: serving %s (%s, version %s) after %.1f s of loading and compiling",
                    self.classifier.name, self.classifier.folder, self.version, time.perf_counter() - start)

    @api.post("/v1/classify")
    async def classify(self, request: Request) -> dict:
        limits = self.config.limits
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestError(413, f"request body is {declared} bytes; the limit is {limits.max_body_bytes}")
        texts = parse_texts(await request.body(), max_texts=limits.max_texts, max_body_bytes=limits.max_body_bytes)
        if self.config.batching.enabled:
            rows = await asyncio.gather(*(self._classify_batch(text) for text in texts))
        else:
            rows = await asyncio.to_thread(self.classifier.predict_proba, texts)
        labels = self.classifier.labels
        predictions = []
        for row in rows:
            best = int(row.argmax())
            predictions.append({"label": best, "label_name": labels[best], "probabilities": row.tolist()})
        return {"model": self.classifier.name, "predictions": predictions}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _classify_batch(self, texts: list[str]) -> list:
        # The model call runs off the event loop, so requests keep arriving (and the next batch fills) meanwhile.
        return list(await asyncio.to_thread(self.classifier.predict_proba, texts))

    @api.get("/v1/model")
    async def model(self) -> dict:
        c = self.classifier
        return {
            "name": c.name, "preset": c.folder, "version": self.version, "labels": c.labels,
            "num_classes": c.num_classes, "sequence_length": c.sequence_length,
            "batching": self.config.batching.model_dump(), "limits": self.config.limits.model_dump(),
        }

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}


def deployment_options(config: ServeConfig) -> dict:
    """Replicas, resources and autoscaling of the deployment, from the config."""
    from raynlp._internal.cluster import worker_env

    scaling = config.autoscaling
    autoscaling = {"min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
                   "target_ongoing_requests": scaling.target_ongoing_requests}
    if scaling.initial_replicas is not None:
        autoscaling["initial_replicas"] = scaling.initial_replicas
    return {
        "autoscaling_config": autoscaling,
        "max_ongoing_requests": config.replica.max_ongoing_requests,
        "logging_config": {"enable_access_log": config.access_log},
        "ray_actor_options": {"num_cpus": config.replica.num_cpus, "num_gpus": config.replica.num_gpus,
                              "runtime_env": {"env_vars": worker_env(config.replica.num_gpus)}},
    }


def build_app(config: ServeConfig) -> serve.Application:
    """The Serve application for `config` (Serve validates a config file's `args` into ServeConfig)."""
    from raynlp.presets import portable

    config = config.model_copy(update={"preset": portable(config.preset)})  # as replicas on any node find it
    return ClassifierServer.options(**deployment_options(config)).bind(config)
