"""Every job raynlp runs, by the `task` its config names: the config schema of each and its loader.

One YAML file says what it is (`task: finetune`, `task: serve`, ...), so `raynlp submit --config FILE` knows
which entrypoint in `jobs/` to run, and checks the file against that task's schema before it submits anything.
"""

from pathlib import Path

import yaml

from raynlp._internal import config_file
from raynlp.errors import RaynlpError

TRAIN_TASKS = ("finetune", "fit", "pretrain", "scratch")
TASKS = (*TRAIN_TASKS, "evaluate", "predict", "serve", "vocab")


def schema(task: str):
    """The pydantic config class of `task`."""
    if task in TRAIN_TASKS:
        from raynlp.train.config import RecipeConfig

        return RecipeConfig
    if task == "evaluate":
        from raynlp.inference.config import EvaluateConfig

        return EvaluateConfig
    if task == "predict":
        from raynlp.inference.config import PredictConfig

        return PredictConfig
    if task == "serve":
        from raynlp.serve.config import ServeConfig

        return ServeConfig
    if task == "vocab":
        from raynlp.data.config import VocabConfig

        return VocabConfig
    raise RaynlpError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def task_of(path: str | Path) -> str:
    """The `task` a config file names."""
    path = Path(path)
    if not path.is_file():
        raise RaynlpError(f"config file {path} does not exist; see configs/ for examples")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RaynlpError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    task = tree.get("task") if isinstance(tree, dict) else None
    if task not in TASKS:
        raise RaynlpError(f"config file {path} names no task (`task:` one of {', '.join(TASKS)}); got {task!r}")
    return task


def load_task_config(task: str, path: str | Path | None = None, overrides: list[str] | None = None,
                     values: dict | None = None):
    """The validated config of `task`: file, then `--set` overrides, then flag values. A file written for another
    task is refused, saying which command runs it."""
    if path is not None and (named := task_of(path)) != task:
        raise RaynlpError(f"{path} is a {named} config; run `raynlp {named} --config {path}`")
    return config_file.load(schema(task), path, overrides, values, task=task)
