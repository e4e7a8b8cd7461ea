"""`raynlp bench train` at a tiny size: every way runs the same work and the report's ratios add up.

The model is BERT-Tiny (`--preset`), not the bench's BERT-Mini: the same machinery at a quarter of the steps' cost.
raynlp runs on 1 worker only here (each raynlp run costs tens of seconds of start-up on 2 cores; 2-worker training
is tested in tests/train_test.py and its parallel math in raynlp/train/_internal/distributed_test.py), and every way
in one round (the second round's order and a way's figures over two runs are tested without training).
With one worker raynlp trains on the same rows in the same order as the plain `fit`, from the same initial
weights: both must end at the same loss, or the bench would compare different work. The plain fit run as a Ray
task is the same function, so it must end there too.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from raynlp.bench.train_bench import _over_runs, _run_order, run_train_bench

TINY = "bert_tiny_en_uncased_scratch"


@pytest.fixture(scope="module")
def report(ray_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    path = run_train_bench(folder, rows=192, more_workers=(), checkpoint_every=2, rounds=1, preset=TINY)
    return json.loads(path.read_text()), folder


@pytest.mark.slow  # a benchmark
def test_every_way_trained_the_same_steps_and_reports_throughput(report):
    data, folder = report
    compared = ["keras_hub_fit_1_process", "keras_hub_fit_in_ray_task", "raynlp_1_worker"]
    between = ["keras_hub_fit_1_process_checkpointing", "keras_hub_fit_in_ray_train_worker",
               "raynlp_1_worker_checkpointing"]
    assert data["order"] == compared + between and data["note"].startswith("every way runs once (`order`)")
    assert list(data["results"]) == compared + between
    assert data["rows"] == 192 and data["global_batch"] == 32 and data["preset"] == TINY
    for way, figures in data["results"].items():
        runs = figures["runs"]
        assert len(runs) == 1, way
        assert figures["examples_per_second"] > 0 and all(len(r["epoch_seconds"]) == data["epochs"] for r in runs), way
        # Every run of a way trains the same steps, so ends at the same losses.
        assert all(r["epoch_losses"] == figures["epoch_losses"] for r in runs), way
        assert len(figures["epoch_losses"]) == data["epochs"] and all(loss > 0 for loss in figures["epoch_losses"])
        assert figures["examples_per_second"] == runs[0]["examples_per_second"], way
        # The median step, from the way's own step clock: 2 steady epochs of 6 steps, each epoch's last left out.
        clocks = [json.loads(Path(r["clock"]).read_text()) for r in runs]
        assert all([len(epoch["step_ends"]) for epoch in clock] == [6] * data["epochs"] for clock in clocks), way
        steps = np.concatenate([np.diff([e["started"], *e["step_ends"]])[:-1] for clock in clocks for e in clock[1:]])
        assert len(steps) == 10 * len(runs), way
        assert figures["median_step_seconds"] == pytest.approx(float(np.median(steps)), rel=1e-3), way
        assert figures["median_step_examples_per_second"] == pytest.approx(32 / figures["median_step_seconds"], rel=2e-3)
    plain, raynlp = data["results"]["keras_hub_fit_1_process"], data["results"]["raynlp_1_worker"]
    in_ray = data["results"]["keras_hub_fit_in_ray_task"]
    # The same training, step by step: the losses equal to four decimals, as the report rounds them (README says so).
    assert raynlp["epoch_losses"] == plain["epoch_losses"]
    assert in_ray["epoch_losses"] == plain["epoch_losses"]
    assert data["results"]["keras_hub_fit_in_ray_train_worker"]["epoch_losses"] == plain["epoch_losses"]
    per_step = data["median_step_ratio_to_keras_hub_fit_in_ray_task"]
    assert set(per_step) == {"keras_hub_fit_in_ray_train_worker", "raynlp_1_worker", "raynlp_1_worker_checkpointing"}
    for way, ratio in per_step.items():
        expected = data["results"][way]["median_step_examples_per_second"] / in_ray["median_step_examples_per_second"]
        assert ratio == pytest.approx(expected, abs=0.0006), way
    by_run = data["median_step_ratio_to_keras_hub_fit_in_ray_task_by_run"]
    assert len(by_run) == 1
    assert by_run == pytest.approx([r["median_step_examples_per_second"] / t["median_step_examples_per_second"]
                                      for r, t in zip(raynlp["runs"], in_ray["runs"])], abs=0.0006)
    in_train_worker = data["results"]["keras_hub_fit_in_ray_train_worker"]["median_step_examples_per_second"]
    for way, ratio in data["median_step_ratio_to_keras_hub_fit_in_ray_train_worker"].items():
        assert way.startswith("raynlp")
        assert ratio == pytest.approx(data["results"][way]["median_step_examples_per_second"] / in_train_worker, abs=6e-4)
    for baseline, ratios in [(plain, data["ratio_to_keras_hub_fit"]), (in_ray, data["ratio_to_keras_hub_fit_in_ray_task"])]:
        for way, ratio in ratios.items():
            expected = data["results"][way]["examples_per_second"] / baseline["examples_per_second"]
            assert ratio == pytest.approx(expected, abs=0.006), way
    assert set(data["ratio_to_keras_hub_fit_in_ray_task"]) == {"raynlp_1_worker", "raynlp_1_worker_checkpointing"}
    # Checkpoints every 2 of an epoch's 6 steps do not change the training; the steps timed as writing one are
    # steps 2 and 4 of the 2 steady epochs (an epoch's last is left out): a checkpoint's cost is the median of those
    # less the median of steps 1, 3 and 5, from the way's own clock. (Its sign is a timing on 2 shared cores, a
    # bench figure: a checkpoint step read 0.3 s faster than the others once beside the other half of the suite.)
    cost = data["checkpoint_cost"]
    assert set(cost) == {"keras_hub_fit_1_process", "raynlp_1_worker"}
    for way in cost:
        assert data["results"][f"{way}_checkpointing"]["epoch_losses"] == data["results"][way]["epoch_losses"]
        assert cost[way]["checkpoints_timed"] == 4 and cost[way]["examples_per_second_ratio"] > 0, way
        epochs = [e for r in data["results"][f"{way}_checkpointing"]["runs"]
                  for e in json.loads(Path(r["clock"]).read_text())[1:]]
        steps = [np.diff([e["started"], *e["step_ends"]])[:-1] for e in epochs]
        writing, other = [s[i] for s in steps for i in (1, 3)], [s[i] for s in steps for i in (0, 2, 4)]
        assert cost[way]["seconds_per_checkpoint"] == pytest.approx(np.median(writing) - np.median(other), abs=6e-4)
        assert cost[way]["median_step_seconds"] == pytest.approx(np.median(other), abs=6e-4), way
        assert cost[way]["median_step_seconds"] > 0, way
    assert (folder / "runs" / "keras_hub_fit_1_process_checkpointing" / "checkpoint.keras").exists()
    assert (folder / "train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "runs" / "raynlp_1_worker_run1" / "preset" / "task.json").exists()


def test_two_rounds_run_the_compared_ways_first_and_last_and_a_ways_figures_are_over_both_runs(tmp_path):
    """What the round the bench's test runs leaves out: the second round runs the compared ways last, in reverse,
    so that a drift of the machine's speed reaches them alike; a way's figures are then over its two runs."""
    assert _run_order(["a", "b", "c"], ["d", "e"], rounds=2) == ["a", "b", "c", "d", "e", "c", "b", "a"]
    assert _run_order(["a", "b", "c"], ["d", "e"], rounds=1) == ["a", "b", "c", "d", "e"]

    def run(name: str, examples_per_second: float, steady_step: float) -> dict:
        # A step clock of 3 epochs of 3 steps: the first epoch (compiling) slow, each epoch's last step slow.
        epochs = [[9.0, 9.0, 9.0], [steady_step, steady_step, 7.0], [steady_step, steady_step, 7.0]]
        clock = tmp_path / f"{name}.json"
        clock.write_text(json.dumps([{"started": 0.0, "step_ends": np.cumsum(e).tolist()} for e in epochs]))
        return {"examples_per_second": examples_per_second, "epoch_losses": [0.7, 0.6, 0.5], "clock": str(clock)}

    runs = [run("first", 40.0, 0.5), run("second", 60.0, 1.0)]
    figures = _over_runs(runs)
    # Both runs train the same examples: examples/s over both is the harmonic mean (not 50, the plain mean).
    assert figures["examples_per_second"] == 48.0
    # The median of both runs' steady steps together (0.5 four times, 1.0 four times), not of either run's.
    assert figures["median_step_seconds"] == 0.75 and figures["median_step_examples_per_second"] == 42.67
    assert figures["epoch_losses"] == [0.7, 0.6, 0.5] and figures["runs"] == runs


@pytest.mark.slow  # a benchmark
def test_across_nodes_places_the_workers_as_named_and_trains_the_same_steps(tmp_path):
    """`--nodes 2` on clusters of raylet nodes of its own, so in a process of its own (this one has joined the
    session's cluster). The same work in every layout: 1 worker matches the plain fit, and 2 workers train the same
    steps whether they share a node or not; `nodes` counts where they ran."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "raynlp.cli", "bench", "train", "--nodes", "2", "--rows", "96",
                           "--preset", TINY, "--output", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().endswith(f"benchmark results in {tmp_path / 'train_nodes.json'}")
    data = json.loads((tmp_path / "train_nodes.json").read_text())
    results = data["results"]
    assert data["preset"] == TINY
    assert list(results) == ["keras_hub_fit_1_process", "raynlp_1_worker", "raynlp_2_workers_1_node",
                             "raynlp_2_workers_2_nodes"]
    # Each way's figures as in `bench train`'s report: over its runs, here one each.
    assert [len(r["runs"]) for r in results.values()] == [1] * 4
    assert [r["runs"][0].get("nodes") for r in results.values()] == [None, 1, 1, 2]
    assert results["raynlp_1_worker"]["epoch_losses"] == results["keras_hub_fit_1_process"]["epoch_losses"]
    assert results["raynlp_2_workers_2_nodes"]["epoch_losses"] == results["raynlp_2_workers_1_node"]["epoch_losses"]
    crossing = results["raynlp_2_workers_2_nodes"]["examples_per_second"] / results[
        "raynlp_2_workers_1_node"]["examples_per_second"]
    assert data["crossing_nodes"] == pytest.approx(crossing, abs=0.0006)
    assert (tmp_path / "train_nodes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_too_few_rows_for_a_timed_step_are_refused_before_any_training():
    from raynlp.errors import RaynlpError

    with pytest.raises(RaynlpError, match="at least 64"):
        run_train_bench(Path("unused"), rows=63)
    with pytest.raises(RaynlpError, match="in 1 or 2 rounds, not 3"):
        run_train_bench(Path("unused"), rounds=3)


@pytest.mark.parametrize("name", ["tokenize", "pretrain", "gpu"])
def test_preset_is_refused_by_the_benches_that_fix_their_model(name):
    from raynlp import bench
    from raynlp.errors import RaynlpError

    with pytest.raises(RaynlpError, match="^--preset is for raynlp bench train and serve only$"):
        bench.run(name, output_dir="unused", preset=TINY)


@pytest.mark.slow  # a process each
@pytest.mark.parametrize("flags", [["bench", "serve", "--nodes", "2"], ["bench", "train", "--nodes", "1"]])
def test_nodes_is_refused_outside_the_train_bench_and_below_two(flags):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "raynlp.cli", *flags], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == ("raynlp: error: --nodes is for raynlp bench train only, and "
                                                    "counts 2 nodes or more")
