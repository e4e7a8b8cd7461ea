"""`raynlp bench serve` at a tiny size: every target answers under load and the report holds what README quotes."""

import json

import pytest

from raynlp.bench.serve_bench import WARM_UP_SECONDS, run_serve_bench

pytestmark = pytest.mark.slow  # a benchmark

# A level's seconds, in 3 turns a way: a turn of a second holds requests even when the machine stalls for a
# fraction of one beside the rest of the suite (turns of a third of a second once held none).
SECONDS = 3.0


def test_serve_bench_writes_figures_for_every_target(ray_cluster, serve_port, tmp_path):
    from raynlp.serve.deploy import running_http_address

    path = run_serve_bench(tmp_path, preset="bert_tiny_en_uncased_scratch", levels=(1, 4), seconds=SECONDS)
    assert running_http_address() == ("127.0.0.1", serve_port)  # the Serve it joined still runs
    report = json.loads(path.read_text())
    assert set(report["results"]) == {"in_process", "serve_batched", "serve_unbatched"}
    for rows in report["results"].values():
        assert [r["concurrency"] for r in rows] == [1, 4]
        assert all(r["errors"] == 0 and r["requests"] > 0 and r["p50_ms"] <= r["p99_ms"] for r in rows)
        # In process the model's own threads count too: up to every core.
        assert all(0 < r["client_cpu"] <= 1.1 * report["machine"]["cpus"] for r in rows)
    # The ways take turns within each level, each round starting one way later, so that the machine's drift
    # reaches them alike; each turn runs its share of the level's second after a warm-up.
    turns = report["turns_per_level"]
    assert turns == 3
    assert [(t["way"], t["concurrency"]) for t in report["order"]] == [
        (way, level) for level in (1, 4) for ways in (["in_process", "serve_batched", "serve_unbatched"],
                                                      ["serve_batched", "serve_unbatched", "in_process"],
                                                      ["serve_unbatched", "in_process", "serve_batched"])
        for way in ways]
    # A turn ends once its share has run out, so the next starts no sooner (less the report's rounding to 1 ms).
    assert all(b["started_s"] - a["started_s"] >= WARM_UP_SECONDS + SECONDS / turns - 1e-3
               for a, b in zip(report["order"], report["order"][1:]))
    for rows in report["results"].values():
        for r in rows:
            assert len(r["turn_requests"]) == turns and all(n > 0 for n in r["turn_requests"])
            assert sum(r["turn_requests"]) == r["requests"]
    gain = report["batched_vs_unbatched_throughput_at_4"]
    assert gain > 0
    assert report["batching_efficiency_at_4"] == pytest.approx(gain / report["bare_model"]["gain_from_batching"],
                                                               abs=0.01)
    assert set(report["serve_overhead_ms_at_1"]) == {"serve_batched", "serve_unbatched"}
    assert report["bare_model"]["texts_per_second_by_batch_size"]["1"] > 0
    assert (tmp_path / "serve.png").stat().st_size > 0
