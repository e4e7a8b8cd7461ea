"""A small HTTP client for a raynlp classifier server (standard library only).

    >>> from raynlp.serve import Client
    >>> Client("http://127.0.0.1:8000").classify(["a gem of a film", "two hours I will not get back"])
    [Prediction(label=1, label_name='positive', probabilities=[0.04, 0.96]), ...]
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from raynlp.errors import RaynlpError


@dataclass(frozen=True)
class Prediction:
    label: int
    label_name: str
    probabilities: list[float]


class ServerError(RaynlpError):
    """The server refused a request (4xx) or failed (5xx); `status` is the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"server answered {status}: {message}")
        self.status = status


class Client:
    """`token`: the server's bearer token (`auth.token_env` on the server); default RAYNLP_TOKEN, if set.

    Every call is retried, up to `retries` times with jittered exponential backoff from `backoff_s`, where the server
    could not answer it: no connection, 502/503/504, or a 500 that is not raynlp's own error body (Ray Serve's proxy
    answers so when the replica holding the request died). Classifying is idempotent, so a retry is safe; an answer
    of the app itself (a 4xx, or its own 500) is never retried.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0, token: str | None = None,
                 retries: int = 4, backoff_s: float = 0.25):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token or os.environ.get("RAYNLP_TOKEN") or None
        self.retries = retries
        self.backoff_s = backoff_s

    def classify(self, texts: list[str], model: str | None = None) -> list[Prediction]:
        """One prediction per text, in input order, by `model` (one of `models()`; default: the server's default)."""
        path = "/v1/classify" if model is None else f"/v1/models/{urllib.parse.quote(model, safe='')}/classify"
        answer = self._call("POST", path, {"texts": list(texts)})
        return [Prediction(**p) for p in answer["predictions"]]

    def model(self) -> dict:
        """The default model: name, preset, version, labels, sequence length, limits."""
        return self._call("GET", "/v1/model")

    def models(self) -> dict:
        """Every model the server serves: `{"default": name, "models": [as model() describes each]}`."""
        return self._call("GET", "/v1/models")

    def healthy(self) -> bool:
        """Whether the server answers its liveness probe now (asked once, never retried)."""
        try:
            return self._call("GET", "/healthz", retries=0).get("status") == "ok"
        except RaynlpError:
            return False

    def _call(self, method: str, path: str, payload: dict | None = None, retries: int | None = None) -> dict:
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                return self._send(method, path, payload)
            except _Unanswered as e:
                if attempt == retries:
                    raise e.error from None
                time.sleep(random.uniform(0.5, 1.0) * self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, payload: dict | None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            error = ServerError(e.code, _error_message(body))
            if e.code in (502, 503, 504) or (e.code == 500 and not _is_raynlp_error(body)):
                raise _Unanswered(error) from None
            raise error from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
            if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
                raise RaynlpError(f"{self.url} did not answer within {self.timeout:g} s") from None
            reason = getattr(e, "reason", e)
            raise _Unanswered(RaynlpError(f"cannot reach {self.url}: {reason}")) from None


class _Unanswered(Exception):
    """A call the server could not answer: worth a retry."""

    def __init__(self, error: RaynlpError):
        super().__init__(str(error))
        self.error = error


def _is_raynlp_error(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body).get("error"), dict)
    except (ValueError, AttributeError):
        return False


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error", {})
        return error.get("message") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:200]
