"""A step clock for the benchmarks: when each training step ended, in every way alike (a plain `fit` and raynlp's
workers), so that a bench reads speeds and the cost of single steps from the same record."""

import json
import time
from pathlib import Path

import numpy as np


def step_clock(path: str, weights: str | None = None):
    """A Keras callback (made inside each process that trains) that writes to `path`, from process 0, when each
    training step of each epoch ended and the epoch's running mean loss then, and with `weights` the trained
    weights at the end (reading a variable is local under `DataParallel`). Not async-safe on purpose: every way
    waits for each step's loss alike. Put it after the callbacks whose work a step's time should include."""
    import jax
    import keras

    class StepClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append({"started": time.perf_counter(), "step_ends": [], "running_loss": []})

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1]["step_ends"].append(time.perf_counter())
            self.epochs[-1]["running_loss"].append(float(logs["loss"]))

        def on_train_end(self, logs=None):
            if jax.process_index() == 0:
                Path(path).write_text(json.dumps(self.epochs))
                if weights is not None:
                    np.savez(weights, *[np.asarray(v.numpy()) for v in self.model.weights])

    return StepClock()
