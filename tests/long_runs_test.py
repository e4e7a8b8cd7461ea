"""Long runs on a real local Ray cluster: checkpoints within an epoch, and a run that loses a worker (or its whole
process) there resumes at the batch after the checkpoint and ends exactly as the run that went straight through.

One scenario, `LONG_RUN`: masked-LM pretraining of BERT-Tiny on 2 workers, rows shuffled every epoch, masks drawn
per batch (both depend on where the run stands), a checkpoint every 3 optimizer steps, 8 steps an epoch. It also
exports the best epoch and stops early, by a monitor that is best at the first epoch (`val_loss`, mode max:
training lowers it), so that the best is not the last and the run stops before its last epoch.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from raynlp.train import load_config, train

pytestmark = pytest.mark.slow  # Ray Train runs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEPS, EVERY, KILL_AT = 8, 3, 11  # the kill comes 2 steps after the checkpoint at step 9 (epoch 2's first)
LONG_RUN = ["data.max_train_rows=400", "data.max_test_rows=64", "data.sequence_length=32", "train.batch_size=8",
            f"train.steps_per_epoch={STEPS}", "train.epochs=3", f"train.checkpoint_every_steps={EVERY}",
            "train.log_every_steps=4", "train.export=best", "train.monitor=val_loss", "train.monitor_mode=max",
            "train.early_stopping_patience=1", "scaling.num_workers=2"]


def long_run(out: Path, shard_cache: str, *overrides: str):
    return load_config(CONFIGS / "pretrain_shakespeare.yaml",
                       [f"run.output={out}", *LONG_RUN, f"data.shard_cache={shard_cache}", *overrides])


def watchers(folder: Path, *, kill: bool):
    """The test's callbacks for every worker: each process notes the global step it trains first (and whether
    TensorFlow is in it: raynlp keeps it out of its workers, keras-hub does without); with `kill`,
    rank 1 ends its process at step KILL_AT, once (a marker file says it did), a few seconds after the step
    before, so that Ray Train has committed the checkpoint at step 9. Defined here, so workers get them by value."""
    import keras

    class FirstStep(keras.callbacks.Callback):
        noted = False

        def on_train_batch_begin(self, batch, logs=None):
            import ray.train

            if not self.noted:  # once a process: a run resumed within an epoch calls `fit` twice
                import sys

                FirstStep.noted = True
                try:  # a split is Ray Train's to give only when it is streamed through Ray Data
                    ray.train.get_dataset_shard("train")
                    fed = "ray-data"
                except (KeyError, AttributeError):  # no such split; no dataset manager at all
                    fed = "parquet"
                with open(folder / "first_steps.txt", "a") as f:
                    f.write(f"{ray.train.get_context().get_world_rank()} "
                            f"{int(np.asarray(self.model.optimizer.iterations)) + 1} "
                            f"{'tensorflow' if sys.modules.get('tensorflow') else '-'} {fed}\n")

    class KillAtStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            import os
            import time

            import ray.train

            marker = folder / "killed"
            step = int(np.asarray(self.model.optimizer.iterations))
            if ray.train.get_context().get_world_rank() == 1 and step == KILL_AT - 1 and not marker.exists():
                time.sleep(5)
            if ray.train.get_context().get_world_rank() == 1 and step == KILL_AT and not marker.exists():
                marker.touch()
                os._exit(1)

    return [FirstStep, *([KillAtStep] if kill else [])]


def first_steps(folder: Path, shard_cache: str) -> list[tuple[int, int]]:
    """(rank, first step) of every training process; each of them ran without TensorFlow, and read its rows
    itself from the Parquet shards when they are kept in memory (no Ray Data split to coordinate), else from Ray
    Data."""
    lines = [line.split() for line in (folder / "first_steps.txt").read_text().splitlines()]
    assert {tensorflow for _, _, tensorflow, _ in lines} == {"-"}, lines
    assert {fed for *_, fed in lines} == {"parquet" if shard_cache == "memory" else "ray-data"}, lines
    return sorted((int(rank), int(step)) for rank, step, *_ in lines)


def final_state(result) -> dict[str, np.ndarray]:
    """Every model and optimizer variable of the run's last checkpoint."""
    state = {}
    for kind in ("model", "optimizer"):
        with np.load(Path(result.checkpoint) / f"{kind}_variables.npz") as saved:
            state.update({f"{kind}/{name}": saved[name] for name in saved.files})
    return state


