"""One recipe per workflow of the KerasNLP guide: what data it takes, the model it builds, what it exports.

A recipe is small on purpose: the data preparation, the distributed loop, checkpoints and resume are shared
(`raynlp.train.trainer` and `raynlp.train._internal`).
"""

from raynlp.train.recipes.base import Plan, Recipe
from raynlp.train.recipes.finetune import FinetuneRecipe
from raynlp.train.recipes.fit import FitRecipe
from raynlp.train.recipes.pretrain import PretrainRecipe
from raynlp.train.recipes.scratch import ScratchRecipe

RECIPES: dict[str, Recipe] = {
    "finetune": FinetuneRecipe(),
    "fit": FitRecipe(),
    "pretrain": PretrainRecipe(),
    "scratch": ScratchRecipe(),
}

__all__ = ["RECIPES", "Plan", "Recipe"]
