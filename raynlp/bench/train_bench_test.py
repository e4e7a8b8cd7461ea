"""`raynlp bench train` at a tiny size: every way runs the same work and the report's ratios add up.

Only the 2-worker raynlp way runs here (each raynlp run costs tens of seconds of start-up on 2 cores); the
1-worker way is the same code with `scaling.num_workers=1`.
"""

import json

import pytest

from raynlp.bench.train_bench import run_train_bench


@pytest.fixture(scope="module")
def report(ray_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    path = run_train_bench(folder, rows=192, workers=(2,))
    return json.loads(path.read_text()), folder


def test_every_way_trained_the_same_steps_and_reports_throughput(report):
    data, folder = report
    assert list(data["results"]) == ["keras_hub_fit_1_process", "raynlp_2_workers"]
    assert data["rows"] == 192 and data["global_batch"] == 32
    for way, figures in data["results"].items():
        assert figures["examples_per_second"] > 0 and len(figures["epoch_seconds"]) == data["epochs"], way
        assert figures["final_loss"] > 0
    base = data["results"]["keras_hub_fit_1_process"]["examples_per_second"]
    for way, ratio in data["ratio_to_keras_hub_fit"].items():
        assert ratio == pytest.approx(data["results"][way]["examples_per_second"] / base, abs=0.006)
    assert (folder / "train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "runs" / "raynlp_2_workers" / "preset" / "task.json").exists()
