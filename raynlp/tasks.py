"""Every job raynlp runs, by name: its config schema, the function that runs it, its help and its summary line.

    >>> config = load_task_config("finetune", "configs/finetune.yaml", ["train.epochs=3"])
    >>> result = TASKS["finetune"].run(config)

One table: the CLI's sub-commands (`raynlp finetune`, `raynlp evaluate`, ...), `raynlp.workflows.run`, the job entry
point `jobs/run.py` and `raynlp submit` are made from it. Each training recipe is a row, through
`raynlp.train.recipes.RECIPES`: a new recipe is one recipe file, one `RECIPES` entry and one YAML in `configs/`.
A YAML names its task (`task: finetune`), so a config file alone says which job it is.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raynlp._internal import config_file
from raynlp.errors import RaynlpError


@dataclass(frozen=True)
class Task:
    name: str
    help: str  # one line: the CLI's command list
    description: str  # the command's --help
    schema: str  # "module:Class" of its pydantic config
    runner: Callable  # config → result (a TrainResult, a report, a URL, ...)
    summary: Callable  # (config, result) → the lines the CLI prints
    job_args: tuple[str, ...] = ()  # added when it runs as a Ray job (jobs/run.py)

    def config_schema(self) -> type:
        module, _, name = self.schema.partition(":")
        return getattr(importlib.import_module(module), name)

    def run(self, config):
        return self.runner(config)


# --- runners: a validated config in, the Python result out ------------------------------------------------

def _train(config):
    from raynlp.train.trainer import train

    return train(config)


def _train_summary(config, result) -> str:
    from raynlp._internal import storage

    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.final.items() if isinstance(v, float))
    return (f"{config.task} finished: {shown}\npreset: {result.preset}\n"
            f"metrics: {storage.join(result.output, 'metrics.json')}")


def _vocab(config) -> Path:
    from raynlp._internal.cluster import ensure_ray
    from raynlp.data import learn_vocabulary, save_vocabulary
    from raynlp.data.vocabulary import check_new_vocabulary_file

    config.data.check_input()
    check_new_vocabulary_file(config.output)
    ensure_ray(config.address)
    vocabulary = learn_vocabulary(config.data.open(), config.size, lowercase=config.lowercase,
                                  strip_accents=config.strip_accents)
    return save_vocabulary(vocabulary, config.output)


def _vocab_summary(config, path: Path) -> str:
    return f"learned {len(path.read_text().splitlines())} WordPiece tokens into {path}"


def _evaluate(config) -> dict:
    import logging

    from raynlp._internal.cluster import ensure_ray
    from raynlp.inference import evaluate
    from raynlp.inference.classifier import describe_classifier

    config.data.check_input()
    describe_classifier(config.preset)  # refused before Ray starts, as is a missing corpus
    ensure_ray(config.address)
    _check_gpus(config)
    report = evaluate(config.data.open(), config.preset, num_actors=config.num_actors, batch_size=config.batch_size,
                      num_gpus=config.num_gpus)
    if config.output:
        os.makedirs(os.path.dirname(os.path.abspath(config.output)), exist_ok=True)
        Path(config.output).write_text(json.dumps(report, indent=2))
        logging.getLogger("raynlp").info("evaluation written to %s", config.output)
    return report


def _check_gpus(config) -> None:
    """Actors that ask for GPUs on a cluster that has none (and cannot grow any) would wait forever."""
    from raynlp._internal.cluster import cluster_nodes

    nodes, can_grow = cluster_nodes()
    if config.num_gpus and not can_grow and not any(n.gpus for n in nodes):
        raise RaynlpError(f"num_gpus={config.num_gpus:g}, but no node of this cluster has a GPU "
                          f"({', '.join(map(str, nodes))}): leave num_gpus out or join a cluster with GPUs (address)")


def _predict(config) -> dict:
    import pyarrow.parquet as pq

    from raynlp._internal import storage
    from raynlp._internal.cluster import ensure_ray
    from raynlp.inference import predict_dataset
    from raynlp.inference.classifier import describe_classifier

    storage.check_unused(config.output)
    config.data.check_input()
    describe_classifier(config.preset)  # refused before Ray starts, as is a missing corpus
    ensure_ray(config.address)
    _check_gpus(config)
    predictions = predict_dataset(config.data.open(), config.preset, num_actors=config.num_actors,
                                  batch_size=config.batch_size, num_gpus=config.num_gpus)
    output = str(storage.location(config.output))  # absolute: Ray Data's write tasks run elsewhere
    predictions.write_parquet(output)
    return {"rows": pq.ParquetDataset(output).read(columns=[]).num_rows, "output": output}


def _predict_summary(config, result: dict) -> str:
    return (f"predicted {result['rows']} rows into Parquet shards in {result['output']} "
            "(columns: text, predicted_label, predicted_name, probabilities, and any input columns)")


def _serve(config) -> str:
    from raynlp.serve import start

    return start(config)


def _serve_summary(config, url: str) -> str:
    return (f"serving {config.preset} at {url}  (POST /v1/classify, GET /v1/model, GET /healthz)\n"
            f"  try: raynlp classify --url {url} \"a gem of a film\"")


# --- the table ---------------------------------------------------------------------------------------------

def _training_tasks() -> list[Task]:
    from raynlp.train.recipes import RECIPES

    return [Task(name, recipe.summary,
                 f"{recipe.summary[0].upper()}{recipe.summary[1:]}, data-parallel on Ray Train. The config is "
                 "validated before Ray starts; the output folder gets preset/, metrics.json, curves.png and "
                 "checkpoints. Running the same config into the same output folder again resumes it.",
                 "raynlp.train.config:RecipeConfig", _train, _train_summary)
            for name, recipe in RECIPES.items()]


TASKS: dict[str, Task] = {task.name: task for task in [
    *_training_tasks(),
    Task("vocab", "learn a WordPiece vocabulary from a corpus, counting words on Ray Data",
         "Words are counted per block on Ray Data, the counts merged, then keras-hub's WordPiece learner builds "
         "the vocabulary (equal to keras_hub.tokenizers.compute_word_piece_vocabulary).",
         "raynlp.data.config:VocabConfig", _vocab, _vocab_summary),
    Task("evaluate", "accuracy, loss and confusion matrix of a trained classifier over a labelled corpus",
         "Run a classifier folder (a training run's preset/) over labelled text on a Ray Data actor pool and "
         "report accuracy, mean cross-entropy, per-class precision/recall and the confusion matrix as JSON.",
         "raynlp.inference.config:EvaluateConfig", _evaluate, lambda config, report: json.dumps(report, indent=2)),
    Task("predict", "classify a corpus with a trained classifier into Parquet (batch inference)",
         "Run a classifier folder over a corpus of any size on a Ray Data actor pool and write Parquet shards "
         "with the predicted label, its name and the class probabilities of every row.",
         "raynlp.inference.config:PredictConfig", _predict, _predict_summary),
    Task("serve", "serve a classifier over HTTP on Ray Serve: batched, autoscaled",
         "Run a classifier folder (a training run's preset/) as a Ray Serve app with a FastAPI ingress: "
         "POST /v1/classify {\"texts\": [...]}, GET /v1/model, GET /healthz. Texts from concurrent requests are "
         "batched; replicas scale with the load. Binds 127.0.0.1 unless --host says otherwise. With --export, "
         "writes the app as a Serve config file (for `serve deploy` and a KubeRay RayService) and starts nothing.",
         "raynlp.serve.config:ServeConfig", _serve, _serve_summary,
         job_args=("--detach",)),  # a job deploys the app and ends; the app stays up on the cluster
]}


def task(name: str) -> Task:
    if name not in TASKS:
        raise RaynlpError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_of(path: str | Path) -> str:
    """The `task` a config file names."""
    tree = config_file.read_yaml(Path(path))
    name = tree.get("task")
    if name not in TASKS:
        raise RaynlpError(f"config file {path} names no task (`task:` one of {', '.join(TASKS)}); got {name!r}")
    return name


def job_command(argv: list[str]) -> list[str]:
    """The `raynlp` command line a Ray job runs: `[TASK] --config FILE ...`, the task from the file when not named,
    with what the task adds as a job (`job_args`)."""
    if argv and argv[0] in TASKS:
        name, argv = argv[0], argv[1:]
    else:
        if "--config" not in argv[:-1]:
            raise RaynlpError(f"a job needs --config FILE (or a task first: one of {', '.join(TASKS)})")
        name = task_of(argv[argv.index("--config") + 1])
    return [name, *argv, *task(name).job_args]


def load_task_config(name: str, path: str | Path | None = None, overrides: list[str] | None = None,
                     values: dict | None = None):
    """The validated config of task `name`: file, then `--set` overrides, then flag values. A file written for
    another task is refused, saying which command runs it."""
    if path is not None and (named := task_of(path)) != name:
        raise RaynlpError(f"{path} is a {named} config; run `raynlp {named} --config {path}`")
    return config_file.load(task(name).config_schema(), path, overrides, values, task=name)
