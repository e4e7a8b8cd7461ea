"""Typed, validated recipe configs: one YAML per workflow in `configs/`, overridable with `--set a.b=value`.

A config is checked completely before any Ray resource is taken; an error names the field:

    raynlp: error: config field train.batch_size: Input should be greater than 0 (got -1)
"""

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from raynlp._internal import config_file
from raynlp._internal.cluster import ADDRESS_HELP
from raynlp._internal.config_file import Section as _Section
from raynlp.data.config import PACKING_ACTORS, MaskingSettings
from raynlp.data.corpus import Format
from raynlp.train.recipes import RECIPES

logger = logging.getLogger(__name__)


class DataSettings(_Section):
    """Where the text comes from and how it is tokenized."""

    dataset: str | list[str] | None = Field(
        None, description="a raynlp data set name (`raynlp datasets list`), or a list of them: each split is theirs "
                          "joined (the training rows shuffled together)")
    train: str | None = Field(None, description="training corpus: path, glob, URI, or a `raynlp tokenize` folder")
    validation: str | None = Field(None, description="corpus validated on after every epoch, same kinds as `train` "
                                                     "(default: data.validation_fraction, else the test split)")
    validation_fraction: float | None = Field(None, gt=0, lt=1, description="carve this share of the training rows "
                                                                           "out as the validation split (seeded)")
    test: str | None = Field(None, description="evaluation corpus, same kinds as `train`: reported once at the end "
                                               "when a validation split is given, else validated on every epoch")
    format: Format | None = None
    text_column: str = "text"
    encoding: str = Field("utf-8", description="text encoding of the corpus files, e.g. latin-1")
    skip_bad_files: bool = Field(False, description="leave out empty or unreadable corpus files (named in the log) "
                                                    "instead of stopping")
    sequence_length: int = Field(128, ge=8, le=4096)
    max_train_rows: int | None = Field(None, gt=0, description="use only this many training rows (small runs): "
                                                                "documents, where pretraining packs them")
    max_test_rows: int | None = Field(None, gt=0, description="use only this many rows of the test and validation splits")
    packing: Literal["none", "documents", "whole_documents"] | None = Field(
        None, description="documents: join the documents into full windows of sequence_length (masked-LM "
                          "pretraining's default); whole_documents: the same, but a document that fits in a window "
                          "is never split (it starts the next window, the rest padded), so every window starts "
                          "with a document; none: one row a document, cut at sequence_length")
    max_document_tokens: int | None = Field(
        None, ge=1, description="pack only each document's first N tokens, as a row a document keeps its first "
                                "sequence_length - 2: pretraining for a task that reads short texts spends no steps "
                                "on the rest of long documents (packing only)")
    tokenizer_actors: int = Field(PACKING_ACTORS, ge=1, description="Ray Data actors that tokenize the corpus before training")
    shard_cache: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory: each worker reads its shard once and keeps it in memory; stream: read it "
                            "from storage every epoch (shards larger than memory); auto: memory up to 1 GiB a worker")

    @field_validator("dataset")
    @classmethod
    def _known_datasets(cls, dataset):
        from raynlp.datasets.registry import DATASETS

        names = [dataset] if isinstance(dataset, str) else dataset or []
        if isinstance(dataset, list) and (not names or len(set(names)) < len(names)):
            raise ValueError("a list of data sets names at least one, each once")
        for name in names:
            if name not in DATASETS:
                raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
        return names[0] if isinstance(dataset, list) and len(names) == 1 else dataset

    @property
    def datasets(self) -> list[str]:
        """The named data sets, one or several (empty for a corpus read from data.train)."""
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset or [])

    @model_validator(mode="after")
    def _one_source(self):
        if (self.dataset is None) == (self.train is None):
            raise ValueError("give exactly one of data.dataset and data.train")
        if self.validation is not None and self.validation_fraction is not None:
            raise ValueError("give at most one of data.validation and data.validation_fraction")
        if self.dataset is not None and self.validation is not None:
            raise ValueError("data.validation is a path beside data.train; with data.dataset use "
                             "data.validation_fraction")
        return self


