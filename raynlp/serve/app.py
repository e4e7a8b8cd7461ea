"""The Serve application: one deployment, a FastAPI ingress, every configured classifier in each replica.

    POST /v1/classify  {"texts": ["...", ...]}  →  {"model": ..., "predictions": [{label, label_name, probabilities}]}
    GET  /v1/model     name, preset folder, labels, sequence length, version
    POST /v1/models/NAME/classify, GET /v1/models, GET /v1/models/NAME: the same, for one of several models
                       (`models:` in the config; the first is the one /v1/classify and /v1/model answer for)
    GET  /healthz      {"status": "ok"}: the process answers (liveness; open without the token)
    GET  /readyz       the model is loaded and its last health probe answered; 503 if not (readiness)

Every text of a request becomes one item of its model's batcher (`raynlp.serve.batcher`), so texts from
concurrent requests share one model call, and a request of 40 texts is spread over batches like 40 requests of
one; a batch takes the texts that queued while the model's previous call ran (up to `batching.max_batch_size`).
It is padded up to one of a few fixed sizes (`batch_buckets`), each compiled at start-up: no request waits on a
compilation. Requests are checked completely before any text reaches the batcher, so a bad request is answered
with a 4xx JSON error and never shares a batch with good ones.

`build_app(config)` is a Serve application builder: `raynlp serve --export` names it as the `import_path` of a
Serve config file, with the config as its `args`.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from raynlp.serve.batcher import Batcher
from raynlp.serve.config import ServeConfig

logger = logging.getLogger("ray.serve")

api = FastAPI(title="raynlp classifier", description="Text classification served by raynlp on Ray Serve.")


class ClassifyRequest(BaseModel):
    """What `POST /v1/classify` takes. The body is parsed by `parse_texts`, not by FastAPI, so that every bad body
    gets raynlp's error shape; this model documents it in /openapi.json and /docs."""

    texts: list[str] = Field(min_length=1, description="texts to classify, each non-empty; at most limits.max_texts",
                             examples=[["a gem of a film", "two hours I will not get back"]])


class Prediction(BaseModel):
    label: int = Field(description="index of the most probable class")
    label_name: str = Field(description="its name, from the training data's labels")
    probabilities: list[float] = Field(description="one probability per class, in label order")


class ClassifyResponse(BaseModel):
    model: str = Field(description="name of the model that answered")
    predictions: list[Prediction] = Field(description="one per text, in the order sent")


class ErrorDetail(BaseModel):
    status: int
    message: str = Field(description="what was wrong, and what to send instead")


class ErrorBody(BaseModel):
    """Every refused request's body, whatever the route."""

    error: ErrorDetail


# What the health check classifies: any text will do; a fixed one makes every probe the same work.
PROBE_TEXT = "a health probe"

_CLASSIFY_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": ClassifyRequest.model_json_schema()}}}}
_REFUSALS = {status: {"model": ErrorBody, "description": why} for status, why in [
    (400, "a malformed body"), (413, "too many texts or too large a body")]}


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


@api.exception_handler(Exception)
async def _failed(_request: Request, error: Exception) -> JSONResponse:
    # The app's own failure, in raynlp's error shape: a client tells it from a replica that died under a request
    # (Serve's proxy answers that 500 itself, as plain text), which is worth retrying.
    logger.exception("raynlp: request failed")
    return _error_body(500, f"the server failed on this request ({type(error).__name__}); the replica's log says "
                            "why")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    # Unknown routes and methods get the same JSON error shape as refused requests.
    return _error_body(error.status_code, str(error.detail))


# What a replica's environment holds about its token (deployment_options puts it there): the name of the variable
# that holds it, and, where the app was built with the token at hand (`raynlp serve`), its SHA-256, so that the
# token itself never enters Serve's stored deployment config (which Ray's dashboard and REST API show). Serve
# serves copies of `api` and of the deployment class, taken when this module is imported, so a replica cannot hand
# the middleware anything through them; its process environment is the one place both see.
TOKEN_ENV_VAR = "RAYNLP_SERVE_TOKEN_ENV"
TOKEN_SHA256_VAR = "RAYNLP_SERVE_TOKEN_SHA256"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def _expected_token_sha256(name: str) -> str:
    """The digest of the token this replica requires: of the variable `name` where the node's environment holds it
    (a Kubernetes secret), else the one the app was built with."""
    token = os.environ.get(name, "").strip()
    digest = token_sha256(token) if token else os.environ.get(TOKEN_SHA256_VAR, "")
    if not digest:
        from raynlp.errors import RaynlpError

        raise RaynlpError(f"auth.token_env={name}, but {name} is not set where the replica runs (nor was it where "
                          "the app was built)")
    return digest


