"""Run a recipe on Ray Train: prepare the data on Ray Data, fit on N workers, export a preset.

    >>> from raynlp.train import load_config, train
    >>> result = train(load_config("configs/finetune.yaml", ["scaling.num_workers=2"]))
    >>> result.preset          # runs/finetune/preset: BertTextClassifier.from_preset(result.preset)

The output folder holds `preset/` (the export), `metrics.json` and `curves.png` (per epoch), `config.yaml`
(what ran) and `ray_train/` (Ray Train's checkpoints). Running the same config into the same folder again
resumes from the latest checkpoint instead of starting over.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from raynlp.errors import RaynlpError
from raynlp.train.config import RecipeConfig
from raynlp.train.recipes import RECIPES, Plan

logger = logging.getLogger(__name__)

RUN_FILE = "raynlp_run.json"
# Run settings that may change between a run and its resumption.
_RESUMABLE_CHANGES = ("run", "train.epochs")


@dataclass(frozen=True)
class TrainResult:
    output: Path
    preset: Path
    metrics: list[dict]  # one entry per epoch

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


def train(config: RecipeConfig, *, _loop_extra: dict | None = None) -> TrainResult:
    """Train `config` to the end (or resume it) and export its preset."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxTrainer

    from raynlp._internal.cluster import ensure_ray
    from raynlp.train._internal.feeding import steps_per_epoch
    from raynlp.train._internal.loop import train_loop_per_worker

    out = _claim_output(config)
    ensure_ray(config.run.address)
    recipe = RECIPES[config.task]
    splits = _load_splits(config)
    preset_dir, tokenizer_dir = _preset_and_tokenizer(config, splits["train"], out)
    num_classes = _num_classes(config, splits["train"]) if recipe.labelled else None
    train_rows = splits["train"].count()
    world = config.scaling.num_workers
    steps = steps_per_epoch(train_rows, config.train.batch_size, world)
    if config.train.steps_per_epoch:
        steps = min(steps, config.train.steps_per_epoch)
    validation_steps = None
    if splits.get("test") is not None:
        test_rows = splits["test"].count()
        validation_steps = test_rows // (config.train.batch_size * world) or None
    plan = Plan(preset_dir=preset_dir, tokenizer_dir=tokenizer_dir, num_classes=num_classes, train_rows=train_rows,
                steps_per_epoch=steps, validation_steps=validation_steps, world_size=world)
    tokenized = {name: _tokenize(config, recipe, ds, tokenizer_dir) for name, ds in splits.items() if ds is not None}
    logger.info("%s: %d training rows, %d workers × batch %d = global batch %d, %d steps per epoch, output %s",
                config.task, train_rows, world, config.train.batch_size, world * config.train.batch_size,
                steps, out)

    trainer = JaxTrainer(
        train_loop_per_worker,
        train_loop_config={"recipe": config.model_dump(), "plan": plan.to_dict(), **(_loop_extra or {})},
        scaling_config=ScalingConfig(num_workers=world, use_gpu=config.scaling.use_gpu,
                                     resources_per_worker={"CPU": config.scaling.cpus_per_worker}),
        datasets=tokenized,
        run_config=RunConfig(
            name="ray_train",
            storage_path=str(out.resolve()),
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return _export(out, result)


# --- the output folder -----------------------------------------------------------------------------------

def _comparable(config: RecipeConfig) -> dict:
    tree = config.model_dump()
    tree.pop("run")
    tree["train"].pop("epochs")
    return tree


def _claim_output(config: RecipeConfig) -> Path:
    """The output folder: new, or holding this very run (then it resumes). Another run's folder is refused."""
    out = Path(config.run.output)
    run_file = out / RUN_FILE
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous != _comparable(config):
            raise RaynlpError(
                f"output folder {out} holds another run (task {previous.get('task')}, preset "
                f"{previous.get('preset')}); choose a new run.output or delete the folder")
        logger.info("output folder %s holds this run: resuming from its latest checkpoint", out)
    elif out.exists() and any(out.iterdir()):
        raise RaynlpError(f"output folder {out} is not empty and holds no raynlp run; choose a new run.output")
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(_comparable(config), indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    return out


def _export(out: Path, result) -> TrainResult:
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RaynlpError(f"training ended without a checkpoint; see the logs under {out / 'ray_train'}")
    preset = out / "preset"
    with checkpoint.as_directory() as folder:
        shutil.rmtree(preset, ignore_errors=True)
        shutil.copytree(Path(folder) / "preset", preset)
        history = json.loads((Path(folder) / "history.json").read_text())
    (out / "metrics.json").write_text(json.dumps(history, indent=2))
    _plot_curves(history, out / "curves.png")
    logger.info("exported preset to %s (metrics in %s)", preset, out / "metrics.json")
    return TrainResult(output=out, preset=preset, metrics=history)


def _plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    keys = [k for k in ("loss", "val_loss", "sparse_categorical_accuracy", "val_sparse_categorical_accuracy")
            if any(k in h for h in history)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for key in keys:
        ax = axes[1] if "accuracy" in key else axes[0]
        ax.plot(epochs, [h.get(key) for h in history], marker="o", label=key.replace("sparse_categorical_", ""))
    for ax, title in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- data ------------------------------------------------------------------------------------------------

def _is_tokenized(path: str | None) -> bool:
    from raynlp.data.tokenize import MANIFEST

    return bool(path) and "://" not in path and (Path(path) / MANIFEST).exists()


def _load_splits(config: RecipeConfig) -> dict:
    """Raw (or already tokenized) train and test splits, limited to the configured row counts."""
    import ray.data

    from raynlp import datasets
    from raynlp.data import read_corpus

    d = config.data
    if d.dataset:
        splits = datasets.load(d.dataset)
    else:
        def read(path):
            if path is None:
                return None
            if _is_tokenized(path):
                _check_manifest(path, config)
                return ray.data.read_parquet(path)
            return read_corpus(path, format=d.format, text_column=d.text_column)

        splits = {"train": read(d.train), "test": read(d.test)}
    recipe = RECIPES[config.task]
    columns = splits["train"].schema().names
    if recipe.labelled and "label" not in columns:
        raise RaynlpError(f"task {config.task} needs labelled data, but the training data has no label column "
                          f"(columns: {', '.join(columns)}); use class folders, a label column, or task pretrain")
    if d.max_train_rows:
        splits["train"] = splits["train"].limit(d.max_train_rows)
    if d.max_test_rows and splits.get("test") is not None:
        splits["test"] = splits["test"].limit(d.max_test_rows)
    return splits


def _check_manifest(path: str, config: RecipeConfig) -> None:
    from raynlp.data.tokenize import MANIFEST

    manifest = json.loads((Path(path) / MANIFEST).read_text())
    if manifest["sequence_length"] != config.data.sequence_length:
        raise RaynlpError(f"{path} was tokenized at sequence length {manifest['sequence_length']}, the config says "
                          f"data.sequence_length={config.data.sequence_length}; make them agree")
    if bool(manifest.get("masking")) != RECIPES[config.task].masked_lm:
        raise RaynlpError(f"{path} was tokenized {'with' if manifest.get('masking') else 'without'} masked-LM "
                          f"masking, which task {config.task} cannot use")


def _num_classes(config: RecipeConfig, train) -> int:
    low, high = int(train.min("label")), int(train.max("label"))
    if low < 0:
        raise RaynlpError(f"labels must be class ids 0..n-1; the training data holds label {low}")
    seen = high + 1
    wanted = config.model.num_classes
    if wanted is not None and wanted < seen:
        raise RaynlpError(f"model.num_classes is {wanted}, but the training data holds label {high} "
                          f"({seen} classes); raise model.num_classes or fix the labels")
    return wanted or max(seen, 2)


def _preset_and_tokenizer(config: RecipeConfig, train, out: Path) -> tuple[str | None, str]:
    from raynlp.data.tokenize import max_sequence_length
    from raynlp.presets import is_local, resolve

    if config.task == "scratch":
        return None, _scratch_tokenizer(config, train, out)
    preset_dir = resolve(config.preset)
    if not is_local(preset_dir):
        raise RaynlpError(f"preset {config.preset!r} is a hub handle; training needs a raynlp preset or a local folder")
    limit = max_sequence_length(preset_dir)
    if limit and config.data.sequence_length > limit:
        raise RaynlpError(f"data.sequence_length {config.data.sequence_length} is above the maximum {limit} of "
                          f"preset {config.preset}")
    return preset_dir, preset_dir


def _scratch_tokenizer(config: RecipeConfig, train, out: Path) -> str:
    """A keras-hub tokenizer preset folder for the scratch model: the given vocabulary, or one learned here."""
    import keras_hub

    folder = out / "tokenizer"
    if (folder / "tokenizer.json").exists():
        return str(folder)
    vocabulary = config.model.vocabulary
    if vocabulary is None:
        from raynlp.data import learn_vocabulary, save_vocabulary

        if "text" not in train.schema().names:
            raise RaynlpError("task scratch learns its vocabulary from raw text; give model.vocabulary with tokenized data")
        logger.info("learning a %d-token WordPiece vocabulary from the training text", config.model.vocabulary_size)
        vocabulary = str(save_vocabulary(learn_vocabulary(train, config.model.vocabulary_size), out / "vocabulary.txt"))
    elif not os.path.isfile(vocabulary):
        raise RaynlpError(f"model.vocabulary {vocabulary} does not exist; make one with `raynlp vocab`")
    keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(str(folder))
    return str(folder)


def _tokenize(config: RecipeConfig, recipe, dataset, tokenizer_dir: str):
    from raynlp.data import MaskingConfig, tokenize_dataset

    if "token_ids" in dataset.schema().names:
        return dataset  # a `raynlp tokenize` folder
    masking = None
    if recipe.masked_lm:
        m = config.model.masking
        masking = MaskingConfig(selection_rate=m.selection_rate, max_selections=m.max_selections,
                                mask_token_rate=m.mask_token_rate, random_token_rate=m.random_token_rate,
                                seed=config.train.seed)
    return tokenize_dataset(dataset, tokenizer_dir, sequence_length=config.data.sequence_length,
                            text_column="text", masking=masking, num_actors=config.data.tokenizer_actors)
