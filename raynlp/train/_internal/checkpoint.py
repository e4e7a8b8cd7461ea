"""Checkpoints of a Keras model and its optimizer, reported to Ray Train, and exact resume.

A checkpoint folder holds:

- `model_variables.npz`: every entry of `model.variables` in order (weights, plus random-seed state so that
  dropout continues exactly where it stopped),
- `optimizer_variables.npz`: every entry of `model.optimizer.variables` in order (step counter, learning rate,
  Adam moments, ...),
- `metrics_variables.npz` (a checkpoint within an epoch): every entry of `model.metrics_variables`, the state of
  the epoch's running means (`loss`, `accuracy`), which `fit` resets when it starts the rest of the epoch,
- `metadata.json`: completed epochs, global step, the caller's `extra`, and the names and shapes saved.

Values are matched *by order*, not by name: names differ between two instances of the same model
(`adam/...` against `adam_2/...`), while the order is fixed by how the model is built.

Under multi-process `DataParallel`, reading a variable is local (each process holds a full replica), so rank 0
saves alone. Creating or assigning variables is a cross-process operation every rank must join, so every rank
restores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from raynlp.errors import RaynlpError
from raynlp.train._internal.callbacks import EpochCallback
from raynlp.train._internal.distributed import WorkerInfo, distribution_off

MODEL_FILE = "model_variables.npz"
OPTIMIZER_FILE = "optimizer_variables.npz"
METRICS_FILE = "metrics_variables.npz"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


def save_checkpoint(folder: str, model: keras.Model, *, epoch: int, step: int, epoch_step: int = 0,
                    extra: dict | None = None) -> str:
    """Write the model's and its optimizer's variables and metadata into `folder` (created if needed).

    Args:
        folder: where to write.
        model: a compiled model whose optimizer has been built (it has, once `fit` has run a step).
        epoch: completed epochs, i.e. the `initial_epoch` to resume `fit` from.
        step: the global optimizer step.
        epoch_step: batches of epoch `epoch` already trained (a checkpoint within an epoch); 0 at an epoch's end.
        extra: JSON-serializable facts to keep beside the weights (config, preset, vocabulary, ...).

    Only reads variables: safe to call on one rank under multi-process `DataParallel`.
    """
    os.makedirs(folder, exist_ok=True)
    model_variables = list(model.variables)
    optimizer_variables = list(model.optimizer.variables) if model.optimizer is not None else []
    _write_values(os.path.join(folder, MODEL_FILE), model_variables)
    _write_values(os.path.join(folder, OPTIMIZER_FILE), optimizer_variables)
    if epoch_step:
        _write_values(os.path.join(folder, METRICS_FILE), list(model.metrics_variables))
    metadata = {
        "format": FORMAT_VERSION,
        "epoch": int(epoch),
        "global_step": int(step),
        "epoch_step": int(epoch_step),
        "extra": extra or {},
        "optimizer": type(model.optimizer).__name__ if model.optimizer is not None else None,
        "model_variables": _describe(model_variables),
        "optimizer_variables": _describe(optimizer_variables),
    }
    with open(os.path.join(folder, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1)
    return folder


def restore_checkpoint(folder: str, model: keras.Model) -> dict:
    """Load a `save_checkpoint` folder into `model` and its optimizer; return the metadata.

    `model` must be built the same way as the saved one and compiled with the same kind of optimizer.
    Every rank must call it (assigning variables under `DataParallel` is collective). Resume with
    `model.fit(..., initial_epoch=metadata["epoch"])`, after the batches `metadata["epoch_step"]` of that epoch;
    for such a checkpoint within an epoch, `metadata["running_metrics"]` holds the epoch's running metric state,
    for `RunningMetrics` to give back to `fit` once it has reset its metrics.

    Raises:
        RaynlpError: when the folder is not a checkpoint or does not fit the model.
    """
    metadata_path = os.path.join(folder, METADATA_FILE)
    if not os.path.exists(metadata_path):
        raise RaynlpError(f"{folder} is not a raynlp checkpoint: it has no {METADATA_FILE}")
    with open(metadata_path, encoding="utf-8") as f:
        metadata = json.load(f)
    metadata.setdefault("epoch_step", 0)  # checkpoints from before step checkpoints

    _assign_values(_read_values(os.path.join(folder, MODEL_FILE)), list(model.variables), "model")
    if metadata["optimizer_variables"]:
        if model.optimizer is None:
            raise RaynlpError("the checkpoint holds optimizer state but the model is not compiled: compile it first")
        if type(model.optimizer).__name__ != metadata["optimizer"]:
            raise RaynlpError(
                f"the checkpoint holds {metadata['optimizer']} state but the model is compiled with "
                f"{type(model.optimizer).__name__}"
            )
        if not model.optimizer.built:
            # Creates the slot variables (moments, ...) in the same order as the saved run had them.
            model.optimizer.build(model.trainable_variables)
        _assign_values(_read_values(os.path.join(folder, OPTIMIZER_FILE)), list(model.optimizer.variables),
                       "optimizer")
    if metadata["epoch_step"] and os.path.exists(os.path.join(folder, METRICS_FILE)):
        metadata["running_metrics"] = _read_values(os.path.join(folder, METRICS_FILE))
    return metadata


def restore_from_ray(model: keras.Model, checkpoint: Any = None) -> dict | None:
    """Restore `checkpoint`, or else the run's latest one (`ray.train.get_checkpoint()`), into `model`.

    Every rank calls it at start; returns the metadata, or None when there is nothing to resume from.
    """
    import ray.train

    checkpoint = checkpoint if checkpoint is not None else ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return restore_checkpoint(folder, model)


class ReportCallback(EpochCallback):
    """At each epoch end: report metrics to Ray Train on every rank, with a checkpoint from rank 0.

    `ray.train.report` is a barrier every rank must call equally often, so every rank reports every epoch;
    only rank 0 writes and attaches the checkpoint (its metrics are the ones Ray Train keeps; under
    `DataParallel` they are global means, the same on every rank anyway).

    Reported metrics: `epoch` (completed epochs), `global_step` (optimizer steps), `examples_per_second` (global
    rows per second over the epoch, including compilation in the first epoch), `epoch_seconds`, and every entry
    of the Keras logs (`loss`, accuracy metrics, `val_*`).

    Args:
        info: this worker's `WorkerInfo`.
        local_batch_size: rows per batch on this worker.
        steps_per_epoch: batches per epoch (the same on every rank). A `fit` of fewer (the rest of an epoch
            resumed within it) trains the epoch's last ones.
        accumulation: batches per optimizer step (gradient accumulation).
        checkpoint: whether rank 0 attaches a checkpoint each epoch.
        extra: JSON-serializable facts stored in every checkpoint's metadata.
        write_extra: called on rank 0 as `write_extra(folder, epoch_end=...)` with the distribution off, to add
            files to the checkpoint folder (a keras-hub preset, a vocabulary) without a cross-process operation.
    """

    def __init__(
        self,
        info: WorkerInfo,
        *,
        local_batch_size: int,
        steps_per_epoch: int,
        accumulation: int = 1,
        checkpoint: bool = True,
        extra: dict | None = None,
        write_extra: Callable[..., None] | None = None,
    ):
        super().__init__(steps_per_epoch=steps_per_epoch, accumulation=accumulation)
        self.info = info
        self.global_batch_size = info.global_batch_size(local_batch_size)
        self.checkpoint = checkpoint
        self.extra = extra
        self.write_extra = write_extra
        self._epoch_started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_started
        completed = epoch + 1  # Keras counts epochs from 0; a checkpoint records how many are done.
        metrics = {
            "epoch": completed,
            "global_step": int(np.asarray(self.model.optimizer.iterations)),
            "examples_per_second": (self.steps_per_epoch - self.skipped) * self.global_batch_size / max(seconds, 1e-9),
            "epoch_seconds": seconds,
        }
        metrics.update({name: float(value) for name, value in (logs or {}).items()})
        self._report(metrics, epoch=completed, epoch_step=0)

    def _report(self, metrics: dict, *, epoch: int, epoch_step: int) -> None:
        import ray.train

        model = self.model  # on every rank: under JAX, reading `self.model` writes the step's state into it
        if not (self.info.is_chief and self.checkpoint):
            ray.train.report(metrics, checkpoint=None)
            return
        # Ray copies the folder into the run's storage during report; the temporary copy can go afterwards.
        with tempfile.TemporaryDirectory(prefix="raynlp-checkpoint-") as folder:
            save_checkpoint(folder, model, epoch=epoch, step=metrics["global_step"], epoch_step=epoch_step,
                            extra=self.extra)
            if self.write_extra is not None:
                with distribution_off():
                    self.write_extra(folder, epoch_end=not epoch_step)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class RunningMetrics(keras.callbacks.Callback):
    """Gives the first epoch of a `fit` the running metric state `values` (a checkpoint's `running_metrics`):
    a run resumed within an epoch then reports that epoch's `loss` and `accuracy` over all of its batches, as the
    run that went straight through does. Keras resets the metrics just before `on_epoch_begin`, and reads them
    into its training state at the first batch; every rank assigns (a collective under `DataParallel`)."""

    def __init__(self, values: list[np.ndarray]):
        super().__init__()
        self.values = values

    def on_epoch_begin(self, epoch, logs=None):
        if self.values is not None:
            _assign_values(self.values, list(self.model.metrics_variables), "metrics")
            self.values = None


class StepReportCallback(ReportCallback):
    """A `ReportCallback` that also checkpoints within an epoch: every `every_steps` optimizer steps, and when
    `every_minutes` have passed since the last checkpoint (whichever comes first).

    Every rank must report at the same steps, so the clock is rank 0's, and read every `clock_steps` optimizer
    steps: rank 0 broadcasts whether it is time. A checkpoint within an epoch is taken after an optimizer update
    (never inside an accumulation) and holds what the epoch end's does but the preset; it is reported with
    `score` at its worst (`score=(name, mode)`), so that the checkpoints ranked by score are the evaluated ones.
    Its metrics: `epoch` (completed), `epoch_step` (batches of the next epoch trained), `global_step`.
    """

    def __init__(self, info: WorkerInfo, *, every_steps: int | None, every_minutes: float | None,
                 clock_steps: int, score: tuple[str, str] | None = None, **report):
        super().__init__(info, **report)
        self.every_steps, self.every_seconds = every_steps, every_minutes * 60 if every_minutes else None
        self.clock_steps, self.score = clock_steps, score
        self._last = time.monotonic()

    def on_train_begin(self, logs=None):
        self._last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        done = self.trained(batch)
        if done % self.accumulation or done == self.steps_per_epoch:  # the epoch's end reports anyway
            return
        step = self.optimizer_step(done)
        if not (self.every_steps and step % self.every_steps == 0 or self._time_is_up(step)):
            return
        metrics = {"epoch": self.epoch, "epoch_step": done, "global_step": step}
        if self.score is not None:
            # The worst finite score: Ray Train keeps its checkpoints' scores as JSON, where infinity reads back null.
            name, mode = self.score
            metrics[name] = sys.float_info.max if mode == "min" else -sys.float_info.max
        self._report(metrics, epoch=self.epoch, epoch_step=done)
        self._last = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._last = time.monotonic()

    def _time_is_up(self, step: int) -> bool:
        if self.every_seconds is None or step % self.clock_steps:
            return False
        from ray.train.collective import broadcast_from_rank_zero

        return bool(broadcast_from_rank_zero(time.monotonic() - self._last >= self.every_seconds))


def _write_values(path: str, variables: list) -> None:
    # Zero-padded keys keep the order explicit; npz keeps exact dtypes and bits.
    np.savez(path, **{f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)})


def _describe(variables: list) -> list[dict]:
    return [{"path": v.path, "shape": list(v.shape), "dtype": str(v.dtype)} for v in variables]


def _read_values(path: str) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"v{i:05d}"] for i in range(len(saved.files))]


def _assign_values(values: list[np.ndarray], variables: list, what: str) -> None:
    if len(values) != len(variables):
        raise RaynlpError(
            f"the checkpoint holds {len(values)} {what} variables, the {what} has {len(variables)}: "
            "build it with the same configuration as the run that saved it"
        )
    for variable, value in zip(variables, values):
        if tuple(variable.shape) != value.shape:
            raise RaynlpError(
                f"{what} variable {variable.path} has shape {tuple(variable.shape)}, the checkpoint {value.shape}: "
                "build it with the same configuration as the run that saved it"
            )
    for variable, value in zip(variables, values):
        variable.assign(value)
