"""Run a recipe on Ray Train: prepare the data on Ray Data, fit on N workers, export a preset.

    >>> from raynlp.train import load_config, train
    >>> result = train(load_config("configs/finetune.yaml", ["scaling.num_workers=2"]))
    >>> result.preset          # runs/finetune/preset: BertTextClassifier.from_preset(result.preset)

The output folder holds `preset/` (the export), `metrics.json` and `curves.png` (per epoch), `config.yaml`
(what ran), `data/` (the tokenized splits, Parquet) and `ray_train/` (Ray Train's checkpoints). Running the
same config into the same folder again resumes from the latest checkpoint instead of starting over.

`run.output` may also be a storage URI (`s3://bucket/runs/x`, `gs://…`, any URI `pyarrow.fs` opens), for runs
whose nodes share no folder. The same layout then lies at the URI: Ray Data writes the tokenized shards there and
Ray Train its checkpoints; what the driver makes (the preset taken out of the last checkpoint, metrics, curves, the
scratch recipe's tokenizer) is made in a staging folder under raynlp's cache and uploaded (`RunFolder` owns
the difference). `result.output` and
`result.preset` are then URIs, and `raynlp.presets.resolve(result.preset)` (so every `--preset` flag) downloads
the preset where it is used. A URI pyarrow cannot open or write is refused before Ray starts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raynlp.errors import RaynlpError
from raynlp.train.config import RecipeConfig
from raynlp.train.recipes import RECIPES, Plan

if TYPE_CHECKING:
    from raynlp.train._internal.prepare import PreparedData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    output: Path | str  # the run's folder, or its URI (a str) when run.output is on object storage
    preset: Path | str  # output/preset; `raynlp.presets.resolve(str(preset))` gives a local folder for either
    metrics: list[dict]  # one entry per epoch
    checkpoint: str  # Ray Train's latest checkpoint folder (or URI): the weights and optimizer state at the end
    exported_epoch: int  # the epoch whose weights `preset` holds (the last, or the best by train.monitor)

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


def train(config: RecipeConfig, *, callbacks: list[Callable] | None = None) -> TrainResult:
    """Train `config` to the end (or resume it) and export its preset.

    `callbacks`: extra Keras callbacks for every worker, as picklable functions of no arguments that make one
    (e.g. `functools.partial(MyCallback, every=100)`); they are called inside the workers, where Keras lives.
    """
    from ray.train import CheckpointConfig, ControllerError, FailureConfig, RunConfig, ScalingConfig
    from ray.train import DataConfig as IngestConfig

    from raynlp._internal.cluster import ensure_ray
    from raynlp.train._internal import mlflow_run, prepare
    from raynlp.train._internal.layout import check_layout, cluster_nodes, no_room_error, placement_attempts
    from raynlp.train._internal.lean_trainer import LeanJaxTrainer
    from raynlp.train._internal.loop import train_loop_per_worker
    from raynlp.train._internal.run_folder import RunFolder

    recipe = RECIPES[config.task]
    preset_dir = _check_preset(config, recipe)  # before any Ray resource is taken
    prepare.check_paths(config)
    run = RunFolder.open(config)
    ensure_ray(config.run.address)
    check_layout(config, *cluster_nodes())  # before the folder is claimed (a fixed config must not be "another run")
    run.claim(config)

    # 1. Tokenize every split once, on Ray Data, into Parquet shards in the run's folder (a new run refused for its
    # data, a file or a label, gives the folder back: the fixed config must not be "another run" either).
    with run.given_back_if_refused():
        splits, label_names = prepare.raw_splits(config, labelled=recipe.labelled)
        tokenizer = recipe.tokenizer(config, splits["train"], run)
        data = prepare.prepare(config, splits, tokenizer, masked_lm=recipe.masked_lm, out=run.root)
        num_classes = prepare.num_classes(config, data, label_names) if recipe.labelled else None
    plan = _plan(config, recipe, data, preset_dir=preset_dir, tokenizer_dir=tokenizer, num_classes=num_classes,
                 label_names=label_names, tensorboard_dir=str(run.join("tensorboard")),
                 mlflow_run_id=mlflow_run.open_run(config, run))
    accumulation = config.train.gradient_accumulation_steps
    logger.info("%s: %d training rows, %d workers × batch %d%s = global batch %d, %d optimizer steps per epoch, "
                "shards %s, output %s", config.task, plan.train_rows, plan.world_size, config.train.batch_size,
                f" × {accumulation} accumulated" if accumulation > 1 else "",
                plan.world_size * config.train.batch_size * accumulation, plan.steps_per_epoch // accumulation,
                "kept in memory" if plan.cache_shards else "streamed every epoch", run.root)

    # 2. Data-parallel fit on Ray Train; each worker reads its share of the Parquet rows (once, into memory, or
    # streamed through Ray Data every epoch). Ray Train's helpers the run has no use for are left out (lean_trainer).
    trainer = LeanJaxTrainer(
        train_loop_per_worker,
        train_loop_config={"recipe": config.model_dump(), "plan": plan.to_dict(), "callbacks": list(callbacks or [])},
        scaling_config=ScalingConfig(num_workers=plan.world_size, use_gpu=config.scaling.use_gpu,
                                     resources_per_worker=config.scaling.resources_per_worker()),
        # Shards kept in memory are read by the workers themselves (`ParquetShard`); streamed ones through Ray Data.
        datasets={} if plan.cache_shards else {split: data.read(split) for split in data.folders},
        dataset_config=IngestConfig(execution_options=_in_order(IngestConfig.default_ingest_options())),
        run_config=RunConfig(
            name="ray_train",
            storage_path=run.storage_path,
            failure_config=FailureConfig(max_failures=config.run.max_failures,
                                         controller_failure_limit=placement_attempts(config.run.wait_for_workers_s)),
            # Ranked by train.monitor where the best is exported (checkpoints within an epoch rank last); Ray
            # keeps the latest one either way, to resume from.
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.run.keep_checkpoints,
                **({"checkpoint_score_attribute": config.train.monitor, "checkpoint_score_order": config.train.mode}
                   if config.train.export == "best" else {})),
        ),
    )
    try:
        try:
            result = trainer.fit()
            if result.error:
                raise result.error
        except ControllerError as error:  # e.g. Ray Train could not place the workers for run.wait_for_workers_s
            clear = no_room_error(config, error, run.join("ray_train"))
            if clear is None:
                raise
            raise clear from error
        # 3. The preset out of the chosen checkpoint, metrics and curves out of the last, into the run's folder.
        exported = _export(run, result, config)
    except BaseException:
        mlflow_run.close_run(config, plan.mlflow_run_id, failed=True)
        raise
    mlflow_run.close_run(config, plan.mlflow_run_id, preset=str(exported.preset))
    return exported


def _plan(config: RecipeConfig, recipe, data: PreparedData, **settled) -> Plan:
    """Steps per epoch (the same on every rank, from the global row counts), what is validated when, and
    whether the shards fit in the workers' memory."""
    rows = data.rows
    from raynlp.train._internal.feeding import fits_in_memory, steps_per_epoch

    world, batch_size, accumulation = config.scaling.num_workers, config.train.batch_size, \
        config.train.gradient_accumulation_steps
    steps = steps_per_epoch(rows["train"], batch_size, world)
    if config.train.steps_per_epoch:
        steps = min(steps, config.train.steps_per_epoch * accumulation)
    if steps < accumulation:
        raise RaynlpError(f"train.gradient_accumulation_steps {accumulation} is more than the {steps} batches of an "
                          "epoch: accumulate fewer, or train on more rows")
    steps -= steps % accumulation  # an epoch ends on an optimizer update
    validation_split = "validation" if "validation" in rows else "test"
    if validation_split == "test" and "test" in rows:
        logger.info("no validation split given (data.validation or data.validation_fraction): validating on the "
                    "test split after every epoch")
    validation_steps, test_steps = (_evaluation_steps(rows, split, batch_size * world)
                                    for split in (validation_split, "test"))
    if validation_split == "test":
        test_steps = None  # reported every epoch as the validation metrics already
    elif "test" in rows:
        logger.info("validating on the validation split (%d rows) after every epoch; the test split (%d rows) is "
                    "evaluated once, after the last epoch", rows["validation"], rows["test"])
    if config.train.monitor.startswith("val_") and validation_steps is None and (
            config.train.export == "best" or config.train.early_stopping_patience):
        raise RaynlpError(f"train.monitor {config.train.monitor}: the {validation_split} split is not evaluated "
                          f"(fewer rows than one global batch): monitor {config.train.monitor.removeprefix('val_')}")
    cache = config.data.shard_cache
    if cache == "auto":
        # A shuffled training split is held twice while an epoch after the first is dealt (`ShardCache.dealt`).
        held = {split: 2 if split == "train" and config.train.shuffle else 1 for split in rows}
        needed = sum(rows[split] * data.row_bytes(split) * held[split] for split in rows)
        cache = "memory" if fits_in_memory(needed, world) else "stream"
    return Plan(**settled, train_rows=rows["train"], steps_per_epoch=steps, validation_split=validation_split,
                validation_steps=validation_steps, test_steps=test_steps, world_size=world,
                cache_shards=cache == "memory", split_folders=dict(data.folders), split_rows=dict(rows))