class RequireToken:
    """With a token set (`auth.token_env`), every route but the liveness probe needs `Authorization: Bearer TOKEN`;
    compared, as SHA-256 digests, in constant time. A plain ASGI middleware: with no token it only reads one
    environment variable per request (Starlette's `@app.middleware` wraps every request and response in tasks)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        name = os.environ.get(TOKEN_ENV_VAR) if scope["type"] == "http" else None
        if name and _route(scope) != "/healthz":
            from starlette.datastructures import Headers

            scheme, _, presented = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token_sha256(presented),
                                                                     _expected_token_sha256(name)):
                from raynlp.serve.metrics import replica_metrics

                replica_metrics().refused(401)
                response = _error_body(401, "this server needs a bearer token: send the header "
                                            "'Authorization: Bearer TOKEN' (RAYNLP_TOKEN for raynlp classify)")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


api.add_middleware(RequireToken)


def _route(scope) -> str:
    """The request's path below the app's route prefix."""
    path, prefix = scope["path"], scope.get("root_path", "")
    return path[len(prefix):] if prefix and path.startswith(prefix) else path


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
    except RecursionError:  # Python's parser recurses a level a nested list or object
        raise RequestError(400, 'request body nests JSON too deeply; send {"texts": ["...", ...]}') from None
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


class ServedModel:
    """One classifier in a replica: loaded and compiled at start, with a batcher of its own, so that texts sent to
    one model share its calls and never another model's."""

    def __init__(self, preset: str, name: str | None, config: ServeConfig, metrics):
        from raynlp._internal.cluster import keep_tensorflow_out
        from raynlp.inference import TextClassifier

        keep_tensorflow_out()  # a Serve replica's process
        self.config, self.metrics = config, metrics
        self.classifier = TextClassifier.load(preset, max_batch_size=config.batching.max_batch_size,
                                              sequence_length=config.sequence_length)
        self.classifier.warm_up()
        self.name = name or self.classifier.name
        self.version = fingerprint(self.classifier.folder)
        self._batcher = Batcher(self._classify_batch, max_batch_size=config.batching.max_batch_size,
                                wait_timeout_s=config.batching.wait_timeout_ms / 1000,
                                on_queue_length=self.report_queue_length)

    async def classify(self, texts: list[str]) -> dict:
        if self.config.batching.enabled:
            now = time.monotonic()
            rows = await asyncio.gather(*(self._batcher((text, now)) for text in texts))
        else:
            rows = await self._predict(texts)
        self.metrics.texts_classified.inc(len(texts), tags={"model": self.name})
        labels = self.classifier.labels
        predictions = []
        for row in rows:
            best = int(row.argmax())
            predictions.append({"label": best, "label_name": labels[best], "probabilities": row.tolist()})
        return {"model": self.name, "predictions": predictions}

    async def _classify_batch(self, items: list[tuple[str, float]]) -> list:
        started = time.monotonic()
        for _, queued in items:
            self.metrics.queue_wait_seconds.observe(started - queued, tags={"model": self.name})
        return list(await self._predict([text for text, _ in items]))

    async def _predict(self, texts: list[str]):
        # The model call runs off the event loop, so requests keep arriving (and the next batch fills) meanwhile.
        started = time.monotonic()
        rows = await asyncio.to_thread(self.classifier.predict_proba, texts)
        self.metrics.model_seconds.observe(time.monotonic() - started, tags={"model": self.name})
        self.metrics.batch_size.observe(len(texts), tags={"model": self.name})
        return rows

    def report_queue_length(self, queued: int | None = None) -> None:
        """The queue gauge: set by the batcher on each change, and again at each health check, because Ray's metrics
        agent drops a gauge that was not set within two export intervals (20 s by default; an idle replica's would
        vanish): `health.period_s` (10 s by default) must stay below that."""
        self.metrics.queued_texts.set(self._batcher.queued if queued is None else queued, tags={"model": self.name})

    async def probe(self) -> None:
        """Classify PROBE_TEXT; raise unless the answer is a probability distribution."""
        row = (await asyncio.to_thread(self.classifier.predict_proba, [PROBE_TEXT]))[0]
        if not (np.all(np.isfinite(row)) and abs(float(row.sum()) - 1) < 1e-3):
            raise ValueError(f"model {self.name}'s probabilities for the probe are not a distribution: {row.tolist()}")

    def describe(self) -> dict:
        c = self.classifier
        return {"name": self.name, "preset": c.folder, "version": self.version, "labels": c.labels,
                "num_classes": c.num_classes, "sequence_length": c.sequence_length,
                "batching": self.config.batching.model_dump(), "limits": self.config.limits.model_dump()}


