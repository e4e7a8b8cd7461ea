"""The client against a real HTTP server on 127.0.0.1 that answers as scripted: which answers it retries."""

import http.server
import json
import threading

import pytest

from raynlp._internal.cluster import free_port
from raynlp.errors import RaynlpError
from raynlp.serve import Client, ServerError

OK = (200, json.dumps({"model": "m", "predictions": [{"label": 1, "label_name": "pos",
                                                      "probabilities": [0.2, 0.8]}]}).encode())
RAYNLP_500 = (500, json.dumps({"error": {"status": 500, "message": "the server failed to classify"}}).encode())
PROXY_500 = (500, b"RayActorError: The actor died unexpectedly before finishing this task.")


@pytest.fixture
def scripted():
    """A server that answers each request with the next (status, body) of `answers` and records its headers."""
    state = {"answers": [], "requests": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            state["requests"].append(dict(self.headers))
            status, body = state["answers"].pop(0)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", state
    server.shutdown()


@pytest.mark.parametrize("unanswered", [(503, b"busy"), (502, b"bad gateway"), (504, b"timeout"), PROXY_500])
def test_what_the_server_could_not_answer_is_retried(scripted, unanswered):
    url, state = scripted
    state["answers"] = [unanswered, unanswered, OK]
    predictions = Client(url, backoff_s=0.01).classify(["a text"])
    assert predictions[0].label_name == "pos" and len(state["requests"]) == 3


@pytest.mark.parametrize("answer", [RAYNLP_500, (400, b'{"error": {"status": 400, "message": "texts[0] is empty"}}'),
                                    (401, b'{"error": {"status": 401, "message": "needs a bearer token"}}')])
def test_what_the_app_answered_is_not_retried(scripted, answer):
    url, state = scripted
    state["answers"] = [answer, OK]
    with pytest.raises(ServerError, match=f"server answered {answer[0]}: ") as refused:
        Client(url, backoff_s=0.01).classify(["a text"])
    assert refused.value.status == answer[0] and len(state["requests"]) == 1


def test_retries_are_bounded_and_the_last_error_is_raised(scripted):
    url, state = scripted
    state["answers"] = [(503, b"busy")] * 3 + [OK]
    with pytest.raises(ServerError, match="server answered 503: busy"):
        Client(url, retries=2, backoff_s=0.01).classify(["a text"])
    assert len(state["requests"]) == 3


def test_no_server_is_retried_then_named():
    with pytest.raises(RaynlpError, match=r"cannot reach http://127.0.0.1:\d+: .*refused"):
        Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.01).classify(["a text"])


def test_the_token_is_sent_as_a_bearer_header(scripted, monkeypatch):
    url, state = scripted
    state["answers"] = [OK, OK, OK]
    monkeypatch.delenv("RAYNLP_TOKEN", raising=False)
    Client(url).classify(["a"])
    Client(url, token="given").classify(["a"])
    monkeypatch.setenv("RAYNLP_TOKEN", "from-env")
    Client(url).classify(["a"])
    assert [r.get("Authorization") for r in state["requests"]] == [None, "Bearer given", "Bearer from-env"]
