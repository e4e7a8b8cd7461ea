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
