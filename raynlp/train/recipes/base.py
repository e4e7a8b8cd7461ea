"""What every recipe provides, and the facts the driver works out before training starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from raynlp.data.tokenize import PACKED_FEATURES

if TYPE_CHECKING:  # the config validates `task` against RECIPES: a recipe only names it
    from raynlp.train._internal.run_folder import RunFolder
    from raynlp.train.config import RecipeConfig


@dataclass(frozen=True)
class Plan:
    """Facts the driver settles once and hands to every worker."""

    preset_dir: str | None  # the backbone to start from (None for scratch)
    tokenizer_dir: str  # the preset whose tokenizer made the token ids: a folder on workers (a name or URI until
    # `loop._on_this_node` resolves it there)
    num_classes: int | None
    label_names: list[str] | None  # class names (a data set's, class folders, string labels); None for bare ids
    train_rows: int
    steps_per_epoch: int  # batches per epoch on every worker: optimizer steps × train.gradient_accumulation_steps
    validation_steps: int | None
    world_size: int
    validation_split: str = "test"  # the split validated on after every epoch
    test_steps: int | None = None  # a test split apart from validation: evaluated once, after the last epoch
    cache_shards: bool = True  # workers read their shards once and keep them in memory
    split_folders: dict[str, str] = field(default_factory=dict)  # split → its Parquet shards (the run's data/)
    split_rows: dict[str, int] = field(default_factory=dict)  # split → the rows of it used (its first ones)
    tensorboard_dir: str | None = None  # where rank 0 writes TensorBoard event files (a path or URI)
    mlflow_run_id: str | None = None  # the MLflow run rank 0 logs to (tracking.mlflow_uri)

    def to_dict(self) -> dict:
        return asdict(self)


class Recipe:
    """One workflow: its one-line summary (the CLI's help), the data it takes, its model, its export."""

    summary: str = ""
    labelled: bool = True
    masked_lm: bool = False
    needs_preset: bool = True  # starts from a preset's backbone and tokenizer
    feature_columns: tuple[str, ...] = PACKED_FEATURES
    label_column: str | None = "label"
    weight_column: str | None = None
    packing: str = "none"  # `data.packing` when the config leaves it out
    metrics: tuple[str, ...] = ("loss", "accuracy")  # what `compile_model` has `fit` report (and `val_` of each)

    def check(self, config: RecipeConfig) -> None:
        """Refuse a config this recipe cannot run: a ValueError, which the config's validation reports."""
        if self.needs_preset and not config.preset:
            raise ValueError(f"task {config.task} needs a preset")
        if config.model.document_attention and not self.masked_lm:
            raise ValueError(f"model.document_attention keeps attention within the documents of packed windows for "
                             f"masked-LM pretraining; task {config.task} trains on labelled rows: leave it out")
        if config.data.packing != "none" and not self.masked_lm:
            raise ValueError(f"data.packing={config.data.packing} joins documents into windows for masked-LM "
                             f"pretraining; task "
                             f"{config.task} trains on labelled rows: leave data.packing out or set it to none")
        if config.data.max_document_tokens and config.data.packing == "none":
            raise ValueError("data.max_document_tokens cuts documents before they are packed; data.packing=none "
                             "cuts each row at data.sequence_length already: leave it out or pack the documents")
        if self.labelled and len(config.data.datasets) > 1:
            from raynlp.datasets.registry import DATASETS

            labels = {name: DATASETS[name].label_names for name in config.data.datasets}
            if len(set(labels.values())) > 1:
                raise ValueError(f"data.dataset: task {config.task} joins labelled sets whose labels agree; "
                                 + ", ".join(f"{n}: {', '.join(v) if v else 'unlabelled'}" for n, v in labels.items()))
        self._check_monitor(config)

    def _check_monitor(self, config: RecipeConfig) -> None:
        train, data = config.train, config.data
        reported = [*self.metrics, *(f"val_{m}" for m in self.metrics)]
        if train.monitor not in reported:
            raise ValueError(f"train.monitor: task {config.task} reports {', '.join(reported)}; got {train.monitor!r}")
        evaluated = bool(data.dataset or data.validation or data.validation_fraction or data.test)
        if train.monitor.startswith("val_") and not evaluated:
            for field, asked in (("train.export", train.export == "best"),
                                 ("train.early_stopping_patience", train.early_stopping_patience)):
                if asked:
                    raise ValueError(f"{field}: train.monitor {train.monitor} needs validation data; give "
                                     "data.validation, data.validation_fraction or data.test, or monitor "
                                     f"{train.monitor.removeprefix('val_')}")

    def inputs(self, config: RecipeConfig) -> tuple[str, ...]:
        """The columns the model takes, as a worker deals them: `feature_columns`, and what the masker adds."""
        return self.feature_columns

    def masker(self, config: RecipeConfig, plan: Plan, split: str):
        """What masks each batch of `split` as a worker deals it (dynamic masked-LM masking), or None."""
        return None

    def tokenizer(self, config: RecipeConfig, train, run: RunFolder) -> str:
        """The tokenizer preset the corpus is packed with, as Ray Data's packers and the training workers find
        it on every node: the preset's own, unless the recipe makes one (`train`: the raw training split)."""
        from raynlp.presets import portable

        return portable(config.preset)

    def build(self, config: RecipeConfig, plan: Plan):
        """The compiled keras.Model, identical on every rank (built after the shared seed is set)."""
        raise NotImplementedError

    def export(self, model, config: RecipeConfig, plan: Plan, folder: str) -> None:
        """Write the trained model into `folder` as a preset keras-hub (or raynlp serving) can load."""
        raise NotImplementedError

    def write_card(self, folder: str, model, config: RecipeConfig, plan: Plan, *, class_name: str,
                   model_file: str | None = None) -> None:
        """The `raynlp_model.json` that lets evaluation and serving load the export in any process, with the
        model's size as trained (all parameters, and those training updated)."""
        from raynlp.presets.model_card import ModelCard

        trainable = sum(math.prod(v.shape) for v in model.trainable_weights)

        ModelCard(task=config.task, class_name=class_name, features=list(self.feature_columns),
                  sequence_length=config.data.sequence_length, model_file=model_file,
                  num_classes=plan.num_classes if self.labelled else None,
                  label_names=plan.label_names if self.labelled else None,
                  source_preset=config.preset,
                  extra={"parameters": int(model.count_params()), "trainable_parameters": trainable,
                         "trained_dtype_policy": model.dtype_policy.name}).write(folder)


def compile_model(model, config: RecipeConfig, plan: Plan, *, weighted: bool = False):
    """Compile with the configured optimizer, a from-logits cross-entropy and one metric, `accuracy`.

    `weighted`: the data carries sample weights (masked-LM `mask_weights`), so accuracy counts weighted rows and
    the loss is the mean over the weighted positions: Keras' default divides by every position, so a masked-LM
    loss would shrink with the share of `max_selections` slots left empty.
    Both metric lists are given explicitly: keras-hub tasks would otherwise add their own default metrics.
    """
    import keras

    opt = config.optimizer
    rate = opt.learning_rate * (plan.world_size if opt.scale_learning_rate else 1)
    if opt.schedule == "cosine":
        total = plan.steps_per_epoch * config.train.epochs
        warmup = int(total * opt.warmup_fraction)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else rate, decay_steps=max(total - warmup, 1), alpha=0.0,
            warmup_target=rate if warmup else None, warmup_steps=warmup)
    # Keras accumulates: each `fit` step adds a batch's gradients, every k-th applies their mean. The schedule
    # counts `fit` steps (so it spans the run as without), `optimizer.iterations` counts updates.
    accumulation = config.train.gradient_accumulation_steps
    common = {"learning_rate": rate, "gradient_accumulation_steps": accumulation if accumulation > 1 else None}
    if opt.name == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=opt.weight_decay, **common)
    elif opt.name == "adam":
        optimizer = keras.optimizers.Adam(**common)
    else:
        optimizer = keras.optimizers.SGD(**common)
    accuracy = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight" if weighted else "sum_over_batch_size"),
        metrics=[] if weighted else accuracy,
        weighted_metrics=accuracy if weighted else [],
    )
    return model
