"""The function every Ray Train worker runs: set up data parallelism, build, restore, fit, report.

Read it top to bottom: this is the whole training step of every raynlp recipe.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    import keras
    import ray.train

    from raynlp._internal.compilation_cache import use_compilation_cache
    from raynlp.train._internal.callbacks import History
    from raynlp.train._internal.checkpoint import ReportCallback, restore_from_ray
    from raynlp.train._internal.distributed import check_replicas_agree, setup_data_parallel
    from raynlp.train._internal.feeding import ShardCache, shard_batches
    from raynlp.train.config import RecipeConfig
    from raynlp.train.recipes import RECIPES, Plan

    config = RecipeConfig.model_validate(loop_config["recipe"])
    plan = _on_this_node(Plan(**loop_config["plan"]), config)
    recipe = RECIPES[config.task]

    # 1. One replica of a data-parallel run (a plain process when there is one worker), which loads what this
    # node compiled before (a restarted group, a resumed run) instead of compiling it again.
    use_compilation_cache()
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
    check_replicas_agree(model, info)

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
                             first_epoch=initial_epoch, transform=recipe.masker(config, plan, split))

    validation = batches(plan.validation_split, plan.validation_steps) if plan.validation_steps else None
    test = batches("test", plan.test_steps) if plan.test_steps else None

    # 4. Fit; each epoch ends with a report to Ray Train and, from rank 0, a checkpoint holding the preset.
    history = History(is_chief=info.is_chief, previous=_read_history(checkpoint),
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
        *(make() for make in loop_config.get("callbacks", [])),  # the caller's: train(config, callbacks=...)
    ]
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
