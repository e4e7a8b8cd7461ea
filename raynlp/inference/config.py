"""Typed configs for batch inference jobs: `evaluate` a classifier on labelled text, `predict` a corpus."""

from typing import Literal

from pydantic import Field, model_validator

from raynlp._internal.cluster import ADDRESS_HELP
from raynlp._internal.config_file import Section
from raynlp.data.config import CorpusSettings


class _InferenceConfig(Section):
    preset: str = Field(description="classifier folder, e.g. runs/finetune/preset, or its storage URI "
                                    "(s3://bucket/runs/finetune/preset)")
    data: CorpusSettings
    num_actors: int = Field(1, ge=1, description="inference actors")
    num_gpus: float = Field(0, ge=0, description="GPUs each actor takes; below 1, actors share a GPU (JAX then "
                                                 "takes its memory as it needs it)")
    batch_size: int = Field(32, ge=1, description="rows per predict call")
    address: str | None = Field(None, description=ADDRESS_HELP)


class EvaluateConfig(_InferenceConfig):
    task: Literal["evaluate"] = "evaluate"
    output: str | None = Field(None, description="also write the JSON report to this file")

    @model_validator(mode="before")
    @classmethod
    def _test_split_by_default(cls, tree):
        # Evaluation reads a data set's test split unless told otherwise.
        if isinstance(tree, dict) and isinstance(tree.get("data"), dict) and "split" not in tree["data"]:
            tree = {**tree, "data": {**tree["data"], "split": "test"}}
        return tree


class PredictConfig(_InferenceConfig):
    task: Literal["predict"] = "predict"
    output: str = Field(description="new folder for the Parquet shards")
