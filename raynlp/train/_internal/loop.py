"""The function every Ray Train worker runs: set up data parallelism, build, restore, fit, report.

Read it top to bottom: this is the whole training step of every raynlp recipe.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# A test hook: when set in train_loop_config, the worker of that rank ends its own process in that epoch.
KILL_HOOK = "_test_kill_rank_in_epoch"


def train_loop_per_worker(loop_config: dict) -> None:
    import keras
    import ray.train

    from raynlp.train._internal.checkpoint import ReportCallback, restore_from_ray
    from raynlp.train._internal.distributed import setup_data_parallel
    from raynlp.train._internal.feeding import ShardCache, shard_batches
    from raynlp.train.config import RecipeConfig
    from raynlp.train.recipes import RECIPES, Plan

    config = RecipeConfig.model_validate(loop_config["recipe"])
    plan = _on_this_node(Plan(**loop_config["plan"]), config)
    recipe = RECIPES[config.task]

    # 1. One replica of a data-parallel run (a plain process when there is one worker).
    info = setup_data_parallel(config.scaling.use_gpu, config.train.seed)
    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if not config.scaling.use_gpu else "mixed_float16")

    # 2. The same model on every rank, then the latest checkpoint of this run, if any (resume after failure).
    model = recipe.build(config, plan)
    checkpoint = ray.train.get_checkpoint()
    restored = restore_from_ray(model, checkpoint)
    initial_epoch = restored["epoch"] if restored else 0
    if restored:
        logger.info("rank %d resumed from epoch %d, step %d", info.rank, restored["epoch"], restored["global_step"])

    # 3. This worker's shards, an equal number of local batches on every rank.
    batch_size = config.train.batch_size

    def batches(split: str, steps: int):
        shard = ray.train.get_dataset_shard(split)
        # Training rows are dealt in a new order every epoch after the first (the first is the shards' own,
        # shuffled when they were written): from memory, or through a seeded buffer for a streamed shard.
        shuffle_seed = config.train.seed if split == "train" and config.train.shuffle else None
        cache = ShardCache(shuffle_seed, first_epoch=initial_epoch) if plan.cache_shards else None
        return shard_batches(shard, batch_size=batch_size, feature_columns=recipe.feature_columns,
                             label_column=recipe.label_column, weight_column=recipe.weight_column, steps=steps,
                             cache=cache, shuffle_seed=None if cache else shuffle_seed, rank=info.rank,
                             first_epoch=initial_epoch)

    validation = batches(plan.validation_split, plan.validation_steps) if plan.validation_steps else None
    test = batches("test", plan.test_steps) if plan.test_steps else None

    # 4. Fit; each epoch ends with a report to Ray Train and, from rank 0, a checkpoint holding the preset.
    history = _History(info, previous=_read_history(checkpoint),
                       global_batch=batch_size * info.world_size, steps=plan.steps_per_epoch,
                       test=(lambda: keras.Model.evaluate(model, test, steps=plan.test_steps, return_dict=True,
                                                          verbose=0)) if test else None)

    def write_extra(folder: str) -> None:
        os.makedirs(f"{folder}/preset", exist_ok=True)
        recipe.export(model, config, plan, f"{folder}/preset")
        if config.train.mixed_precision:
            _as_float32_preset(f"{folder}/preset")
        history.write(f"{folder}/history.json")

    callbacks = [
        history,  # before the report, so that each checkpoint holds its own epoch
        ReportCallback(info, local_batch_size=batch_size, steps_per_epoch=plan.steps_per_epoch,
                       extra={"task": config.task, "plan": plan.to_dict()}, write_extra=write_extra),
    ]
    if loop_config.get(KILL_HOOK):
        callbacks.append(_KillInEpoch(info.rank, *loop_config[KILL_HOOK]))
    if initial_epoch < config.train.epochs:
        # Keras' own fit, also for a keras-hub task: the task's `fit` exists to run its preprocessor over raw
        # inputs (raynlp trains with `preprocessor=None` on rows it packed) and takes arrays, tf.data or grain but
        # no generator. Wrapping the generator in tf.data for it cost 10% per step (measured on 2 CPU cores).
        keras.Model.fit(model, batches("train", plan.steps_per_epoch), steps_per_epoch=plan.steps_per_epoch,
                        epochs=config.train.epochs, initial_epoch=initial_epoch, validation_data=validation,
                        validation_steps=plan.validation_steps, callbacks=callbacks, verbose=0,
                        shuffle=False)  # raynlp deals the rows itself (train.shuffle)


def _as_float32_preset(folder: str) -> None:
    """Record a mixed-precision model's dtype policy as float32 in its preset's JSON files.

    The weights are float32 either way, but keras-hub 0.32's `from_preset` cannot read a "mixed_*" policy
    ("Invalid dtype: mixed_bfloat16"); a float32 preset loads anywhere, and `from_preset(..., dtype=...)` picks
    half precision again where wanted. The model card keeps the policy it trained with.
    """
    import glob
    import json

    def float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and str(node.get("config", {}).get("name", "")).startswith("mixed_"):
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: float32(v) for k, v in node.items()}
        return [float32(v) for v in node] if isinstance(node, list) else node

    for path in glob.glob(f"{folder}/*.json"):
        with open(path) as f:
            tree = json.load(f)
        with open(path, "w") as f:
            json.dump(float32(tree), f, indent=4)


def _read_history(checkpoint) -> list[dict]:
    import json
    import os

    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, "history.json")
        return json.load(open(path)) if os.path.exists(path) else []


def _History(info, *, previous: list[dict], global_batch: int, steps: int, test=None):
    """Keeps every epoch's metrics (carried over a resume through the checkpoint) and logs them on rank 0.

    About ten times an epoch it also notes the metrics so far (Keras' running means over the epoch) at that
    global step: an epoch's entry carries them as `progress`, so that even a one-epoch run has a curve.
    `test`, where a test split stands apart from validation, evaluates it: after the last epoch, every rank
    together, its metrics kept in that epoch's entry as `test_*` (so in its checkpoint and `metrics.json`).
    """
    import json
    import time

    import keras

    class History(keras.callbacks.Callback):
        # Its batch-end hook only reads the logs: Keras may run it on a helper thread, so that the training loop
        # dispatches the next step without waiting for this one's metrics (a callback that is not async-safe
        # makes every step wait). Keras waits for the pending hooks before each epoch's end.
        async_safe = True

        def __init__(self):
            super().__init__()
            self.epochs = [dict(e) for e in previous]

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()
            self.epoch = epoch
            self.progress = []

        def on_train_batch_end(self, batch, logs=None):
            # About ten progress points an epoch, so that a long epoch is never silent.
            done = batch + 1
            if done % max(steps // 10, 1) or done == steps:
                return
            self.progress.append({"global_step": self.epoch * steps + done,
                                  **{k: round(float(v), 5) for k, v in (logs or {}).items()}})
            if not info.is_chief:
                return
            seconds = time.perf_counter() - self.started
            rate = done * global_batch / seconds
            _say(f"[raynlp] epoch {self.epoch + 1}/{self.params.get('epochs')} step {done}/{steps}: "
                 f"loss {float((logs or {}).get('loss', float('nan'))):.4g}, {rate:.1f} examples/s, "
                 f"epoch ends in ~{(steps - done) * global_batch / rate:.0f} s")

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            tested = test() if test is not None and epoch + 1 == self.params.get("epochs") else {}
            entry = {"epoch": epoch + 1, "global_step": int(self.model.optimizer.iterations.numpy()),
                     "seconds": round(seconds, 2), "examples_per_second": round(steps * global_batch / seconds, 1),
                     **{k: float(v) for k, v in (logs or {}).items()},
                     **{f"test_{k}": float(v) for k, v in tested.items()}, "progress": self.progress}
            self.epochs = [e for e in self.epochs if e["epoch"] < entry["epoch"]] + [entry]
            if info.is_chief:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("epoch", "progress"))
                _say(f"[raynlp] epoch {entry['epoch']}/{self.params.get('epochs')}: {shown}")

        def write(self, path: str) -> None:
            with open(path, "w") as f:
                json.dump(self.epochs, f, indent=2)

    return History()


def _say(line: str) -> None:
    """One line of progress to the worker's output, which Ray streams to the driver.

    Written to `sys.__stdout__`: Ray Train patches `print` on its workers to log each line *and*, where Ray has
    wrapped `sys.stdout` (it does), to print it as well, so a plain `print` reaches the driver twice.
    """
    import sys

    print(line, file=sys.__stdout__, flush=True)


class _KillInEpoch:
    """Ends this worker's process in the middle of an epoch, once per run (for fault-tolerance tests).

    It waits until a few seconds into the epoch: Ray Train commits the previous epoch's checkpoint only once
    its controller has polled every rank (every 2 s), and a crash before that would lose the checkpoint.
    """

    SETTLE_SECONDS = 5.0

    def __new__(cls, my_rank: int, rank: int, epoch: int, marker: str):
        import os
        import time

        import keras

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, current, logs=None):
                self.current, self.started = current, time.monotonic()

            def on_train_batch_end(self, batch, logs=None):
                halfway = batch >= self.params.get("steps", 2) // 2
                if my_rank == rank and self.current == epoch and halfway and not os.path.exists(marker):
                    time.sleep(max(0.0, cls.SETTLE_SECONDS - (time.monotonic() - self.started)))
                    open(marker, "w").close()
                    os._exit(1)

        return Callback()


def _on_this_node(plan, config):
    """The plan with its folders as this node sees them. The driver's folder of a raynlp preset lies in the
    driver node's cache, so a worker on another node fetches (or finds in its own cache) the same preset; a
    preset or tokenizer given as a storage URI (an output on object storage) is downloaded into this node's cache."""
    import dataclasses

    from raynlp._internal.storage import is_uri
    from raynlp.presets import PRESETS, resolve

    preset_dir = plan.preset_dir
    if preset_dir is not None and (config.preset in PRESETS or is_uri(config.preset)):
        preset_dir = resolve(config.preset)
    # Other local folders: on a multi-node cluster they lie on storage every node mounts.
    return dataclasses.replace(plan, preset_dir=preset_dir, tokenizer_dir=resolve(plan.tokenizer_dir))
