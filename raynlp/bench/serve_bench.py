"""Online serving under load: the batched Serve deployment, the same with batching off, and the bare predict.

Closed-loop load on loopback only: at each concurrency level C, C client threads send one single-text request
each, wait for its answer, and send the next, for a fixed time. Three targets, the same model and texts:

- `serve_batched`: `raynlp serve` as configured (texts of concurrent requests share one model call);
- `serve_unbatched`: the same deployment with `batching.enabled: false` (one model call per request);
- `in_process`: `TextClassifier.predict_proba([text])` called by the client threads directly: the model's own
  speed with no HTTP, no Serve (calls run one at a time, as in one replica without batching).

Both deployments run side by side, and each level's time is cut into turns that the three targets take in
rotation (the bare model's batch sizes likewise): the machine's speed drifts over minutes, and turns spread the
drift over every target alike. Per level it reports throughput (answers per second) and p50/p95/p99 latency.
Serve's overhead is the p50 latency at concurrency 1 over the bare call's. One replica a deployment (the
machine has few cores: a second would share them; the idle one takes next to nothing), and the client threads
share the machine with the server, as they would not in production.
"""

import http.client
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from raynlp.bench._report import machine, write_report

logger = logging.getLogger(__name__)

PRESET = "minilm_l6_en_uncased"  # the backbone the shipped fine-tuning config trains, with a 2-class head
SEQUENCE_LENGTH = 64
LEVELS = (1, 4, 16, 32)
SECONDS = 8.0
WARM_UP_SECONDS = 1.0
CEILING_SECONDS = 3.0  # the bare model at each batch size
TURNS = 3  # a level's seconds are cut into this many turns a way, the ways alternating


def _classifier_folder(output_dir: Path, preset: str) -> str:
    """A classifier preset to serve: the backbone with a (random) 2-class head; speed does not depend on it."""
    import keras
    import keras_hub

    from raynlp.presets import resolve

    folder = output_dir / "serve_model" / preset
    if not (folder / "task.json").exists():
        keras.utils.set_random_seed(0)
        base = resolve(preset)
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
            base, sequence_length=SEQUENCE_LENGTH)
        keras_hub.models.BertTextClassifier.from_preset(base, num_classes=2, preprocessor=preprocessor) \
            .save_to_preset(str(folder))
    return str(folder)


def closed_loop(call, texts: list[str], concurrency: int, seconds: float) -> dict:
    """`concurrency` threads calling `call(text)` back to back for `seconds` (after a short warm-up): the raw
    latencies, errors and the CPU this process took meanwhile (`cpu_seconds`, over `wall_seconds`)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    cpu_start = time.process_time()
    start = time.perf_counter()
    measure_from, stop_at = start + WARM_UP_SECONDS, start + WARM_UP_SECONDS + seconds

    def client(i: int) -> None:
        session = call()  # one connection (or other per-client state) per thread
        n = i
        while (now := time.perf_counter()) < stop_at:
            try:
                session(texts[n % len(texts)])
                ok = True
            except Exception:
                ok = False
            done = time.perf_counter()
            if now >= measure_from:
                if ok:
                    latencies[i].append(done - now)
                else:
                    errors[i] += 1
            n += concurrency

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"started": start, "latencies": [x for per in latencies for x in per], "errors": sum(errors),
            "cpu_seconds": time.process_time() - cpu_start, "wall_seconds": time.perf_counter() - start}


def _level_figures(concurrency: int, turns: list[dict], seconds: float) -> dict:
    """One way's figures at one level, over its turns. `client_cpu`: the cores this process took meanwhile (CPU
    seconds a second): the load generator's own share of the machine, which the server did not have (for
    `in_process`, the model's calls too)."""
    flat = np.array([x for turn in turns for x in turn["latencies"]]) * 1000
    p50, p95, p99 = np.percentile(flat, [50, 95, 99]) if len(flat) else (float("nan"),) * 3
    cpu = sum(turn["cpu_seconds"] for turn in turns) / sum(turn["wall_seconds"] for turn in turns)
    return {"concurrency": concurrency, "requests": int(len(flat)),
            "errors": int(sum(turn["errors"] for turn in turns)), "throughput": round(len(flat) / seconds, 1),
            "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2),
            "client_cpu": round(cpu, 3), "turn_requests": [len(turn["latencies"]) for turn in turns]}


