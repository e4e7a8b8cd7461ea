"""The classifier on a real Ray Serve app on 127.0.0.1, called over real HTTP.

Apps are deployed the way `serve deploy` deploys them: from the file `raynlp serve --export` writes, checked
against Ray's own Serve config schema, built by Ray's application-builder call. Each joins the session's one Serve
instance (conftest's `serve_port`) under its own name and route prefix, and is deleted when its tests end.
"""

import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from raynlp import datasets
from raynlp._internal.cluster import free_port
from raynlp.errors import RaynlpError
from raynlp.serve import Client, ServerError, export, load_serve_config, start, stop

pytestmark = pytest.mark.slow  # Serve apps

MAX_TEXTS = 16
MAX_BODY_BYTES = 32768


def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def deploy_exported(config, folder) -> str:
    """Deploy `config` as `serve deploy FILE` would, from the file `raynlp serve --export` writes."""
    from ray import serve
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    path = export(config, folder / f"{config.name}.yaml")
    document = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    app = document.applications[0]
    built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
    serve.run(built, name=app.name, route_prefix=app.route_prefix)
    return f"http://127.0.0.1:{config.http.port}{app.route_prefix}"


def tiny_config(folder: str, port: int, name: str, **values):
    return load_serve_config(None, values={
        "preset": folder, "name": name, "route_prefix": f"/{name}", "http.port": port,
        "limits.max_texts": MAX_TEXTS, "limits.max_body_bytes": MAX_BODY_BYTES, "batching.max_batch_size": 8,
        "replica.num_cpus": 0.5, "autoscaling.max_replicas": 1, **values})


@pytest.fixture(scope="module")
def server(serve_port, keras_hub_classifier, tmp_path_factory):
    from ray import serve

    folder, _ = keras_hub_classifier
    url = deploy_exported(tiny_config(folder, serve_port, "classifier"), tmp_path_factory.mktemp("serve"))
    yield url
    serve.delete("classifier")


@pytest.fixture(scope="module")
def expected(keras_hub_classifier):
    """Text → probabilities from keras-hub's own predict in this process, for real review sentences."""
    _, reference = keras_hub_classifier
    texts = datasets.read_split("rotten_tomatoes", "test")["text"].to_pylist()[:60]
    texts.append(" ".join(["an endless review"] * 200))  # far past the sequence length: truncated
    return dict(zip(texts, softmax(np.asarray(reference.predict(texts, verbose=0)))))


def test_answers_equal_keras_hub_predict_in_input_order(server, expected, keras_hub_classifier):
    texts = list(expected)[-9:]
    predictions = Client(server).classify(texts)
    assert len(predictions) == len(texts)
    for text, p in zip(texts, predictions):
        np.testing.assert_allclose(p.probabilities, expected[text], atol=1e-5)
        assert p.label == int(np.argmax(expected[text])) and p.label_name == str(p.label)
    # The replica answered without TensorFlow in its process: keras-hub loaded the classifier there without it.
    modules = _ask_replicas("classifier", lambda replica: (sys.modules.get("tensorflow") is not None,
                                                           "keras_hub" in sys.modules))
    assert list(modules.values()) == [(False, True)], modules


def test_model_description_and_health(server, keras_hub_classifier):
    folder, _ = keras_hub_classifier
    info = Client(server).model()
    assert info["preset"] == folder and info["labels"] == ["0", "1", "2"] and info["sequence_length"] == 48
    assert len(info["version"]) == 12 and info["limits"]["max_texts"] == MAX_TEXTS
    assert Client(server).healthy()
    assert not Client(server + "-nowhere").healthy()