def _evaluation_steps(rows: dict[str, int], split: str, global_batch: int) -> int | None:
    """Steps to evaluate `split` in (whole global batches: every rank takes the same number), or None."""
    if split not in rows:
        return None
    steps = rows[split] // global_batch
    if not steps:
        logger.warning("the %s split (%d rows) is smaller than one global batch of %d: not evaluated",
                       split, rows[split], global_batch)
    return steps or None


def _in_order(options):
    """Ray Data options that keep the rows' order: each rank gets the same rows in the same order on every run."""
    options.preserve_order = True
    return options


# --- the export ------------------------------------------------------------------------------------------

def _export(run, result, config: RecipeConfig) -> TrainResult:
    last = result.checkpoint
    if last is None:
        raise RaynlpError(f"training ended without a checkpoint; see the logs under {run.join('ray_train')}")
    with last.as_directory() as folder:
        history = json.loads((Path(folder) / "history.json").read_text())
    best = config.train.export == "best"
    chosen = result.get_best_checkpoint(config.train.monitor, config.train.mode) if best else last
    with chosen.as_directory() as folder:
        shutil.rmtree(run.staged("preset"), ignore_errors=True)
        shutil.copytree(Path(folder) / "preset", run.staged("preset"))
        epoch = json.loads((Path(folder) / "metadata.json").read_text())["epoch"]
    if best:
        logger.info("exporting epoch %d's weights: the best %s (%.4g) of %d epochs", epoch, config.train.monitor,
                    next(e for e in history if e["epoch"] == epoch)[config.train.monitor], len(history))
    run.staged("metrics.json").write_text(json.dumps(history, indent=2))
    _plot_curves(history, run.staged("curves.png"))
    run.publish("preset", "metrics.json", "curves.png")
    run.close()
    tested = {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("test_")}
    if tested:
        logger.info("test split, after the last epoch: %s", ", ".join(f"{k} {v:.4g}" for k, v in tested.items()))
    logger.info("exported preset to %s (metrics in %s, TensorBoard in %s)", run.join("preset"),
                run.join("metrics.json"), run.join("tensorboard"))
    return TrainResult(output=run.root, preset=run.join("preset"), metrics=history,
                       checkpoint=run.location(last.path), exported_epoch=epoch)