@serve.deployment(name="Classifier")
@serve.ingress(api)
class ClassifierServer:
    """Every model of the config in each replica (`models`, or the one `preset`); the first is the default that
    `/v1/classify` and `/v1/model` answer for."""

    def __init__(self, config: ServeConfig):
        from raynlp.serve.metrics import replica_metrics

        start = time.perf_counter()
        self.config = config
        if config.auth.token_env:  # fail closed: no replica that would answer without the token
            if os.environ.get(TOKEN_ENV_VAR) != config.auth.token_env:
                from raynlp.errors import RaynlpError

                raise RaynlpError(f"auth.token_env={config.auth.token_env}, but this replica's environment does not "
                                  f"name it in {TOKEN_ENV_VAR} (were ray_actor_options.runtime_env overridden?)")
            _expected_token_sha256(config.auth.token_env)
        self.metrics = replica_metrics()
        self.models: dict[str, ServedModel] = {}
        for name, preset in config.presets().items():
            model = ServedModel(preset, name, config, self.metrics)
            self.models[model.name] = model
        self.default = next(iter(self.models.values()))
        self.probe_failure: str | None = None
        logger.info("raynlp: serving %s after %.1f s of loading and compiling",
                    ", ".join(f"{m.name} ({m.classifier.folder}, version {m.version})" for m in self.models.values()),
                    time.perf_counter() - start)

    async def _texts(self, request: Request) -> list[str]:
        limits = self.config.limits
        try:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limits.max_body_bytes:
                raise RequestError(413, f"request body is {declared} bytes; the limit is {limits.max_body_bytes}")
            return parse_texts(await request.body(), max_texts=limits.max_texts, max_body_bytes=limits.max_body_bytes)
        except RequestError as refused:
            self.metrics.refused(refused.status)
            raise

    def _model(self, name: str) -> ServedModel:
        if name not in self.models:
            self.metrics.refused(404)
            raise RequestError(404, f"no model {name!r} here; models: {', '.join(self.models)} (GET /v1/models)")
        return self.models[name]

    @api.post("/v1/classify", response_model=ClassifyResponse, responses=_REFUSALS, openapi_extra=_CLASSIFY_BODY)
    async def classify(self, request: Request) -> dict:
        """Classify with the default model (the one `preset`, or the first of `models`)."""
        return await self.default.classify(await self._texts(request))

    @api.post("/v1/models/{name}/classify", response_model=ClassifyResponse,
              responses={**_REFUSALS, 404: {"model": ErrorBody, "description": "no model of that name"}},
              openapi_extra=_CLASSIFY_BODY)
    async def classify_with(self, name: str, request: Request) -> dict:
        """Classify with the model named `name` (GET /v1/models lists them)."""
        model = self._model(name)
        return await model.classify(await self._texts(request))

    @api.get("/v1/model")
    async def model(self) -> dict:
        return self.default.describe()

    @api.get("/v1/models")
    async def list_models(self) -> dict:
        return {"default": self.default.name, "models": [m.describe() for m in self.models.values()]}

    @api.get("/v1/models/{name}")
    async def model_named(self, name: str) -> dict:
        return self._model(name).describe()

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness: the replica's process answers (cheap; no model is run)."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: the models are loaded and their last health probe answered (503 with the reason if not)."""
        body = {"models": {m.name: m.version for m in self.models.values()}}
        if self.probe_failure:
            return JSONResponse({"status": "failing", "reason": self.probe_failure, **body}, status_code=503)
        return JSONResponse({"status": "ready", **body})

    async def check_health(self) -> None:
        """Serve's health check, every `health.period_s`: each model classifies PROBE_TEXT. Raising reports the
        replica unhealthy, and Serve replaces it."""
        try:
            for model in self.models.values():
                model.report_queue_length()
                await model.probe()
        except Exception as error:
            self.probe_failure = f"{type(error).__name__}: {error}"
            logger.error("raynlp: health probe failed (%s); Serve replaces this replica", self.probe_failure)
            raise
        self.probe_failure = None


def deployment_options(config: ServeConfig) -> dict:
    """Replicas, resources and autoscaling of the deployment, from the config."""
    from raynlp._internal.cluster import worker_env

    scaling = config.autoscaling
    autoscaling = {"min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
                   "target_ongoing_requests": scaling.target_ongoing_requests,
                   "upscale_delay_s": scaling.upscale_delay_s, "downscale_delay_s": scaling.downscale_delay_s}
    if scaling.initial_replicas is not None:
        autoscaling["initial_replicas"] = scaling.initial_replicas
    env = worker_env(config.replica.num_gpus)
    name = config.auth.token_env
    if name:
        env[TOKEN_ENV_VAR] = name
        if os.environ.get(name, "").strip():  # set where the app is built (`raynlp serve`): its digest, not itself
            env[TOKEN_SHA256_VAR] = token_sha256(os.environ[name])
    return {
        "autoscaling_config": autoscaling,
        "max_ongoing_requests": config.replica.max_ongoing_requests,
        "health_check_period_s": config.health.period_s,
        "health_check_timeout_s": config.health.timeout_s,
        "logging_config": {"enable_access_log": config.access_log},
        "ray_actor_options": {"num_cpus": config.replica.num_cpus, "num_gpus": config.replica.num_gpus,
                              "runtime_env": {"env_vars": env}},
    }


def build_app(config: ServeConfig) -> serve.Application:
    """The Serve application for `config` (Serve validates a config file's `args` into ServeConfig)."""
    from raynlp.presets import portable

    # As replicas on any node find them.
    if config.models:
        config = config.model_copy(update={"models": {n: portable(p) for n, p in config.models.items()}})
    else:
        config = config.model_copy(update={"preset": portable(config.preset)})
    return ClassifierServer.options(**deployment_options(config)).bind(config)
