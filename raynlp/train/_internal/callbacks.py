"""The Keras callbacks of raynlp's training loop. Imported inside the Ray Train workers only: the driver never
imports Keras.

- `History` keeps every epoch's metrics (carried over a resume through the checkpoint) and logs progress;
- `KillInEpoch` ends a worker's process mid-epoch, for fault-tolerance tests (they pass it to `train(callbacks=)`).
"""

from __future__ import annotations

import json
import os
import sys
import time

import keras


class History(keras.callbacks.Callback):
    """Every epoch's metrics, and progress lines from rank 0.

    About ten times an epoch it also notes the metrics so far (Keras' running means over the epoch) at that
    global step: an epoch's entry carries them as `progress`, so that even a one-epoch run has a curve.
    `test`, where a test split stands apart from validation, evaluates it: after the last epoch, every rank
    together, its metrics kept in that epoch's entry as `test_*` (so in its checkpoint and `metrics.json`).
    """

    # Its batch-end hook only reads the logs: Keras may run it on a helper thread, so that the training loop
    # dispatches the next step without waiting for this one's metrics (a callback that is not async-safe makes
    # every step wait). Keras waits for the pending hooks before each epoch's end.
    async_safe = True

    def __init__(self, *, is_chief: bool, previous: list[dict], global_batch: int, steps: int, test=None):
        super().__init__()
        self.is_chief, self.global_batch, self.steps, self.test = is_chief, global_batch, steps, test
        self.epochs = [dict(e) for e in previous]

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        self.epoch = epoch
        self.progress = []

    def on_train_batch_end(self, batch, logs=None):
        done, steps = batch + 1, self.steps
        if done % max(steps // 10, 1) or done == steps:
            return
        self.progress.append({"global_step": self.epoch * steps + done,
                              **{k: round(float(v), 5) for k, v in (logs or {}).items()}})
        if not self.is_chief:
            return
        rate = done * self.global_batch / (time.perf_counter() - self.started)
        say(f"[raynlp] epoch {self.epoch + 1}/{self.params.get('epochs')} step {done}/{steps}: "
            f"loss {float((logs or {}).get('loss', float('nan'))):.4g}, {rate:.1f} examples/s, "
            f"epoch ends in ~{(steps - done) * self.global_batch / rate:.0f} s")

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        last = epoch + 1 == self.params.get("epochs")
        tested = self.test() if self.test is not None and last else {}
        entry = {"epoch": epoch + 1, "global_step": int(self.model.optimizer.iterations.numpy()),
                 "seconds": round(seconds, 2), "examples_per_second": round(self.steps * self.global_batch / seconds, 1),
                 **{k: float(v) for k, v in (logs or {}).items()},
                 **{f"test_{k}": float(v) for k, v in tested.items()}, "progress": self.progress}
        self.epochs = [e for e in self.epochs if e["epoch"] < entry["epoch"]] + [entry]
        if self.is_chief:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("epoch", "progress"))
            say(f"[raynlp] epoch {entry['epoch']}/{self.params.get('epochs')}: {shown}")

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.epochs, f, indent=2)


def say(line: str) -> None:
    """One line of progress to the worker's output, which Ray streams to the driver.

    Written to `sys.__stdout__`: Ray Train patches `print` on its workers to log each line *and*, where Ray has
    wrapped `sys.stdout` (it does), to print it as well, so a plain `print` reaches the driver twice.
    """
    print(line, file=sys.__stdout__, flush=True)


class KillInEpoch(keras.callbacks.Callback):
    """Ends the process of the worker of world rank `rank` halfway through epoch `epoch` (0-based), once: the
    file `marker` records that it did, so the restarted worker trains on.

    It waits until a few seconds into the epoch: Ray Train commits the previous epoch's checkpoint only once its
    controller has polled every rank (every 2 s), and a crash before that would lose the checkpoint.
    """

    SETTLE_SECONDS = 5.0

    def __init__(self, *, rank: int, epoch: int, marker: str):
        super().__init__()
        self.rank, self.epoch, self.marker = rank, epoch, marker

    def on_epoch_begin(self, epoch, logs=None):
        import ray.train

        self.current, self.started = epoch, time.monotonic()
        self.mine = ray.train.get_context().get_world_rank() == self.rank

    def on_train_batch_end(self, batch, logs=None):
        halfway = batch >= self.params.get("steps", 2) // 2
        if self.mine and self.current == self.epoch and halfway and not os.path.exists(self.marker):
            time.sleep(max(0.0, self.SETTLE_SECONDS - (time.monotonic() - self.started)))
            open(self.marker, "w").close()
            os._exit(1)