def actor_classes(ray) -> dict[str, str]:
    """Every actor the cluster has made (dead ones too), id to class name (from Ray's GCS: this cluster has no
    dashboard to ask)."""
    return {actor_id: actor["ActorClassName"] for actor_id, actor in ray._private.state.actors().items()}


@pytest.fixture(scope="module")
def straight(ray_cluster, tmp_path_factory):
    """The reference runs, one a shard mode: nothing killed. Also notes the actors each run made."""
    runs = {}
    for mode in ("memory", "stream"):
        folder = tmp_path_factory.mktemp(f"straight_{mode}")
        tracking = [f"tracking.mlflow_uri=file://{folder / 'mlruns'}"] if mode == "memory" else []
        before = actor_classes(ray_cluster)
        runs[mode] = train(long_run(folder / "run", mode, *tracking), callbacks=watchers(folder, kill=False)), folder
        (folder / "actors.json").write_text(json.dumps(sorted(
            name for actor_id, name in actor_classes(ray_cluster).items() if actor_id not in before)))
    return runs


def test_a_run_on_a_cluster_it_started_makes_only_the_ray_train_actors_it_uses(straight):
    """The session's cluster was started by this process: a run leaves out Ray Train's placement-group cleaner and
    preemption watcher (the cluster ends with the process, nobody drains its node), and its dataset manager when no
    split streams through Ray Data (the workers read the shards kept in memory themselves). On a cluster a run
    joins, the first two are kept: tests/multi_node_test.py."""
    made = {mode: json.loads((folder / "actors.json").read_text()) for mode, (_, folder) in straight.items()}
    assert made["memory"].count("RayTrainWorker") == 2 and made["memory"].count("TrainController") == 1, made
    assert {"PlacementGroupCleaner", "PreemptionWatcher", "DatasetManager"}.isdisjoint(made["memory"]), made
    # Streamed: Ray Data's split for each worker (the manager, a coordinator a split), nothing else of Ray Train's.
    assert made["stream"].count("DatasetManager") == 1 and "SplitCoordinator" in made["stream"], made
    assert {"PlacementGroupCleaner", "PreemptionWatcher"}.isdisjoint(made["stream"]), made


def test_a_worker_killed_within_an_epoch_resumes_at_the_next_batch_and_ends_as_the_straight_run(straight, tmp_path):
    """Shards kept in memory; Ray Train restarts the group (run.max_failures=2). The streamed shard's kill is
    the next test's, where the command run again restarts it."""
    reference, reference_folder = straight["memory"]
    assert first_steps(reference_folder, "memory") == [(0, 1), (1, 1)]
    assert first_steps(straight["stream"][1], "stream") == [(0, 1), (1, 1)]
    result = train(long_run(tmp_path / "run", "memory"), callbacks=watchers(tmp_path, kill=True))
    assert (tmp_path / "killed").exists(), "the test hook did not fire"
    # The restarted group's first step is the one after the checkpoint at step 9 (epoch 2's first batch), not
    # epoch 2's first (step 9) nor the run's (step 1).
    assert first_steps(tmp_path, "memory") == [(0, 1), (0, 10), (1, 1), (1, 10)]
    assert [(m["epoch"], m["global_step"]) for m in result.metrics] == [(1, STEPS), (2, 2 * STEPS)]
    # The same rows in the same order with the same masks and dropout: the same weights and optimizer state,
    # bit for bit (the CPU arithmetic is deterministic, and the resumed steps run the same computation).
    resumed, expected = final_state(result), final_state(reference)
    assert resumed.keys() == expected.keys()
    differ = [name for name in expected if not np.array_equal(resumed[name], expected[name])]
    assert not differ, differ
    # Each epoch's running loss too: the resumed epoch's covers its batches before the checkpoint.
    assert [(m["loss"], m["val_loss"]) for m in result.metrics] == [(m["loss"], m["val_loss"]) for m in reference.metrics]


