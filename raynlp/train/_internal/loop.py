"""The function every Ray Train worker runs: set up data parallelism, build, restore, fit, report.

Read it top to bottom: this is the whole training step of every raynlp recipe.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train

    from raynlp._internal.cluster import keep_tensorflow_out
    from raynlp.train.config import RecipeConfig
    from raynlp.train.recipes import RECIPES, Plan

    keep_tensorflow_out()  # before anything imports keras-hub (finding the preset on this node may)
    config = RecipeConfig.model_validate(loop_config["recipe"])
    plan = Plan(**loop_config["plan"])
    recipe, train = RECIPES[config.task], config.train

    # 0. Shards kept in memory start being read from the run's Parquet shards at once, in threads of their own:
    # the read overlaps what follows (the preset found or fetched on this node, the imports, the model's build),
    # which the first batch would otherwise wait for.
    caches = _caches_reading(plan, config, ray.train.get_context().get_world_rank()) if plan.cache_shards else {}
    plan = _on_this_node(plan, config)

    import collections
    import functools

    import keras

    from raynlp._internal.compilation_cache import use_compilation_cache
    from raynlp.train._internal.callbacks import (
        EarlyStopping,
        Evaluation,
        History,
        RealTokens,
        ScalarLog,
        stop_early,
    )
    from raynlp.train._internal.checkpoint import (
        ReportCallback,
        RunningMetrics,
        StepReportCallback,
        restore_from_ray,
    )
    from raynlp.train._internal.distributed import check_replicas_agree, setup_data_parallel
    from raynlp.train._internal.feeding import shard_batches

    # 1. One replica of a data-parallel run (a plain process when there is one worker), which loads what this
    # node compiled before (a restarted group, a resumed run) instead of compiling it again.
    use_compilation_cache()
    info = setup_data_parallel(config.scaling.use_gpu, train.seed)
    if train.precision != "float32":
        keras.mixed_precision.set_global_policy(f"mixed_{train.precision}")

    # 2. The same model on every rank, then the latest checkpoint of this run, if any (resume after failure):
    # epoch `epoch`, of which the first `epoch_step` batches were trained.
    model = recipe.build(config, plan)
    checkpoint = ray.train.get_checkpoint()
    restored = restore_from_ray(model, checkpoint)
    epoch, epoch_step = (restored["epoch"], restored["epoch_step"]) if restored else (0, 0)
    if restored:
        logger.info("rank %d resumed at epoch %d, batch %d (global step %d)", info.rank, epoch + 1, epoch_step,
                    restored["global_step"])
    check_replicas_agree(model, info)

    # 3. This worker's shards, an equal number of local batches on every rank. Training rows are dealt in a new
    # order every epoch after the first (the first is the shards' own, shuffled when they were written): from
    # memory, from the checkpoint's epoch on, or through a seeded buffer for a streamed shard. A cache lasts the
    # whole run.
    batch_size, steps = train.batch_size, plan.steps_per_epoch
    for cache in caches.values():
        cache.epoch = epoch
    tokens = RealTokens()

    def batches(split: str, steps: int, **position):
        shuffle_seed = train.seed if split == "train" and train.shuffle else None
        shard = caches[split].shard if caches else ray.train.get_dataset_shard(split)
        dealt = shard_batches(shard, batch_size=batch_size,
                              feature_columns=recipe.inputs(config), label_column=recipe.label_column,
                              weight_column=recipe.weight_column, steps=steps, cache=caches.get(split),
                              shuffle_seed=None if caches else shuffle_seed, rank=info.rank,
                              transform=recipe.masker(config, plan, split), timeout_s=config.run.feed_timeout_s,
                              **position)
        return tokens.counted(dealt) if split == "train" else dealt

    def evaluate(split: str, steps: int) -> dict:
        dealt = batches(split, steps, passes=1)
        metrics = keras.Model.evaluate(model, dealt, steps=steps, return_dict=True, verbose=0)
        collections.deque(dealt, maxlen=0)  # reads the rest of the pass: the next one starts from its top
        return metrics

    # 4. Fit; each epoch ends with a report to Ray Train and, from rank 0, a checkpoint holding the preset (and,
    # with train.checkpoint_every_*, reports and checkpoints within epochs too).
    history = History(is_chief=info.is_chief, previous=_read_history(checkpoint),
                      global_batch=batch_size * info.world_size, steps_per_epoch=steps,
                      accumulation=train.gradient_accumulation_steps,
                      test=functools.partial(evaluate, "test", plan.test_steps) if plan.test_steps else None)

    def write_extra(folder: str, *, epoch_end: bool) -> None:
        if epoch_end:  # the export; a checkpoint within an epoch is for resuming only
            os.makedirs(f"{folder}/preset", exist_ok=True)
            recipe.export(model, config, plan, f"{folder}/preset")
            if train.precision != "float32":
                _as_float32_preset(f"{folder}/preset")
        history.write(f"{folder}/history.json")

    report = {"local_batch_size": batch_size, "steps_per_epoch": steps,
              "accumulation": train.gradient_accumulation_steps, "write_extra": write_extra,
              "extra": {"task": config.task, "plan": plan.to_dict()}}
    within_epochs = train.checkpoint_every_steps or train.checkpoint_every_minutes
    callbacks = [
        *([Evaluation(functools.partial(evaluate, plan.validation_split, plan.validation_steps))]
          if plan.validation_steps else []),  # first: the others see its val_* metrics
        *([EarlyStopping(history, monitor=train.monitor, mode=train.mode, patience=train.early_stopping_patience)]
          if train.early_stopping_patience else []),
        history,  # before the report, so that each checkpoint holds its own epoch
        StepReportCallback(info, every_steps=train.checkpoint_every_steps, every_minutes=train.checkpoint_every_minutes,
                           clock_steps=train.log_every_steps,
                           score=(train.monitor, train.mode) if train.export == "best" else None, **report)
        if within_epochs else ReportCallback(info, **report),
        *([ScalarLog(_scalar_sinks(plan, config), every_steps=train.log_every_steps, steps_per_epoch=steps,
                     accumulation=train.gradient_accumulation_steps, global_batch=batch_size * info.world_size,
                     world_size=info.world_size, tokens=tokens)]
          if info.is_chief and plan.tensorboard_dir else []),
        *(make() for make in loop_config.get("callbacks", [])),  # the caller's: train(config, callbacks=...)
    ]
    # Keras' own fit, also for a keras-hub task: the task's `fit` exists to run its preprocessor over raw inputs
    # (raynlp trains with `preprocessor=None` on rows it packed) and takes arrays, tf.data or grain but no
    # generator. Wrapping the generator in tf.data for it cost 10% per step (measured on 2 CPU cores).
    def fit(train_batches, *first, **epochs):
        keras.Model.fit(model, train_batches, callbacks=[*first, *callbacks], verbose=0,
                        shuffle=False, **epochs)  # raynlp deals the rows itself (train.shuffle)
        return not model.stop_training

    going = epoch < train.epochs and not stop_early(history.epochs, monitor=train.monitor, mode=train.mode,
                                                    patience=train.early_stopping_patience)
    if going and epoch_step:
        # Resumed within an epoch: first the rest of it, from the batch after the checkpoint's, in the same order
        # with the same masks and the epoch's running means so far, then the epochs after it.
        rest = batches("train", steps, first_epoch=epoch, first_step=epoch_step, passes=1)
        going = fit(rest, RunningMetrics(restored.get("running_metrics")), steps_per_epoch=steps - epoch_step,
                    epochs=epoch + 1, initial_epoch=epoch)
        collections.deque(rest, maxlen=0)  # reads the rest of the pass: the next one starts from its top
        epoch += 1
    if going and epoch < train.epochs:
        fit(batches("train", steps, first_epoch=epoch), steps_per_epoch=steps, epochs=train.epochs,
            initial_epoch=epoch)


def _caches_reading(plan, config, rank: int) -> dict:
    """A `ShardCache` for each split the run reads, each already reading this worker's share of the split's
    Parquet shards (`ParquetShard`)."""
    from raynlp.train._internal.feeding import ParquetShard, ShardCache

    steps = {"train": plan.steps_per_epoch, "test": plan.test_steps}
    steps[plan.validation_split] = plan.validation_steps  # the test split's, when it is the validation split too
    caches = {}
    for split, split_steps in steps.items():
        if split_steps:
            shuffled = split == "train" and config.train.shuffle
            caches[split] = ShardCache(config.train.seed if shuffled else None)
            caches[split].start_reading(ParquetShard(plan.split_folders[split], plan.split_rows[split], rank,
                                                     plan.world_size),
                                        batch_size=config.train.batch_size, steps=split_steps,
                                        timeout_s=config.run.feed_timeout_s)
    return caches


def _scalar_sinks(plan, config) -> list:
    """Where rank 0's scalars go: TensorBoard files in the run's folder (for an output on object storage, a folder
    on this node holding what earlier attempts uploaded, uploaded every epoch), and the run's MLflow run if any."""
    from raynlp._internal import storage
    from raynlp.train._internal.callbacks import MLflowRun, TensorBoardFiles

    folder = plan.tensorboard_dir
    if storage.is_uri(folder):
        local = storage.local_dir("tensorboard", folder)
        if storage.exists(folder):
            storage.download(folder, local)
        sinks = [TensorBoardFiles(str(local), publish=lambda written: storage.upload(written, folder))]
    else:
        sinks = [TensorBoardFiles(folder)]
    if plan.mlflow_run_id:
        sinks.append(MLflowRun(config.tracking.mlflow_uri, plan.mlflow_run_id))
    return sinks


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