def test_the_api_is_documented_in_openapi_and_docs(server):
    with urllib.request.urlopen(server + "/openapi.json", timeout=30) as response:
        spec = json.loads(response.read())
    classify = spec["paths"]["/v1/classify"]["post"]
    request = classify["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["texts"] and request["properties"]["texts"]["items"] == {"type": "string"}
    schemas = spec["components"]["schemas"]
    answer = classify["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/ClassifyResponse"}
    assert set(schemas["ClassifyResponse"]["properties"]) == {"model", "predictions"}
    assert set(schemas["Prediction"]["properties"]) == {"label", "label_name", "probabilities"}
    for status in ("400", "413"):  # raynlp's error shape, not FastAPI's 422
        assert classify["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"}
    assert "422" not in classify["responses"]
    with urllib.request.urlopen(server + "/docs", timeout=30) as response:
        assert response.status == 200 and b"openapi.json" in response.read()


def _scraped(port: int, app: str) -> dict[str, float]:
    """The `ray_raynlp_*` series of `app` on a node's metrics endpoint, summed over replicas: name{status} → value."""
    import re

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(ray_raynlp_\w+)\{(.*)\} (\S+)$", text, re.M):
        if f'application="{app}"' in labels:
            status = re.search(r'status="(\d+)"', labels)
            key = name + (f"{{{status.group(1)}}}" if status else "")
            values[key] = values.get(key, 0.0) + float(value)
    return values


def test_metrics_move_on_the_nodes_metrics_endpoint(server, expected):
    """What Prometheus would scrape: Ray's metrics agent on the node, fed by the replica."""
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    before = _scraped(port, "classifier")
    texts = list(expected)[:5]
    Client(server).classify(texts)
    for _ in range(2):
        assert post(server + "/v1/classify", b'{"texts": []}')[0] == 400
    wanted = {"ray_raynlp_texts_classified_total": 5, "ray_raynlp_requests_refused_total{400}": 2,
              "ray_raynlp_batch_size_count": 1, "ray_raynlp_model_seconds_count": 1,
              "ray_raynlp_queue_wait_seconds_count": 5}
    deadline = time.monotonic() + 90  # the agent gathers every few seconds
    while True:
        now = _scraped(port, "classifier")
        moved = {name: now.get(name, 0) - before.get(name, 0) for name in wanted}
        if all(moved[name] >= least for name, least in wanted.items()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert all(moved[name] >= least for name, least in wanted.items()), (moved, now)
    assert now["ray_raynlp_batch_size_sum"] >= 5 and now["ray_raynlp_model_seconds_sum"] > 0
    # The queue gauge: every text has had its call, so none waits; and it still says so when the replica has been
    # idle for longer than Ray's agent keeps a gauge nobody sets (two export intervals, 20 s): the health check
    # sets it again.
    assert now.get("ray_raynlp_queued_texts") == 0, now
    time.sleep(30)
    assert _scraped(port, "classifier").get("ray_raynlp_queued_texts") == 0


def test_concurrent_requests_of_mixed_sizes_and_bad_ones_get_their_own_answers(server, expected):
    rng = np.random.default_rng(0)
    texts = list(expected)[:-1]  # the review sentences
    requests = [list(rng.choice(texts, size=rng.integers(1, MAX_TEXTS + 1))) for _ in range(40)]
    bad = [b'{"texts": [""]}', b'{"texts": 5}', b"\xff"] * 4

    def good(batch):
        return batch, Client(server).classify(batch)

    with ThreadPoolExecutor(16) as pool:
        refused = [pool.submit(post, server + "/v1/classify", body) for body in bad]
        answered = [pool.submit(good, batch) for batch in requests]
        for future in answered:
            batch, predictions = future.result()
            got = np.array([p.probabilities for p in predictions])
            np.testing.assert_allclose(got, np.stack([expected[t] for t in batch]), atol=1e-5)
        assert all(f.result()[0] == 400 for f in refused)


BAD_REQUESTS = [
    (b"this is not json", 400, "not JSON"),
    (b'["a list"]', 400, "must be a JSON object"),
    (b'{"text": ["typo"]}', 400, '"texts" is missing'),
    (b'{"texts": "one string"}', 400, "must be a list of strings"),
    (b'{"texts": []}', 400, "is empty"),
    (b'{"texts": ["fine", 7]}', 400, "texts[1] is a number"),
    (b'{"texts": ["fine", null]}', 400, "texts[1] is null"),
    (b'{"texts": ["fine", "   "]}', 400, "texts[1] is empty"),
    (json.dumps({"texts": ["x"] * (MAX_TEXTS + 1)}).encode(), 413, f"at most {MAX_TEXTS}"),
    (json.dumps({"texts": ["y" * MAX_BODY_BYTES]}).encode(), 413, f"the limit is {MAX_BODY_BYTES}"),
    (b'{"texts": ["caf\xe9"]}', 400, "not valid UTF-8"),
    (b'{"texts": ["\\ud800 lone"]}', 400, "lone surrogate"),
    (b'{"texts": ' + b"[" * 15_000 + b"]" * 15_000 + b"}", 400, "nests JSON too deeply"),  # within the size limit
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_REQUESTS, ids=[m for _, _, m in BAD_REQUESTS])
def test_bad_request_gets_a_4xx_json_error_and_the_server_stays_up(server, expected, body, status, message):
    got_status, answer = post(server + "/v1/classify", body, {"Content-Type": "application/json"})
    assert got_status == status and message in answer["error"]["message"]
    text = next(iter(expected))
    np.testing.assert_allclose(Client(server).classify([text])[0].probabilities, expected[text], atol=1e-5)


def test_unknown_route_and_method_get_json_errors(server):
    with pytest.raises(ServerError, match="404"):
        Client(server)._call("GET", "/v2/classify")
    with pytest.raises(ServerError, match="405"):
        Client(server)._call("GET", "/v1/classify")


def test_cli_classify_and_export(server, keras_hub_classifier, tmp_path, capsys):
    from ray.serve.schema import ServeDeploySchema

    from raynlp.cli import main

    assert main(["classify", "--url", server, "a fine film", "dull"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("a fine film") and lines[1].endswith("dull")
    assert main(["classify", "--url", server, "--json", "x"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["probabilities"]) == 3
    assert main(["classify", "--url", server, ""]) == 2
    assert "texts[0] is empty" in capsys.readouterr().err

    folder, _ = keras_hub_classifier
    target = tmp_path / "serve_config.yaml"
    assert main(["serve", "--config", "configs/serve.yaml", "--preset", folder, "--port", "8555",
                 "--export", str(target)]) == 0
    document = ServeDeploySchema.model_validate(yaml.safe_load(target.read_text()))
    args = document.applications[0].args
    assert document.http_options.port == 8555 and args["preset"] == folder and "models" not in args


def test_start_joins_the_running_serve_on_its_port_and_says_so(serve_port, keras_hub_classifier, expected, caplog):
    folder, _ = keras_hub_classifier
    asked = free_port()  # not the running Serve's port
    config = tiny_config(folder, asked, "joined")
    with caplog.at_level(logging.INFO, logger="raynlp.serve.deploy"):
        url = start(config)
    try:
        assert url == f"http://127.0.0.1:{serve_port}/joined"
        client = Client(url)
        assert client.healthy()
        text = next(iter(expected))
        np.testing.assert_allclose(client.classify([text])[0].probabilities, expected[text], atol=1e-5)
        assert not Client(f"http://127.0.0.1:{asked}/joined").healthy()
        logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "raynlp.serve.deploy"]
        warnings = [message for level, message in logged if level == logging.WARNING]
        assert len(warnings) == 1 and "http.port" in warnings[0]
        assert f"127.0.0.1:{serve_port}" in warnings[0] and f"127.0.0.1:{asked}" in warnings[0]
        assert any(message.startswith("serving") and f" at {url} " in message for _, message in logged)
    finally:
        stop(config)


def test_serve_instance_starts_its_own_serve_only_where_none_runs(serve_port):
    """What the demo and `bench serve` run on: the session's Serve here; in a process of its own (its own Ray
    cluster, no Serve), a Serve started on a free port and shut down on leaving."""
    import subprocess
    import sys

    from raynlp.serve.deploy import running_http_address, serve_instance

    with serve_instance() as address:
        assert address == ("127.0.0.1", serve_port)
    assert running_http_address() == ("127.0.0.1", serve_port)  # not the caller's to shut down

    script = ("import ray\n"
              "from raynlp.serve.deploy import running_http_address, serve_instance\n"
              "ray.init(address='local', num_cpus=1, include_dashboard=False)\n"
              "assert running_http_address() is None\n"
              "with serve_instance() as address:\n"
              "    assert running_http_address() == address and address[0] == '127.0.0.1', address\n"
              "assert running_http_address() is None\n"
              "print('own serve', address[1])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "own serve" in done.stdout


def test_serve_refuses_what_is_not_a_classifier_before_starting(capsys):
    from raynlp.cli import main

    assert main(["serve", "--preset", "bert_tiny_en_uncased_scratch"]) == 2
    assert "holds no classifier" in capsys.readouterr().err


def test_a_token_guards_every_route_but_healthz(serve_port, keras_hub_classifier, expected, tmp_path, monkeypatch,
                                                 capsys):
    from ray import serve

    from raynlp.cli import main

    monkeypatch.setenv("RAYNLP_TEST_TOKEN", "s3cret-t0ken")  # where the app is built, as `raynlp serve` has it
    monkeypatch.delenv("RAYNLP_TOKEN", raising=False)
    folder, _ = keras_hub_classifier
    url = deploy_exported(tiny_config(folder, serve_port, "guarded", **{"auth.token_env": "RAYNLP_TEST_TOKEN"}),
                          tmp_path)
    try:
        # The exported file names the variable, never the token.
        assert "RAYNLP_TEST_TOKEN" in (tmp_path / "guarded.yaml").read_text()
        assert "s3cret-t0ken" not in (tmp_path / "guarded.yaml").read_text()
        text = next(iter(expected))
        body = json.dumps({"texts": [text]}).encode()
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-t0ken"}]:
            status, answer = post(url + "/v1/classify", body, headers)
            assert status == 401 and "needs a bearer token" in answer["error"]["message"], (headers, answer)
        for path in ["/v1/model", "/openapi.json", "/docs"]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path, timeout=30)
            assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == "Bearer", path
        assert Client(url).healthy()  # liveness stays open to probes
        status, answer = post(url + "/v1/classify", body, {"Authorization": "Bearer s3cret-t0ken"})
        assert status == 200
        np.testing.assert_allclose(answer["predictions"][0]["probabilities"], expected[text], atol=1e-5)
        assert Client(url, token="s3cret-t0ken").model()["name"]
        with pytest.raises(ServerError, match="401"):
            Client(url).classify([text])
        assert main(["classify", "--url", url, "--token", "s3cret-t0ken", "--json", text]) == 0
        assert json.loads(capsys.readouterr().out)[0]["label"] == int(np.argmax(expected[text]))
        monkeypatch.setenv("RAYNLP_TOKEN", "s3cret-t0ken")
        assert len(Client(url).classify([text, text])) == 2
    finally:
        serve.delete("guarded")


def test_a_token_variable_that_is_not_set_is_refused_before_serving(keras_hub_classifier, monkeypatch):
    monkeypatch.delenv("RAYNLP_TEST_TOKEN", raising=False)
    folder, _ = keras_hub_classifier
    config = load_serve_config(None, ["preset=" + folder, "auth.token_env=RAYNLP_TEST_TOKEN"])
    with pytest.raises(RaynlpError, match="^auth.token_env=RAYNLP_TEST_TOKEN, but RAYNLP_TEST_TOKEN is not set: "
                                          "export RAYNLP_TEST_TOKEN=TOKEN before serving$"):
        start(config)
    with pytest.raises(RaynlpError, match="config field auth.token_env: String should match pattern"):
        load_serve_config(None, ["preset=x", "auth.token_env=not a name"])


def test_serving_beyond_this_machine_without_a_token_warns(caplog):
    from raynlp.serve.deploy import warn_if_open

    with caplog.at_level(logging.WARNING, logger="raynlp.serve.deploy"):
        warn_if_open(load_serve_config(None, ["preset=x", "http.host=127.0.0.1"]))
        warn_if_open(load_serve_config(None, ["preset=x", "http.host=0.0.0.0", "auth.token_env=RAYNLP_TEST_TOKEN"]))
        assert caplog.messages == []
        warn_if_open(load_serve_config(None, ["preset=x", "http.host=0.0.0.0"]))
    assert caplog.messages == ["serving on 0.0.0.0 with no token: anyone who reaches this machine can call it (set "
                               "auth.token_env to require a bearer token)"]


def test_the_token_never_enters_the_deployment_only_its_digest(monkeypatch):
    """Serve stores a deployment's options (its dashboard and REST API show them): the replicas get the name of the
    token's variable and the token's SHA-256, never the token."""
    import hashlib

    from raynlp.serve.app import deployment_options

    monkeypatch.setenv("RAYNLP_TEST_TOKEN", "s3cret-t0ken")
    options = deployment_options(load_serve_config(None, ["preset=x", "auth.token_env=RAYNLP_TEST_TOKEN"]))
    assert "s3cret-t0ken" not in json.dumps(options)
    env = options["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env["RAYNLP_SERVE_TOKEN_ENV"] == "RAYNLP_TEST_TOKEN"
    assert env["RAYNLP_SERVE_TOKEN_SHA256"] == hashlib.sha256(b"s3cret-t0ken").hexdigest()


def test_config_errors_name_the_field():
    with pytest.raises(RaynlpError, match="config field autoscaling: .*min_replicas .* above max_replicas"):
        load_serve_config(None, ["preset=x", "autoscaling.min_replicas=3", "autoscaling.max_replicas=2"])
    with pytest.raises(RaynlpError, match="batch could never fill"):
        load_serve_config(None, ["preset=x", "replica.max_ongoing_requests=4"])
    with pytest.raises(RaynlpError, match="config field batching.max_batch: Extra inputs"):
        load_serve_config(None, ["preset=x", "batching.max_batch=4"])
    with pytest.raises(RaynlpError, match="give preset .* or models .*, not both or neither"):
        load_serve_config("configs/serve.yaml", ["preset=null"])


def test_replicas_that_share_a_gpu_keep_jax_from_taking_its_memory_at_start():
    from raynlp.serve.app import deployment_options

    def env(num_gpus: str) -> dict:
        config = load_serve_config(None, ["preset=x", f"replica.num_gpus={num_gpus}"])
        return deployment_options(config)["ray_actor_options"]["runtime_env"]["env_vars"]

    assert env("0.5")["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" and env("0.5")["KERAS_BACKEND"] == "jax"
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in env("1") and "XLA_PYTHON_CLIENT_PREALLOCATE" not in env("0")


def _ask_replicas(app: str, question) -> dict[str, object]:
    """Live replicas of `app`'s deployment: actor name → `question(replica)` answered in its process."""
    import ray

    answers = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and actor["name"].startswith(f"SERVE_REPLICA::{app}#"):
            try:
                handle = ray.get_actor(actor["name"], namespace="serve")
                answers[actor["name"]] = ray.get(handle.__ray_call__.remote(question), timeout=10)
            except Exception:  # dying or gone
                continue
    return answers


def _replica_pids(app: str) -> dict[str, int]:
    """Live replicas of `app`'s deployment: actor name → process id."""
    return _ask_replicas(app, lambda replica: os.getpid())


def test_a_replica_killed_under_load_is_replaced(serve_port, keras_hub_classifier, expected, tmp_path,
                                                  record_property, request):
    from ray import serve

    folder, _ = keras_hub_classifier
    config = tiny_config(folder, serve_port, "killtest", **{"autoscaling.min_replicas": 2,
                                                            "autoscaling.max_replicas": 2})
    url = deploy_exported(config, tmp_path)
    request.addfinalizer(lambda: serve.delete("killtest"))
    before = _replica_pids("killtest")
    assert len(before) == 2
    text = next(iter(expected))
    outcomes: list[tuple[float, float, bool]] = []  # (sent, answered or failed, answered correctly)
    stop = threading.Event()

    def load():
        client = Client(url, timeout=30)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                ok = np.allclose(client.classify([text])[0].probabilities, expected[text], atol=1e-5)
            except RaynlpError:
                ok = False
            outcomes.append((sent, time.monotonic(), ok))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        victim_name, victim_pid = next(iter(before.items()))
        os.kill(victim_pid, 9)
        killed = time.monotonic()
        deadline = killed + 120
        while time.monotonic() < deadline:
            now = _replica_pids("killtest")
            if len(now) == 2 and victim_pid not in now.values():
                break
            time.sleep(0.5)
        recovered = time.monotonic()
        assert len(now) == 2 and victim_pid not in now.values(), f"replica not replaced: {now}"
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join()

    # A request in flight on the victim when it died counts as "during".
    during = [ok for sent, done, ok in outcomes if done >= killed and sent < recovered]
    after = [ok for sent, done, ok in outcomes if sent >= recovered]
    failed = during.count(False)
    record_property("failed_while_replica_was_replaced", failed)
    print(f"replica replaced in {recovered - killed:.1f} s; {failed} of {len(during)} requests failed meanwhile; "
          f"{len(after)} requests after recovery")
    assert all(ok for sent, done, ok in outcomes if done < killed)
    # What the victim held, or was handed before Serve saw it die, the client retries on the replica left.
    assert failed == 0, f"{failed} of {len(during)} requests failed while the replica was replaced"
    assert len(during) > failed  # the other replica answered meanwhile
    assert after and all(after)


def _break_model(replica_actor) -> None:
    """Inside a replica's actor: its model fails from now on, as a model on a lost device does."""
    def lost(texts):
        raise RuntimeError("the device is lost")

    for model in replica_actor._replica_impl._user_callable_wrapper.user_callable.models.values():
        model.classifier.predict_proba = lost


def test_a_replica_whose_model_fails_its_health_probe_is_replaced(serve_port, keras_hub_classifier, expected,
                                                                  tmp_path, request):
    import ray
    from ray import serve

    folder, _ = keras_hub_classifier
    url = deploy_exported(tiny_config(folder, serve_port, "probed", **{"health.period_s": 1}), tmp_path)
    request.addfinalizer(lambda: serve.delete("probed"))
    with urllib.request.urlopen(url + "/readyz", timeout=30) as response:
        assert json.loads(response.read())["status"] == "ready"
    (victim, victim_pid), = _replica_pids("probed").items()
    ray.get(ray.get_actor(victim, namespace="serve").__ray_call__.remote(_break_model), timeout=30)
    # The broken replica's probe fails (its /readyz says why while it lives) and Serve replaces it.
    reasons, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        now = _replica_pids("probed")
        if now and victim_pid not in now.values():
            break
        try:
            urllib.request.urlopen(url + "/readyz", timeout=10).close()
        except urllib.error.HTTPError as e:
            reasons.append(json.loads(e.read()).get("reason"))
        except (urllib.error.URLError, TimeoutError, ConnectionError):  # the replica going, or gone
            pass
        time.sleep(0.5)
    assert now and victim_pid not in now.values(), f"the replica with a failing model was not replaced: {now}"
    assert "RuntimeError: the device is lost" in reasons
    text = next(iter(expected))
    deadline = time.monotonic() + 60
    while True:  # the new replica answers once Serve routes to it
        try:
            answer = Client(url, timeout=30).classify([text])
            break
        except RaynlpError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    np.testing.assert_allclose(answer[0].probabilities, expected[text], atol=1e-5)


def test_replicas_scale_up_under_a_burst_and_down_after_it(serve_port, keras_hub_classifier, expected, tmp_path,
                                                           request):
    """Serve's own autoscaler, with its delays cut to seconds: 8 clients keep about 8 requests in flight against a
    target of 2 a replica, so it adds the second replica; when they stop it removes it again."""
    from ray import serve

    folder, _ = keras_hub_classifier
    url = deploy_exported(tiny_config(folder, serve_port, "autoscaled", **{
        "autoscaling.min_replicas": 1, "autoscaling.max_replicas": 2, "autoscaling.target_ongoing_requests": 2,
        "autoscaling.upscale_delay_s": 2, "autoscaling.downscale_delay_s": 5}), tmp_path)
    request.addfinalizer(lambda: serve.delete("autoscaled"))
    assert len(_replica_pids("autoscaled")) == 1
    text = next(iter(expected))
    stop, failures = threading.Event(), []

    def client():
        while not stop.is_set():
            try:
                Client(url, timeout=30).classify([text])
            except RaynlpError as error:
                failures.append(str(error))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        started, counts = time.monotonic(), []
        while time.monotonic() - started < 120 and (not counts or counts[-1] < 2):
            time.sleep(1)
            counts.append(len(_replica_pids("autoscaled")))
        scaled_up = time.monotonic() - started
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert counts[-1] == 2, f"no second replica within 120 s of load: {counts}"
    stopped = time.monotonic()
    while time.monotonic() - stopped < 120 and len(_replica_pids("autoscaled")) > 1:
        time.sleep(1)
    scaled_down = time.monotonic() - stopped
    print(f"scaled up {scaled_up:.0f} s into the burst, down {scaled_down:.0f} s after it")
    assert len(_replica_pids("autoscaled")) == 1, "the second replica outlived the load by 120 s"
    assert not failures, failures[:3]


def test_several_models_in_one_app_answer_each_with_its_own(serve_port, keras_hub_classifier,
                                                            second_keras_hub_classifier, expected, tmp_path, request,
                                                            capsys):
    from ray import serve

    from raynlp.cli import main

    (first, _), (second, reference) = keras_hub_classifier, second_keras_hub_classifier
    texts = list(expected)[:12]
    expected_second = dict(zip(texts, softmax(np.asarray(reference.predict(texts, verbose=0)))))
    config = load_serve_config(None, values={
        "models": {"reviews": first, "products": second}, "name": "several", "route_prefix": "/several",
        "http.port": serve_port, "batching.max_batch_size": 8, "replica.num_cpus": 0.5, "autoscaling.max_replicas": 1})
    url = deploy_exported(config, tmp_path)
    request.addfinalizer(lambda: serve.delete("several"))
    client = Client(url)
    listed = client.models()
    assert listed["default"] == "reviews"
    assert [(m["name"], m["preset"], m["num_classes"]) for m in listed["models"]] == [
        ("reviews", first, 3), ("products", second, 2)]
    assert client.model()["name"] == "reviews"  # the single-model routes answer for the first

    # Requests for both models at once, each answered by its own (their texts never share a model call).
    def ask(i):
        model = ("reviews", "products")[i % 2]
        return model, texts[i % len(texts)], client.classify([texts[i % len(texts)]], model=model)[0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(32)))
    for model, text, prediction in answers:
        wanted = expected[text] if model == "reviews" else expected_second[text]
        np.testing.assert_allclose(prediction.probabilities, wanted, atol=1e-5, err_msg=model)
    np.testing.assert_allclose(client.classify(texts[:1])[0].probabilities, expected[texts[0]], atol=1e-5)

    status, answer = post(url + "/v1/models/nope/classify", json.dumps({"texts": ["x"]}).encode())
    assert status == 404 and answer["error"]["message"] == ("no model 'nope' here; models: reviews, products "
                                                            "(GET /v1/models)")
    assert main(["classify", "--url", url, "--model", "products", "--json", texts[0]]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["probabilities"]) == 2


def test_a_config_names_its_models_one_way():
    with pytest.raises(RaynlpError, match="give preset .* or models .*, not both or neither"):
        load_serve_config(None, ["preset=x", "models.a=y"])
    with pytest.raises(RaynlpError, match="give preset .* or models .*, not both or neither"):
        load_serve_config(None, [])
    with pytest.raises(RaynlpError, match="model name 'a b': use letters, digits"):
        load_serve_config(None, values={"models": {"a b": "y"}})
