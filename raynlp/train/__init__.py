"""Training at scale: keras-hub models trained data-parallel across Ray Train workers.

The public tasks build on the private core in `raynlp.train._internal`: worker setup (`distributed`), feeding Ray Data
shards into `fit` (`feeding`) and per-epoch checkpoints reported to Ray Train (`checkpoint`).
"""

from raynlp.train.config import RecipeConfig, load_config
from raynlp.train.trainer import TrainResult, train

__all__ = ["RecipeConfig", "TrainResult", "load_config", "train"]