def _interleaved_levels(ways: dict, texts, levels, seconds) -> tuple[dict, list]:
    """Each level's `seconds` in TURNS turns a way, the ways alternating and each round starting one way later
    (a b c, b c a, c a b): the machine's speed drifts over minutes, and turns spread the drift over every way
    alike. Also returns the order it ran in, (way, level, started) a turn."""
    results: dict[str, list[dict]] = {way: [] for way in ways}
    names = list(ways)
    order = []
    for level in levels:
        turns: dict[str, list[dict]] = {way: [] for way in ways}
        for round_ in range(TURNS):
            for way in names[round_ % len(names):] + names[:round_ % len(names)]:
                turns[way].append(closed_loop(ways[way], texts, level, seconds / TURNS))
                order.append((way, level, turns[way][-1]["started"]))
        for way in ways:
            results[way].append(_level_figures(level, turns[way], seconds))
            logger.info("serve bench: %s %s", way, results[way][-1])
    return results, order


def _http_session(host: str, port: int, path: str):
    """A factory of per-thread callers that keep one HTTP connection open, as a load client would."""
    def make():
        connection = http.client.HTTPConnection(host, port, timeout=60)

        def classify(text: str) -> None:
            connection.request("POST", path, body=json.dumps({"texts": [text]}),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {body[:200]!r}")
        return classify
    return make


def _model_ceiling(classifier, texts) -> dict:
    """Texts/s of the bare model at batch 1 and at the largest batch, in turns like the load (1 32, 32 1, ...): the
    most batching can gain on this machine."""
    sizes = (1, classifier.max_batch_size)
    calls, spent = dict.fromkeys(sizes, 0), dict.fromkeys(sizes, 0.0)
    for round_ in range(TURNS):
        for size in sizes[::-1] if round_ % 2 else sizes:
            start = time.perf_counter()
            n = 0
            while n < 4 or time.perf_counter() - start < CEILING_SECONDS / TURNS:  # a few calls alone read too noisy
                first = ((calls[size] + n) * size) % (len(texts) - size + 1)  # a whole batch, even at the end
                classifier.predict_proba(texts[first:first + size])
                n += 1
            calls[size] += n
            spent[size] += time.perf_counter() - start
    speeds = {size: round(calls[size] * size / spent[size], 1) for size in sizes}
    return {"texts_per_second_by_batch_size": speeds,
            "gain_from_batching": round(speeds[classifier.max_batch_size] / speeds[1], 2)}


def _deploy(folder: str, batching: bool, port: int, num_gpus: float) -> str:
    """The deployment as `raynlp serve` runs it, batching on or off, as an app of its own with one replica that
    reserves half a CPU (scheduling only: it runs on whatever cores are free): its name."""
    from ray import serve

    from raynlp.serve import load_serve_config
    from raynlp.serve.app import build_app

    app = f"serve-bench-{'batched' if batching else 'unbatched'}"  # beside whatever other apps Serve runs
    config = load_serve_config(None, values={
        "preset": folder, "name": app, "route_prefix": f"/{app}", "http.port": port,
        "batching.enabled": batching, "autoscaling.min_replicas": 1, "autoscaling.max_replicas": 1,
        # Half a CPU each: the two deployments side by side reserve what one did (a joined cluster may have no more).
        "replica.num_cpus": 0.5, "replica.num_gpus": num_gpus})
    serve.run(build_app(config), name=app, route_prefix=f"/{app}")
    return app


def run_serve_bench(output_dir: Path, preset: str = PRESET, levels: tuple[int, ...] = LEVELS,
                    seconds: float = SECONDS, num_gpus: float = 0) -> Path:
    """`num_gpus`: what the two replicas take together, half each (the in-process way runs wherever this process's
    JAX does)."""
    from ray import serve

    from raynlp import datasets
    from raynlp._internal.cluster import ensure_ray
    from raynlp.inference import TextClassifier
    from raynlp.serve.deploy import serve_instance

    folder = _classifier_folder(output_dir, preset)
    texts = datasets.read_split("rotten_tomatoes", "test")["text"].to_pylist()
    logger.info("serve bench: %s at sequence length %d, concurrency %s, %.0f s per level in %d turns",
                preset, SEQUENCE_LENGTH, list(levels), seconds, TURNS)
    classifier = TextClassifier.load(folder)
    classifier.warm_up()

    ensure_ray()
    with serve_instance() as (_, port):  # the bench's apps join a Serve the cluster runs, else one of its own
        apps = {}
        try:
            for batching in (True, False):  # both deployed at once, so that they can take turns
                apps[batching] = _deploy(folder, batching, port, num_gpus / 2)
            results, order = _interleaved_levels({
                "in_process": lambda: lambda text: classifier.predict_proba([text]),
                "serve_batched": _http_session("127.0.0.1", port, f"/{apps[True]}/v1/classify"),
                "serve_unbatched": _http_session("127.0.0.1", port, f"/{apps[False]}/v1/classify")},
                texts, levels, seconds)
            ceiling = _model_ceiling(classifier, texts)
        finally:
            for app in apps.values():
                serve.delete(app)

    report = {
        "benchmark": "serve", "preset": preset, "sequence_length": SEQUENCE_LENGTH, "levels": list(levels),
        "seconds_per_level": seconds, "turns_per_level": TURNS, "texts_per_request": 1,
        "replicas_per_deployment": 1,
        "replica_gpus": num_gpus / 2, "machine": machine(),
        "results": results, **_summary(results, levels, ceiling["gain_from_batching"]), "bare_model": ceiling,
        "order": [{"way": way, "concurrency": level, "started_s": round(started - order[0][2], 3)}
                  for way, level, started in order],
        "note": "closed-loop load on 127.0.0.1; client threads, Serve's proxy and the replicas share this machine's "
                "cores (client_cpu: the cores the client process took). in_process calls the model directly (no "
                "HTTP, no Serve). Each level's seconds run in turns, the ways alternating (`order`), and the bare "
                "model's batch sizes likewise, so that the machine's drift reaches every way alike.",
    }
    path = write_report(output_dir, "serve", report, _plot)
    logger.info("serve bench: %s", {k: v for k, v in report.items()
                                    if k.startswith(("batched", "serve_overhead", "bare_model"))})
    return path


def _summary(results: dict, levels, bare_gain: float | None = None) -> dict:
    at = {way: {r["concurrency"]: r for r in rows} for way, rows in results.items()}
    top, one = max(levels), min(levels)
    gain = at["serve_batched"][top]["throughput"] / max(at["serve_unbatched"][top]["throughput"], 1e-9)
    return {
        f"batched_vs_unbatched_throughput_at_{top}": round(gain, 2),
        # What Serve's batching gains over what the bare model gains from its largest batch.
        f"batching_efficiency_at_{top}": round(gain / bare_gain, 2) if bare_gain else None,
        f"serve_overhead_ms_at_{one}": {
            way: round(at[way][one]["p50_ms"] - at["in_process"][one]["p50_ms"], 2)
            for way in ("serve_batched", "serve_unbatched")},
    }


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for way, rows in report["results"].items():
        throughput = [r["throughput"] for r in rows]
        for quantile, style in (("p50_ms", "-o"), ("p95_ms", ":x")):
            ax.plot(throughput, [r[quantile] for r in rows], style, label=f"{way.replace('_', ' ')} {quantile[:3]}")
        for r in rows:
            ax.annotate(f"c={r['concurrency']}", (r["throughput"], r["p50_ms"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("throughput (texts / s, one text per request)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"Serving {report['preset']} at sequence length {report['sequence_length']}, one replica a "
                 f"deployment ({report['machine']['cpus']} CPU cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
