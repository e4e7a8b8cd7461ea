"""A small HTTP client for a raynlp classifier server (standard library only).

    >>> from raynlp.serve import Client
    >>> Client("http://127.0.0.1:8000").classify(["a gem of a film", "two hours I will not get back"])
    [Prediction(label=1, label_name='positive', probabilities=[0.04, 0.96]), ...]
"""

from __future__ import annotations

import json
import urllib.error
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
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def classify(self, texts: list[str]) -> list[Prediction]:
        """One prediction per text, in input order."""
        answer = self._call("POST", "/v1/classify", {"texts": list(texts)})
        return [Prediction(**p) for p in answer["predictions"]]

    def model(self) -> dict:
        """What the server serves: name, preset, version, labels, sequence length, limits."""
        return self._call("GET", "/v1/model")

    def healthy(self) -> bool:
        try:
            return self._call("GET", "/healthz").get("status") == "ok"
        except RaynlpError:
            return False

    def _call(self, method: str, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise ServerError(e.code, _error_message(e.read())) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise RaynlpError(f"cannot reach {self.url}: {reason}") from None


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error", {})
        return error.get("message") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:200]