class ModelSettings(_Section):
    num_classes: int | None = Field(None, ge=2, description="classes; inferred from the labels when left out")
    dropout: float = Field(0.1, ge=0, lt=1)
    builder: str | None = Field(None, description="`fit` only: 'package.module:function' returning a keras.Model")
    freeze_backbone: bool = False
    vocabulary: str | None = Field(None, description="`scratch` only: a WordPiece vocabulary file (raynlp vocab)")
    vocabulary_size: int = Field(8000, ge=100, description="`scratch`: size of the vocabulary learned when none given")
    hidden_dim: int = Field(64, ge=8, description="`scratch`: embedding and encoder width")
    num_layers: int = Field(1, ge=1, description="`scratch`: TransformerEncoder layers")
    num_heads: int = Field(2, ge=1)
    intermediate_dim: int = Field(128, ge=8)
    masking: MaskingSettings = MaskingSettings()
    document_attention: bool | None = Field(
        None, description="masked-LM pretraining on packed windows: each document attends only to itself and the "
                          "window's [CLS] and counts its positions from its own start, as in a row of its own (needs "
                          "dynamic masking); left out: on wherever windows are packed and masked dynamically")


class OptimizerSettings(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    learning_rate: float = Field(5e-5, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    scale_learning_rate: bool = Field(False, description="multiply the learning rate by the number of workers")
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: linear warm-up to learning_rate, then cosine decay to 0 at the last step")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="share of all steps spent warming up (cosine)")


class TrainSettings(_Section):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1, description="per worker; the global batch is batch_size × num_workers × "
                                                  "gradient_accumulation_steps")
    seed: int = 0
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="bfloat16 / float16: mixed precision (half-precision compute, float32 weights; "
                               "float16 with loss scaling); the export is a float32 preset either way")
    mixed_precision: bool | None = Field(None, description="deprecated: use train.precision")
    gradient_accumulation_steps: int = Field(1, ge=1, description="optimizer steps average this many batches' "
                                                                  "gradients (a larger global batch in the same memory)")
    shuffle: bool = Field(True, description="rows in a random order seeded by train.seed: a corpus read from a path "
                                            "is shuffled on its way to the tokenized shards, and every epoch after "
                                            "the first deals each worker's rows in a new order")
    steps_per_epoch: int | None = Field(None, ge=1, description="cap on optimizer steps per epoch (small runs)")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also checkpoint within an epoch, every "
                                                                       "this many optimizer steps (resume there)")
    checkpoint_every_minutes: float | None = Field(None, gt=0, description="also checkpoint within an epoch when "
                                                                           "this long has passed since the last one")
    monitor: str = Field("val_loss", description="the metric that picks the best checkpoint (train.export) and "
                                                 "early stopping: loss, accuracy, val_loss or val_accuracy")
    monitor_mode: Literal["auto", "min", "max"] = Field("auto", description="auto: max for accuracies, else min")
    export: Literal["last", "best"] = Field("last", description="the checkpoint exported as the preset: the last "
                                                                "epoch's, or the epoch with the best train.monitor")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop when train.monitor has not improved "
                                                                        "for this many epochs (evaluations)")
    log_every_steps: int = Field(10, ge=1, description="optimizer steps between TensorBoard points (and checks of "
                                                       "train.checkpoint_every_minutes)")

    @model_validator(mode="before")
    @classmethod
    def _precision_from_the_old_flag(cls, values):
        if isinstance(values, dict) and values.get("mixed_precision") is not None:
            logger.warning("train.mixed_precision is deprecated: set train.precision (bfloat16 or float16) "
                           "instead; taken as train.precision=bfloat16")
            values = dict(values)
            if values.pop("mixed_precision") and values.get("precision", "float32") == "float32":
                values["precision"] = "bfloat16"
        return values

    @property
    def mode(self) -> Literal["min", "max"]:
        """Whether train.monitor is better low or high."""
        if self.monitor_mode != "auto":
            return self.monitor_mode
        return "max" if self.monitor.endswith("accuracy") else "min"


