"""The callbacks in one plain process: rank 0's scalar log over a constant learning rate, and early stopping's
rule."""

import numpy as np
import pytest

from raynlp.train._internal.callbacks import RealTokens, ScalarLog, TensorBoardFiles, stop_early


def test_scalar_log_writes_tensorboard_points_with_a_constant_learning_rate(tmp_path):
    """A constant rate is a variable that JAX's `fit` empties while it holds the training state: the log reads it
    before (a schedule, it calls at each point; tests/long_runs_test.py)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    tokens = RealTokens()
    batches = tokens.counted(({"padding_mask": np.ones((8, 4))}, np.zeros((8, 2))) for _ in range(12))
    log = ScalarLog([TensorBoardFiles(str(tmp_path))], every_steps=2, steps_per_epoch=6, accumulation=1,
                    global_batch=8, world_size=1, tokens=tokens)
    # The model takes the mask as its input: the generator stands in for the loop's (features, labels) batches.
    model.fit(((f["padding_mask"], y) for f, y in batches), steps_per_epoch=6, epochs=2, callbacks=[log], verbose=0,
              shuffle=False)
    points = {}
    for events in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                points.setdefault(value.tag, {})[event.step] = value.simple_value
    assert points["learning_rate"] == pytest.approx({s: 0.01 for s in (2, 4, 6, 8, 10, 12)})
    assert sorted(points["examples_per_second"]) == [4, 6, 8, 10, 12] and sorted(points["epoch/loss"]) == [6, 12]
    assert sorted(points["real_tokens_per_second"]) == [4, 6, 8, 10, 12]


def _as_tensorboard_shows(folder) -> dict:
    """The scalars by tag and step as TensorBoard shows them: a writer's `SessionLog.START` at step T (tensorboardX's
    `purge_step`) hides the points written before it at steps from T on."""
    import tensorflow as tf

    points = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):  # named by the second each was opened
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                points = {tag: {s: v for s, v in steps.items() if s < event.step} for tag, steps in points.items()}
            for value in event.summary.value:
                points.setdefault(value.tag, {})[event.step] = value.simple_value
    return points


def test_a_resumed_log_hides_the_steps_the_attempt_before_wrote_after_the_checkpoint(tmp_path):
    import time

    crashed = TensorBoardFiles(str(tmp_path))
    crashed.open()
    crashed.write({"loss": 1.0}, 5)
    crashed.write({"loss": 0.9}, 10)  # after the checkpoint at step 5: trained again by the next attempt
    crashed.write({"loss": 0.8}, 15)
    crashed.close()
    time.sleep(1.1)  # a file of its own
    resumed = TensorBoardFiles(str(tmp_path))
    resumed.open(first_step=5)
    resumed.write({"loss": 0.7}, 10)
    resumed.close()
    assert _as_tensorboard_shows(tmp_path) == {"loss": {5: 1.0, 10: pytest.approx(0.7)}}


@pytest.mark.parametrize("values, mode, patience, stops", [
    ([3, 2, 2, 2], "min", 2, True),  # a tie is no improvement: the best stays the first 2
    ([3, 2, 2], "min", 2, False),
    ([1, 2, 1, 1], "max", 2, True),
    ([1, 2, 3], "max", 1, False),
    ([3, 2, 1], "min", None, False),
])
def test_stop_early_counts_evaluations_since_the_best(values, mode, patience, stops):
    epochs = [{"epoch": i + 1, "val_loss": v} for i, v in enumerate(values)]
    assert stop_early(epochs, monitor="val_loss", mode=mode, patience=patience) == stops
