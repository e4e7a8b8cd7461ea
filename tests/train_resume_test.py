"""Fault tolerance through the trainer: a worker killed mid-epoch, and re-running a finished command."""

from pathlib import Path

from raynlp.train import load_config, train
from raynlp.train._internal.loop import KILL_HOOK

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_killed_worker_resumes_from_the_last_checkpoint_and_a_rerun_continues(ray_cluster, tmp_path):
    overrides = [f"run.output={tmp_path / 'run'}", "preset=bert_tiny_en_uncased_scratch", "data.max_train_rows=640",
                 "data.max_test_rows=64", "data.sequence_length=32", "optimizer.learning_rate=1e-3"]
    marker = tmp_path / "killed"
    # Rank 1 ends its own process halfway through the second epoch (epoch index 1).
    result = train(load_config(CONFIGS / "finetune.yaml", [*overrides, "train.epochs=3"]),
                   _loop_extra={KILL_HOOK: (1, 1, str(marker))})
    assert marker.exists(), "the test hook did not fire"
    steps = 640 // (16 * 2)
    # One entry per epoch, each epoch's step count exactly where an uninterrupted run would be: the restarted
    # group went on from epoch 1's checkpoint rather than starting over from step 0.
    assert [(m["epoch"], m["global_step"]) for m in result.metrics] == [(1, steps), (2, 2 * steps), (3, 3 * steps)]
    assert result.metrics[-1]["loss"] < result.metrics[0]["loss"]

    # The same command, into the same folder, with one more epoch: epochs 1-3 are carried over unchanged.
    again = train(load_config(CONFIGS / "finetune.yaml", [*overrides, "train.epochs=4"]))
    assert again.metrics[:3] == result.metrics
    assert (again.metrics[3]["epoch"], again.metrics[3]["global_step"]) == (4, 4 * steps)
