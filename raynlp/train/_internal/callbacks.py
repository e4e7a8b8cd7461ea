"""The Keras callbacks of raynlp's training loop. Imported inside the Ray Train workers only: the driver never
imports Keras.

- `EpochCallback` knows where `fit` is in raynlp's epochs (the base of those that count steps);
- `Evaluation` validates after every epoch;
- `History` keeps every epoch's metrics (carried over a resume through the checkpoint) and logs progress;
- `EarlyStopping` ends the run once `train.monitor` stops improving;
- `ScalarLog` writes the scalars of rank 0 as TensorBoard event files and to MLflow;
"""

from __future__ import annotations

import json
import sys
import time

import keras
import numpy as np


class EpochCallback(keras.callbacks.Callback):
    """A callback that knows where `fit` is: `epoch`, `trained(batch)` (the batches of the epoch trained once
    `batch` is) and `optimizer_step(trained)`, under gradient accumulation (`accumulation` batches a step).

    A `fit` over the rest of an epoch resumed within it has fewer steps than `steps_per_epoch`: the batches
    before, trained by the run before, are `skipped`.
    """

    def __init__(self, *, steps_per_epoch: int, accumulation: int = 1):
        super().__init__()
        self.steps_per_epoch, self.accumulation = steps_per_epoch, accumulation

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.skipped = self.steps_per_epoch - self.params.get("steps", self.steps_per_epoch)

    def trained(self, batch: int) -> int:
        return self.skipped + batch + 1

    def optimizer_step(self, trained: int, *, epoch: int | None = None) -> int:
        return ((self.epoch if epoch is None else epoch) * self.steps_per_epoch + trained) // self.accumulation


class History(EpochCallback):
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

    def __init__(self, *, is_chief: bool, previous: list[dict], global_batch: int, steps_per_epoch: int,
                 accumulation: int = 1, test=None):
        super().__init__(steps_per_epoch=steps_per_epoch, accumulation=accumulation)
        self.is_chief, self.global_batch, self.test = is_chief, global_batch, test
        self.epochs = [dict(e) for e in previous]

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.started = time.perf_counter()
        self.progress = []

    def on_train_batch_end(self, batch, logs=None):
        done, steps = self.trained(batch), self.steps_per_epoch
        if done % max(steps // 10, 1) or done == steps:
            return
        self.progress.append({"global_step": self.optimizer_step(done),
                              **{k: round(float(v), 5) for k, v in (logs or {}).items()}})
        if not self.is_chief:
            return
        rate = (done - self.skipped) * self.global_batch / (time.perf_counter() - self.started)
        say(f"[raynlp] epoch {self.epoch + 1}/{self.params.get('epochs')} step {done // self.accumulation}/"
            f"{steps // self.accumulation}: loss {float((logs or {}).get('loss', float('nan'))):.4g}, "
            f"{rate:.1f} examples/s, epoch ends in ~{(steps - done) * self.global_batch / rate:.0f} s")

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        last = epoch + 1 == self.params.get("epochs") or self.model.stop_training
        tested = self.test() if self.test is not None and last else {}
        entry = {"epoch": epoch + 1, "global_step": int(np.asarray(self.model.optimizer.iterations)),
                 "seconds": round(seconds, 2),
                 "examples_per_second": round((self.steps_per_epoch - self.skipped) * self.global_batch / seconds, 1),
                 **{k: float(v) for k, v in (logs or {}).items()},
                 **{f"test_{k}": float(v) for k, v in tested.items()}, "progress": self.progress}
        self.epochs = [e for e in self.epochs if e["epoch"] < entry["epoch"]] + [entry]
        if self.is_chief:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("epoch", "progress"))
            say(f"[raynlp] epoch {entry['epoch']}/{self.params.get('epochs')}: {shown}")

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.epochs, f, indent=2)


class Evaluation(keras.callbacks.Callback):
    """Evaluates a split at each epoch's end, on a pass of its own, into the epoch's logs as `val_*`.

    Not `fit(validation_data=...)`: Keras keeps a generator's first two batches (peeked at for their shapes)
    and deals them again at the start of every evaluation after the first, which then ends two batches short
    of the split. `evaluate(split)` here takes a fresh one-pass generator of the split each time. Put it first
    in the callbacks: the others see the logs it fills.
    """

    def __init__(self, evaluate):
        super().__init__()
        self.evaluate = evaluate  # () -> dict of metrics

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in self.evaluate().items()})


def stop_early(epochs: list[dict], *, monitor: str, mode: str, patience: int | None) -> bool:
    """Whether `monitor` has gone `patience` evaluations (epochs, in order) without improving on its best."""
    values = [e[monitor] for e in epochs if monitor in e]
    if not patience or not values:
        return False
    best = (min if mode == "min" else max)(range(len(values)), key=lambda i: (values[i], i if mode == "min" else -i))
    return len(values) - 1 - best >= patience


