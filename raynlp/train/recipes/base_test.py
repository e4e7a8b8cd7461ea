"""`compile_model` without Ray: gradient accumulation gives the weights of the larger batch."""

from pathlib import Path

import numpy as np
import pytest

from raynlp.train.config import load_config
from raynlp.train.recipes import Plan

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def trained_weights(optimizer: str, batch_size: int, accumulation: int) -> list[np.ndarray]:
    """A small dense classifier, the same initial weights every call, fitted once over the same 32 rows in order."""
    import keras

    from raynlp.train.recipes.base import compile_model

    config = load_config(CONFIGS / "finetune.yaml", [
        f"optimizer.name={optimizer}", "optimizer.learning_rate=0.05", "optimizer.schedule=constant",
        f"train.batch_size={batch_size}", f"train.gradient_accumulation_steps={accumulation}"])
    plan = Plan(preset_dir=None, tokenizer_dir="", num_classes=2, label_names=None, train_rows=32,
                steps_per_epoch=32 // batch_size, validation_steps=None, world_size=1)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    compile_model(model, config, plan)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 2, size=32)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    assert int(np.asarray(model.optimizer.iterations)) == 32 // (batch_size * accumulation)  # updates, not batches
    return [np.asarray(w) for w in model.get_weights()]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_accumulating_k_batches_of_b_gives_the_weights_of_batch_k_times_b(optimizer):
    start = trained_weights(optimizer, batch_size=32, accumulation=1)  # one step: far from the others
    larger = trained_weights(optimizer, batch_size=8, accumulation=1)
    accumulated = trained_weights(optimizer, batch_size=4, accumulation=2)
    smaller = trained_weights(optimizer, batch_size=4, accumulation=1)
    for a, b in zip(larger, accumulated):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # What the comparison could tell apart: training moved the weights, and batch 4 without accumulating lands
    # elsewhere (twice the updates).
    assert max(np.abs(a - b).max() for a, b in zip(larger, start)) > 1e-2
    assert max(np.abs(a - b).max() for a, b in zip(larger, smaller)) > 1e-3