def test_a_run_whose_process_ended_within_an_epoch_resumes_there_when_run_again(straight, tmp_path):
    """A streamed shard (read from storage every epoch), checkpoints by the clock (every 0.03 s, read every 5
    steps: at steps 5 and 10), rank 1's process ended at step 11, no restarts allowed (run.max_failures=0): the
    run fails; the same command again resumes at step 11, after its last checkpoint, and ends as the straight
    run (checkpoints do not change the training)."""
    config = long_run(tmp_path / "run", "stream", "run.max_failures=0", "train.checkpoint_every_steps=null",
                      "train.checkpoint_every_minutes=0.0005", "train.log_every_steps=5")
    with pytest.raises(Exception) as failure:  # whatever Ray Train raises for a failed worker
        train(config, callbacks=watchers(tmp_path, kill=True))
    assert (tmp_path / "killed").exists(), f"the run failed before the test hook fired: {failure.value!r}"
    result = train(config, callbacks=watchers(tmp_path, kill=False))
    assert first_steps(tmp_path, "stream") == [(0, 1), (0, 11), (1, 1), (1, 11)]
    reference, _ = straight["stream"]
    resumed, expected = final_state(result), final_state(reference)
    assert resumed.keys() == expected.keys()
    assert all(np.array_equal(resumed[name], expected[name]) for name in expected)
    assert [(m["loss"], m["val_loss"]) for m in result.metrics] == [(m["loss"], m["val_loss"]) for m in reference.metrics]


def test_the_best_epoch_is_exported_and_the_run_stops_early(straight):
    """val_loss in mode max is best at epoch 1; patience 1 stops the run after epoch 2 of 3. The preset holds
    epoch 1's weights (the checkpoint ranked best), not the last; checkpoints within epochs never rank."""
    import keras_hub

    result, _ = straight["memory"]
    losses = [m["val_loss"] for m in result.metrics]
    assert len(losses) == 2 and losses[1] < losses[0]  # stopped before epoch 3
    assert result.exported_epoch == 1
    exported = keras_hub.models.BertBackbone.from_preset(str(result.preset)).get_weights()
    checkpoints = {}
    for metadata in Path(result.output, "ray_train").glob("checkpoint_*/metadata.json"):
        facts = json.loads(metadata.read_text())
        checkpoints[(facts["epoch"], facts["epoch_step"])] = metadata.parent
    # Kept: the best (epoch 1's end) and the latest (epoch 2's end); the ones within epochs were let go.
    assert sorted(checkpoints) == [(1, 0), (2, 0)]

    def backbone_weights(folder):
        return keras_hub.models.BertBackbone.from_preset(str(folder / "preset")).get_weights()

    for epoch, equal in ((1, True), (2, False)):
        same = all(np.array_equal(a, b) for a, b in zip(exported, backbone_weights(checkpoints[(epoch, 0)])))
        assert same == equal, epoch


def test_tensorboard_holds_the_scalars_at_the_logged_steps(straight):
    import tensorflow as tf

    result, _ = straight["memory"]
    points: dict[str, dict[int, float]] = {}
    for events in Path(result.output, "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                points.setdefault(value.tag, {})[event.step] = value.simple_value
    logged = [4, 8, 12, 16]  # train.log_every_steps=4 over 2 epochs of 8 steps
    assert sorted(points["loss"]) == sorted(points["learning_rate"]) == logged
    assert sorted(points["examples_per_second"]) == sorted(points["real_tokens_per_second"]) == logged[1:]
    assert all(v > 0 for v in points["real_tokens_per_second"].values())
    # The cosine schedule's decay after its warm-up (the first 2 of 24 steps), and each epoch's validation.
    rates = [points["learning_rate"][s] for s in logged]
    assert 1e-3 >= rates[0] > rates[1] > rates[2] > rates[3] > 0
    assert points["epoch/val_loss"] == pytest.approx({STEPS: result.metrics[0]["val_loss"],
                                                       2 * STEPS: result.metrics[1]["val_loss"]})


def test_mlflow_holds_the_config_the_metrics_at_the_logged_steps_and_the_preset(straight):
    from mlflow.tracking import MlflowClient

    result, folder = straight["memory"]
    client = MlflowClient(f"file://{folder / 'mlruns'}")
    run = client.get_run(json.loads(Path(result.output, "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.batch_size"] == "8" and run.data.params["task"] == "pretrain"
    assert run.data.tags["raynlp.preset"] == str(result.preset)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [4, 8, 12, 16]
    validated = client.get_metric_history(run.info.run_id, "epoch/val_loss")
    assert [(m.step, m.value) for m in validated] == [(STEPS * e, pytest.approx(m["val_loss"]))
                                                      for e, m in enumerate(result.metrics, 1)]