class EarlyStopping(keras.callbacks.Callback):
    """Ends `fit` once `stop_early` says so of the epochs `history` holds and the one just ended (so a resumed run
    counts those before it).

    Every rank decides alike: under data parallelism the evaluated metrics are global means. Put it before
    `history` in the callbacks, so that History knows the epoch is the last (and tests after it).
    """

    def __init__(self, history: History, *, monitor: str, mode: str, patience: int):
        super().__init__()
        self.history, self.monitor, self.mode, self.patience = history, monitor, mode, patience

    def on_epoch_end(self, epoch, logs=None):
        epochs = [*(e for e in self.history.epochs if e["epoch"] <= epoch), dict(logs or {})]
        if stop_early(epochs, monitor=self.monitor, mode=self.mode, patience=self.patience):
            self.model.stop_training = True
            if self.history.is_chief:
                say(f"[raynlp] early stopping after epoch {epoch + 1}: {self.monitor} has not improved for "
                    f"{self.patience} epochs")


class ScalarLog(EpochCallback):
    """Rank 0's scalars, by optimizer step, into each of `sinks` (`TensorBoardFiles`, `MLflowRun`).

    Every `every_steps` optimizer steps: the running `loss` and `accuracy` of the epoch so far (Keras' means, as
    the progress lines show), `learning_rate`, `examples_per_second` and `real_tokens_per_second` since the
    point before (real tokens: those not padding, counted on rank 0 by `tokens`, times the workers). At each
    epoch's end: every metric of the epoch, `val_*` included, under `epoch/`.
    """

    async_safe = True  # its batch hook reads only the logs and its own counters

    def __init__(self, sinks: list, *, every_steps: int, steps_per_epoch: int, accumulation: int, global_batch: int,
                 world_size: int, tokens: RealTokens):
        super().__init__(steps_per_epoch=steps_per_epoch, accumulation=accumulation)
        self.sinks, self.every_steps = sinks, every_steps
        self.global_batch, self.world_size, self.tokens = global_batch, world_size, tokens

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        for sink in self.sinks:
            sink.open(first_step=int(np.asarray(optimizer.iterations)))
        rate = getattr(optimizer, "inner_optimizer", optimizer)._learning_rate
        # A schedule is a function of the step; a constant rate is a variable, which JAX's `fit` empties while it
        # holds the training state: read it now.
        self.rate = rate if callable(rate) else float(np.asarray(rate))
        self.since = (time.perf_counter(), self.tokens.seen, 0)

    def on_train_batch_end(self, batch, logs=None):
        done = self.trained(batch)
        batches = self.epoch * self.steps_per_epoch + done
        step = self.optimizer_step(done)
        if done % self.accumulation or step % self.every_steps:
            return
        now, tokens = time.perf_counter(), self.tokens.seen
        seconds = max(now - self.since[0], 1e-9)
        scalars = {name: float(value) for name, value in (logs or {}).items()}
        scalars["learning_rate"] = float(self.rate(batches) if callable(self.rate) else self.rate)
        if self.since[2]:  # the first point has no interval before it
            scalars["examples_per_second"] = (batches - self.since[2]) * self.global_batch / seconds
            scalars["real_tokens_per_second"] = (tokens - self.since[1]) * self.world_size / seconds
        self.since = (now, tokens, batches)
        for sink in self.sinks:
            sink.write(scalars, step)

    def on_epoch_end(self, epoch, logs=None):
        step = self.optimizer_step(self.steps_per_epoch, epoch=epoch)
        for sink in self.sinks:
            sink.write({f"epoch/{name}": float(value) for name, value in (logs or {}).items()}, step)
            sink.flush()

    def on_train_end(self, logs=None):
        for sink in self.sinks:
            sink.close()


class TensorBoardFiles:
    """TensorBoard event files in `folder` (tensorboardX: TensorFlow's `tf.summary` needs the `tensorboard`
    package, which nothing else here does); `publish(folder)`, where given, runs after each epoch (an output on
    object storage uploads the folder).

    Opened by a resumed run (`first_step`, the checkpoint's), it hides from TensorBoard what the attempt before
    wrote after that step (a purge step), so the steps it trains again show once.
    """

    def __init__(self, folder: str, publish=None):
        self.folder, self.publish = folder, publish

    def open(self, first_step: int = 0) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(self.folder, purge_step=first_step + 1 if first_step else None)

    def write(self, scalars: dict, step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()
        if self.publish is not None:
            self.publish(self.folder)

    def close(self) -> None:
        self.writer.close()


class MLflowRun:
    """The metrics of the MLflow run `run_id` at `uri` (which the driver opened: `raynlp.train._internal.mlflow`),
    written with MLflow's own client, one batch a point."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id

    def open(self, first_step: int = 0) -> None:  # MLflow keeps every point: steps trained again show twice
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)

    def write(self, scalars: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow names allow letters, digits and _-./ : epoch/val_loss as it is.
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RealTokens:
    """Counts the real (not padding) tokens of the batches a generator deals: `counted(batches)`."""

    def __init__(self):
        self.seen = 0

    def counted(self, batches):
        for batch in batches:
            features = batch[0] if isinstance(batch, tuple) else batch
            self.seen += int(features["padding_mask"].sum())
            yield batch


def say(line: str) -> None:
    """One line of progress to the worker's output, which Ray streams to the driver.

    Written to `sys.__stdout__`: Ray Train patches `print` on its workers to log each line *and*, where Ray has
    wrapped `sys.stdout` (it does), to print it as well, so a plain `print` reaches the driver twice.
    """
    print(line, file=sys.__stdout__, flush=True)
