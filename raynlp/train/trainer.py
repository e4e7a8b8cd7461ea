"""Run a recipe on Ray Train: prepare the data on Ray Data, fit on N workers, export a preset.

    >>> from raynlp.train import load_config, train
    >>> result = train(load_config("configs/finetune.yaml", ["scaling.num_workers=2"]))
    >>> result.preset          # runs/finetune/preset: BertTextClassifier.from_preset(result.preset)

The output folder holds `preset/` (the export), `metrics.json` and `curves.png` (per epoch), `config.yaml`
(what ran), `data/` (the tokenized splits, Parquet) and `ray_train/` (Ray Train's checkpoints). Running the same config into the same folder again
resumes from the latest checkpoint instead of starting over.

`run.output` may also be a storage URI (`s3://bucket/runs/x`, `gs://…`, any URI `pyarrow.fs` opens), for runs
whose nodes share no folder. The same layout then lies at the URI: Ray Data writes the tokenized shards there and
Ray Train its checkpoints; what the driver makes (the preset taken out of the last checkpoint, metrics, curves, the
scratch recipe's tokenizer) is made in a staging folder under raynlp's cache and uploaded. `result.output` and
`result.preset` are then URIs, and `raynlp.presets.resolve(result.preset)` (so every `--preset` flag) downloads
the preset where it is used. A URI pyarrow cannot open or write is refused before Ray starts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from raynlp._internal import storage
from raynlp.errors import RaynlpError
from raynlp.train.config import RecipeConfig
from raynlp.train.recipes import RECIPES, Plan

logger = logging.getLogger(__name__)

RUN_FILE = "raynlp_run.json"


@dataclass(frozen=True)
class TrainResult:
    output: Path | str  # the run's folder, or its URI (a str) when run.output is on object storage
    preset: Path | str  # output/preset; `raynlp.presets.resolve(str(preset))` gives a local folder for either
    metrics: list[dict]  # one entry per epoch
    checkpoint: str  # Ray Train's latest checkpoint folder (or URI): the weights and optimizer state at the end

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


def train(config: RecipeConfig, *, _loop_extra: dict | None = None) -> TrainResult:
    """Train `config` to the end (or resume it) and export its preset."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxTrainer

    from raynlp._internal.cluster import ensure_ray
    from raynlp.train._internal import prepare
    from raynlp.train._internal.feeding import fits_in_memory, steps_per_epoch
    from raynlp.train._internal.loop import train_loop_per_worker

    recipe = RECIPES[config.task]
    preset_dir = _check_preset(config)  # before any Ray resource is taken
    out = _claim_output(config)
    local = _driver_folder(out)
    ensure_ray(config.run.address)

    # 1. Tokenize every split once, on Ray Data, into Parquet shards in the run's folder.
    splits, label_names = prepare.raw_splits(config, labelled=recipe.labelled)
    tokenizer_dir = preset_dir or _scratch_tokenizer(config, splits["train"], out, local)
    tokenizer = _for_workers(config, tokenizer_dir, out, local)
    data = prepare.prepare(config, splits, tokenizer, masked_lm=recipe.masked_lm, out=out)
    num_classes = prepare.num_classes(config, data, label_names) if recipe.labelled else None

    # 2. The same number of steps on every rank, worked out from the global row counts.
    world, batch_size = config.scaling.num_workers, config.train.batch_size
    steps = steps_per_epoch(data.rows["train"], batch_size, world)
    if config.train.steps_per_epoch:
        steps = min(steps, config.train.steps_per_epoch)
    validation_split = "validation" if "validation" in data.rows else "test"
    if validation_split == "test" and "test" in data.rows:
        logger.info("no validation split given (data.validation or data.validation_fraction): validating on the "
                    "test split after every epoch")
    validation_steps, test_steps = (_evaluation_steps(data.rows, split, batch_size * world)
                                    for split in (validation_split, "test"))
    if validation_split == "test":
        test_steps = None  # reported every epoch as the validation metrics already
    elif "test" in data.rows:
        logger.info("validating on the validation split (%d rows) after every epoch; the test split (%d rows) is "
                    "evaluated once, after the last epoch", data.rows["validation"], data.rows["test"])
    cache = config.data.shard_cache
    if cache == "auto":
        # int64 columns of sequence_length values: token_ids, segment_ids, padding_mask (+ masked-LM columns).
        row_bytes = 8 * config.data.sequence_length * (len(recipe.feature_columns) + 2)
        cache = "memory" if fits_in_memory(sum(data.rows.values()), row_bytes, world) else "stream"
    plan = Plan(preset_dir=preset_dir, tokenizer_dir=tokenizer, num_classes=num_classes,
                label_names=label_names, train_rows=data.rows["train"], steps_per_epoch=steps,
                validation_split=validation_split, validation_steps=validation_steps, test_steps=test_steps,
                world_size=world, cache_shards=cache == "memory")
    logger.info("%s: %d training rows, %d workers × batch %d = global batch %d, %d steps per epoch, shards %s, "
                "output %s", config.task, plan.train_rows, world, batch_size, world * batch_size, steps,
                "kept in memory" if plan.cache_shards else "streamed every epoch", out)

    # 3. Data-parallel fit on Ray Train; each worker streams its shard of the Parquet rows.
    trainer = JaxTrainer(
        train_loop_per_worker,
        train_loop_config={"recipe": config.model_dump(), "plan": plan.to_dict(), **(_loop_extra or {})},
        scaling_config=ScalingConfig(num_workers=world, use_gpu=config.scaling.use_gpu,
                                     resources_per_worker={"CPU": config.scaling.cpus_per_worker}),
        datasets={split: data.read(split) for split in data.folders},
        dataset_config=DataConfig(execution_options=_in_order(DataConfig.default_ingest_options())),
        run_config=RunConfig(
            name="ray_train",
            storage_path=str(out) if storage.is_uri(out) else str(out.resolve()),
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return _export(out, local, result)


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


# --- the output folder -----------------------------------------------------------------------------------

def _comparable(config: RecipeConfig) -> dict:
    tree = config.model_dump()
    tree.pop("run")
    tree["train"].pop("epochs")
    return tree


def _claim_output(config: RecipeConfig) -> Path | str:
    """The output folder (or URI): new, or holding this very run (then it resumes). Another run's is refused."""
    out = storage.location(config.run.output)
    run_file = storage.join(out, RUN_FILE)
    try:
        empty = storage.is_empty(out)
        previous = None if empty or not storage.exists(run_file) else json.loads(storage.read_text(run_file))
    except storage.ERRORS as e:
        raise _unusable(out, e) from e
    if previous is not None:
        if previous != _comparable(config):
            raise RaynlpError(
                f"output folder {out} holds another run (task {previous.get('task')}, preset "
                f"{previous.get('preset')}); choose a new run.output or delete the folder")
        logger.info("output folder %s holds this run: resuming from its latest checkpoint", out)
    elif not empty:
        raise RaynlpError(f"output folder {out} is not empty and holds no raynlp run; choose a new run.output")
    try:
        storage.write_text(run_file, json.dumps(_comparable(config), indent=2))
        storage.write_text(storage.join(out, "config.yaml"), yaml.safe_dump(config.model_dump(), sort_keys=False))
    except storage.ERRORS as e:
        raise _unusable(out, e) from e
    return out


def _unusable(out: Path | str, error: Exception) -> RaynlpError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return RaynlpError(f"run.output {out} cannot be used: {reason}")


def _driver_folder(out: Path | str) -> Path:
    """Where the driver makes its files: the output folder itself, or for a URI a fresh staging folder in
    raynlp's cache whose files are uploaded to the URI."""
    if not storage.is_uri(out):
        return out
    local = storage.local_dir("staging", out, tail=0)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    return local


def _for_workers(config: RecipeConfig, tokenizer_dir: str, out: Path | str, local: Path) -> str:
    """The tokenizer as Ray Data's packers and the training workers find it on every node (`presets.resolve`
    there): a raynlp preset name or a URI as given, a tokenizer the driver made at the output URI it was
    uploaded to, a local folder as an absolute path (on a multi-node cluster, on storage every node mounts)."""
    from raynlp.presets import portable

    if config.task != "scratch":
        return portable(config.preset)  # the preset is its own tokenizer
    if storage.is_uri(out) and Path(tokenizer_dir).is_relative_to(local):
        return str(storage.join(out, *Path(tokenizer_dir).relative_to(local).parts))
    return os.path.abspath(tokenizer_dir)


def _export(out: Path | str, local: Path, result) -> TrainResult:
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RaynlpError("training ended without a checkpoint; see the logs under "
                          f"{storage.join(out, 'ray_train')}")
    with checkpoint.as_directory() as folder:
        shutil.rmtree(local / "preset", ignore_errors=True)
        shutil.copytree(Path(folder) / "preset", local / "preset")
        history = json.loads((Path(folder) / "history.json").read_text())
    (local / "metrics.json").write_text(json.dumps(history, indent=2))
    _plot_curves(history, local / "curves.png")
    if storage.is_uri(out):
        for name in ("preset", "metrics.json", "curves.png"):
            storage.upload(local / name, storage.join(out, name))
        shutil.rmtree(local)  # staged and uploaded: the URI holds the run
    tested = {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("test_")}
    if tested:
        logger.info("test split, after the last epoch: %s", ", ".join(f"{k} {v:.4g}" for k, v in tested.items()))
    preset = storage.join(out, "preset")
    logger.info("exported preset to %s (metrics in %s)", preset, storage.join(out, "metrics.json"))
    return TrainResult(output=out, preset=preset, metrics=history, checkpoint=_location(out, checkpoint.path))


def _location(out: Path | str, path: str) -> str:
    """A path inside the filesystem of `out` (as Ray Train gives checkpoints) as a path or a URI."""
    if not storage.is_uri(out):
        return path
    _, root = storage.filesystem(out)
    return str(storage.join(out, os.path.relpath(path, root)))


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

def _check_preset(config: RecipeConfig) -> str | None:
    """The local folder of the preset to start from (None for scratch), checked against the config."""
    from raynlp.data.tokenize import max_sequence_length
    from raynlp.presets import is_local, resolve

    if config.task == "scratch":
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
    return preset_dir


def _scratch_tokenizer(config: RecipeConfig, train, out: Path | str, local: Path) -> str:
    """A keras-hub tokenizer preset folder for the scratch model: the given vocabulary, or one learned here.

    It is made in the driver's folder `local`; for an output URI also uploaded there (and downloaded on resume).
    """
    import keras_hub

    folder, shared = local / "tokenizer", storage.join(out, "tokenizer")
    if storage.is_uri(out) and storage.exists(storage.join(shared, "tokenizer.json")):
        storage.download(shared, folder)
    if (folder / "tokenizer.json").exists():
        return str(folder)
    vocabulary = config.model.vocabulary
    if vocabulary is None:
        from raynlp.data import learn_vocabulary, save_vocabulary

        if isinstance(train, str):
            raise RaynlpError("task scratch learns its vocabulary from raw text; give model.vocabulary with tokenized data")
        if config.data.max_train_rows:
            train = train.limit(config.data.max_train_rows)
        logger.info("learning a %d-token WordPiece vocabulary from the training text", config.model.vocabulary_size)
        vocabulary = str(save_vocabulary(learn_vocabulary(train, config.model.vocabulary_size),
                                         local / "vocabulary.txt"))
        if storage.is_uri(out):
            storage.upload(vocabulary, storage.join(out, "vocabulary.txt"))
    elif not os.path.isfile(vocabulary):
        raise RaynlpError(f"model.vocabulary {vocabulary} does not exist; make one with `raynlp vocab`")
    keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(str(folder))
    if storage.is_uri(out):
        storage.upload(folder, shared)
    return str(folder)
