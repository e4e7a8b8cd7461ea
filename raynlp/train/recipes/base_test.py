"""`compile_model` without Ray: gradient accumulation gives the weights of the larger batch; float16 trains."""

from pathlib import Path

import numpy as np
import pytest

from raynlp.train.config import load_config
from raynlp.train.recipes import Plan

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def trained_weights(optimizer: str, batch_size: int, accumulation: int, precision: str = "float32") -> list[np.ndarray]:
    """A small dense classifier, the same initial weights every call, fitted once over the same 32 rows in order
    (under the global dtype policy the caller set)."""
    import keras

    from raynlp.train.recipes.base import compile_model

    config = load_config(CONFIGS / "finetune.yaml", [
        f"optimizer.name={optimizer}", "optimizer.learning_rate=0.05", "optimizer.schedule=constant",
        f"train.batch_size={batch_size}", f"train.gradient_accumulation_steps={accumulation}",
        f"train.precision={precision}"])
    plan = Plan(preset_dir=None, tokenizer_dir="", num_classes=2, label_names=None, train_rows=32,
                steps_per_epoch=32 // batch_size, validation_steps=None, world_size=1)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    compile_model(model, config, plan)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 2, size=32)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    assert int(np.asarray(model.optimizer.iterations)) == 32 // (batch_size * accumulation)  # updates, not batches
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "float16")
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


@pytest.mark.parametrize("accumulation", [1, 2])
def test_float16_trains_with_a_loss_scale_and_keeps_float32_weights(accumulation):
    """`train.precision: float16` (the loop sets Keras' `mixed_float16` policy before building the model): Keras
    scales the loss so that small gradients survive half precision; the weights stay float32 and land near the
    float32 run's."""
    import keras

    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        half = trained_weights("adamw", batch_size=4, accumulation=accumulation, precision="float16")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    full = trained_weights("adamw", batch_size=4, accumulation=accumulation)
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in half)
    for a, b in zip(full, half):
        np.testing.assert_allclose(a, b, atol=2e-2)
    assert max(np.abs(a - b).max() for a, b in zip(full, half)) > 0  # it did compute in half precision