def _plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Training metrics along the steps (the points noted within each epoch, then its end); validation metrics at
    # the end of each epoch. Within an epoch Keras reports running means since the epoch began.
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        points = [(p["global_step"], p[key]) for h in history for p in [*h.get("progress", []), h] if key in p]
        if points:
            ax = axes[1] if "accuracy" in key else axes[0]
            ax.plot(*zip(*points), marker="o" if key.startswith("val_") else ".", label=key)
    ends = [h["global_step"] for h in history]
    for ax, title in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("step (dotted lines: ends of epochs)")
        ax.set_title(title)
        for step in ends:
            ax.axvline(step, color="#ccc", linestyle=":", linewidth=0.8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- preset and tokenizer ------------------------------------------------------------------------------

def _check_preset(config: RecipeConfig, recipe) -> str | None:
    """The local folder of the preset to start from (None for a recipe that needs none), checked against the
    config."""
    from raynlp.data.tokenize import max_sequence_length
    from raynlp.presets import is_local, resolve

    if not recipe.needs_preset:
        return None
    preset_dir = resolve(config.preset)
    if not is_local(preset_dir) or not os.path.isdir(preset_dir):
        from raynlp.presets import PRESETS

        raise RaynlpError(f"preset {config.preset!r} is neither a raynlp preset ({', '.join(PRESETS)}) nor a local "
                          "folder; training starts from one of those (a hub handle needs the hub: download it first)")
    limit = max_sequence_length(preset_dir)
    if limit and config.data.sequence_length > limit:
        raise RaynlpError(f"data.sequence_length {config.data.sequence_length} is above the maximum {limit} of "
                          f"preset {config.preset}")
    if recipe.masked_lm:
        from raynlp.data.fast_tokenizer import FastWordPieceTokenizer

        config.model.masking.check(FastWordPieceTokenizer.from_keras_hub_preset_dir(preset_dir))
    return preset_dir