class ScalingSettings(_Section):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: int = Field(1, ge=1, description="GPUs each worker process drives (scaling.use_gpu): the "
                                                      "worker's batch is split across them, so train.batch_size "
                                                      "must be a multiple of it")

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self):
        if self.gpus_per_worker > 1 and not self.use_gpu:
            raise ValueError(f"scaling.gpus_per_worker={self.gpus_per_worker} needs scaling.use_gpu=true")
        return self

    def resources_per_worker(self) -> dict[str, float]:
        """What Ray places each training worker with (Ray Train's JaxTrainer hands the GPUs to JAX)."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}


class RunSettings(_Section):
    output: str = Field("runs/out", description="folder for the tokenized data, checkpoints and the exported preset: "
                                                "a local path or a storage URI (s3://bucket/runs/x, gs://…, any URI "
                                                "pyarrow opens); on a multi-node cluster, a URI or a path every node "
                                                "mounts")
    max_failures: int = Field(2, ge=0, description="worker failures to recover from before giving up")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in the run's folder: the latest, and the "
                                                       "best by train.monitor where train.export is best")
    feed_timeout_s: float = Field(600, gt=0, description="end the run when a worker's data feed gives no batch for "
                                                         "this long (it names what waits for resources) instead "
                                                         "of waiting forever")
    wait_for_workers_s: float | None = Field(600, gt=0, description="how long a run waits for the cluster to place "
                                                                   "its workers (at the start, or again after losing "
                                                                   "a node) before it stops, its checkpoints kept; "
                                                                   "null: as long as it takes (a cluster that "
                                                                   "autoscales)")
    shared_filesystem: bool = Field(False, description="every node of the cluster mounts run.output at the same "
                                                       "path (NFS, a shared volume): a local run.output is then "
                                                       "allowed on a cluster of several nodes")
    address: str | None = Field(None, description=ADDRESS_HELP)


class TrackingSettings(_Section):
    """Experiment tracking beside TensorBoard (which every run writes to <run.output>/tensorboard)."""

    mlflow_uri: str | None = Field(None, description="also log the config and metrics to this MLflow tracking URI "
                                                     "(http://host:5000, file:///path, databricks); needs the mlflow "
                                                     "extra: pip install 'raynlp[mlflow]'")
    mlflow_experiment: str = Field("raynlp", description="the MLflow experiment the run is logged under")

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_installed(cls, uri):
        if uri is not None:
            try:
                import mlflow  # noqa: F401
            except ImportError:
                raise ValueError("MLflow is not installed: pip install 'raynlp[mlflow]'") from None
        return uri


class RecipeConfig(_Section):
    task: str = Field(description="the recipe: a name in raynlp.train.recipes.RECIPES")
    preset: str | None = Field(None, description="keras-hub preset: raynlp name, keras-hub handle or folder")
    data: DataSettings
    model: ModelSettings = ModelSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    train: TrainSettings = TrainSettings()
    scaling: ScalingSettings = ScalingSettings()
    run: RunSettings = RunSettings()
    tracking: TrackingSettings = TrackingSettings()

    @field_validator("task")
    @classmethod
    def _a_recipe(cls, task: str) -> str:
        if task not in RECIPES:
            raise ValueError(f"no recipe {task!r}; recipes: {', '.join(RECIPES)}")
        return task

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, values):
        """`data.packing` left out: the recipe's (pretraining packs documents, the labelled tasks do not)."""
        if not isinstance(values, dict) or values.get("task") not in RECIPES:
            return values
        data, packing = values.get("data"), RECIPES[values["task"]].packing
        if isinstance(data, dict) and data.get("packing") is None:
            values = {**values, "data": {**data, "packing": packing}}
        elif isinstance(data, DataSettings) and data.packing is None:
            values = {**values, "data": data.model_copy(update={"packing": packing})}
        return values

    @model_validator(mode="after")
    def _task_needs(self):
        RECIPES[self.task].check(self)
        if self.train.batch_size % self.scaling.gpus_per_worker:
            raise ValueError(f"train.batch_size={self.train.batch_size} is split across a worker's "
                             f"scaling.gpus_per_worker={self.scaling.gpus_per_worker} GPUs: give a multiple of it")
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **defaults) -> RecipeConfig:
    """Read a YAML recipe, apply `--set` overrides, validate. Nothing starts before this succeeds."""
    return config_file.load(RecipeConfig, path, overrides, **defaults)
