"""The KerasNLP guide's six levels as a few lines of Python each, on a Ray cluster.

    >>> from raynlp import workflows as wf
    >>> wf.classify("runs/finetune/preset", ["a gem of a film"])                          # level 1, one process
    >>> wf.evaluate("runs/finetune/preset", dataset="rotten_tomatoes")                   # level 1, at scale
    >>> ft = wf.finetune("minilm_l6_en_uncased", dataset="rotten_tomatoes", epochs=1)    # level 2
    >>> wf.tokenize("minilm_l6_en_uncased", "runs/tok/train", dataset="rotten_tomatoes")  # level 3 ...
    >>> wf.finetune("minilm_l6_en_uncased", train="runs/tok/train", test="runs/tok/test")  # ... from the cache
    >>> wf.fit("raynlp.train.examples.frozen_backbone:build", "minilm_l6_en_uncased", dataset="rotten_tomatoes")  # 4
    >>> bb = wf.pretrain("minilm_l6_en_uncased", dataset="movie_reviews")                 # level 5
    >>> wf.finetune(bb.preset, dataset="rotten_tomatoes")                                  # ... then fine-tune it
    >>> wf.scratch(dataset="rotten_tomatoes")                                             # level 6
    >>> url = wf.serve(ft.preset)                                                         # online
    >>> wf.run("finetune", config="configs/finetune.yaml", epochs=3)                     # any task, by name

Each function builds the same typed config as the CLI and the YAML files (keyword shortcuts below, or any field
as `overrides=["optimizer.learning_rate=1e-4"]`, or a whole `config="configs/X.yaml"` underneath), validates it,
and calls the Python API. Nothing here does work of its own.
"""

from pathlib import Path

# Keyword → config field, for the settings people change most.
SHORTCUTS = {
    "dataset": "data.dataset", "train": "data.train", "test": "data.test", "sequence_length": "data.sequence_length",
    "validation": "data.validation", "validation_fraction": "data.validation_fraction", "encoding": "data.encoding",
    "skip_bad_files": "data.skip_bad_files",
    "max_train_rows": "data.max_train_rows", "max_test_rows": "data.max_test_rows",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "steps_per_epoch": "train.steps_per_epoch",
    "learning_rate": "optimizer.learning_rate", "workers": "scaling.num_workers", "use_gpu": "scaling.use_gpu",
    "output": "run.output", "builder": "model.builder", "freeze_backbone": "model.freeze_backbone",
    "vocabulary": "model.vocabulary", "num_classes": "model.num_classes", "dropout": "model.dropout",
    "address": "run.address",
}


def run(task: str, *, config: str | Path | None = None, overrides: list[str] | None = None, **fields):
    """Any task of `raynlp.tasks` (every training recipe among them) from keyword shortcuts, overrides or a
    config file; returns what its runner returns (a `TrainResult` for training)."""
    from raynlp.tasks import task as named

    return named(task).run(_config(task, config, overrides, fields))


def _config(task: str, config: str | Path | None, overrides: list[str] | None, fields: dict):
    from raynlp.errors import RaynlpError
    from raynlp.tasks import load_task_config

    unknown = sorted(set(fields) - set(SHORTCUTS) - {"preset"})
    if unknown:
        raise RaynlpError(f"unknown setting {unknown[0]!r} for {task}; settings: {', '.join(sorted(SHORTCUTS))}, "
                          "or any config field in overrides=['section.field=value']")
    values = {SHORTCUTS.get(k, k): v for k, v in fields.items() if v is not None}
    return load_task_config(task, config, overrides, values)


def finetune(preset: str, *, config=None, overrides=None, **fields):
    """Levels 2 and 3: fine-tune `preset` as a `BertTextClassifier`; returns a `TrainResult` (`.preset`, `.metrics`)."""
    return run("finetune", config=config, overrides=overrides, preset=preset, **{"output": "runs/finetune", **fields})


def fit(builder: str, preset: str, *, config=None, overrides=None, **fields):
    """Level 4: train the model `builder` ('package.module:function') makes around `preset`'s backbone."""
    return run("fit", config=config, overrides=overrides, preset=preset, builder=builder, **{"output": "runs/fit", **fields})


def pretrain(preset: str, *, config=None, overrides=None, **fields):
    """Level 5: masked-LM pretraining of `preset`'s backbone (continued, or from a random-init architecture)."""
    return run("pretrain", config=config, overrides=overrides, preset=preset, **{"output": "runs/pretrain", **fields})


def scratch(*, config=None, overrides=None, **fields):
    """Level 6: a vocabulary learned from the training text (or `vocabulary=FILE`) and a small transformer."""
    return run("scratch", config=config, overrides=overrides, **{"output": "runs/scratch", **fields})


def _corpus(dataset, input, split):
    from raynlp._internal import config_file
    from raynlp.data.config import CorpusSettings

    values = {"dataset": dataset, "input": input, "split": split}
    corpus = config_file.load(CorpusSettings, None, values={k: v for k, v in values.items() if v is not None})
    corpus.check_input(field="input")  # before Ray starts
    return corpus


def tokenize(preset: str, output: str, *, dataset: str | None = None, input: str | None = None, split: str = "train",
             sequence_length: int = 128, masked_lm: bool = False, num_actors: int | None = None,
             shuffle_seed: int | None = None) -> dict:
    """Level 3: tokenize a corpus once into Parquet shards that training then reads (`train=output`).
    `shuffle_seed`: write the rows in a seeded random order (a training split read in sorted order).
    `num_actors`: by default Ray tasks for a small named split, else an actor pool."""
    from raynlp._internal.cluster import ensure_ray
    from raynlp.data import MaskingSettings, tokenize_dataset, write_tokenized
    from raynlp.data.labels import as_label_ids
    from raynlp.data.tokenize import check_tokenize_job, packing_actors, packing_batch_rows

    corpus = _corpus(dataset, input, split)
    check_tokenize_job(preset, sequence_length, output)
    ensure_ray()
    masking = MaskingSettings() if masked_lm else None
    source, names = as_label_ids(corpus.open(shuffle_seed=shuffle_seed), corpus.class_names())
    rows = corpus.known_rows()
    actors = num_actors if num_actors is not None else packing_actors(rows)
    packed = tokenize_dataset(source, preset, sequence_length=sequence_length, masking=masking, num_actors=actors,
                              batch_size=packing_batch_rows(rows, actors))
    return write_tokenized(packed, output, preset=preset, sequence_length=sequence_length, masking=masking,
                           label_names=names)


def vocab(size: int, output: str, *, dataset: str | None = None, input: str | None = None,
          split: str = "train") -> Path:
    """A WordPiece vocabulary of `size` tokens learned from a corpus, written to `output`."""
    from raynlp._internal.cluster import ensure_ray
    from raynlp.data import learn_vocabulary, save_vocabulary
    from raynlp.data.vocabulary import check_new_vocabulary_file

    corpus = _corpus(dataset, input, split)
    check_new_vocabulary_file(output)
    ensure_ray()
    return save_vocabulary(learn_vocabulary(corpus.open(), size), output)


def classify(preset: str, texts: list[str]) -> list[dict]:
    """Level 1 in one process: label, label name and probabilities of each text."""
    from raynlp.inference import TextClassifier

    classifier = TextClassifier.load(preset)
    rows = classifier.predict_proba(texts)
    return [{"label": int(r.argmax()), "label_name": classifier.labels[int(r.argmax())], "probabilities": r.tolist()}
            for r in rows]


def evaluate(preset: str, *, dataset: str | None = None, input: str | None = None, split: str = "test",
             num_actors: int = 1, batch_size: int = 32, max_rows: int | None = None) -> dict:
    """Level 1 at scale: accuracy, loss and confusion matrix over a labelled corpus, on a Ray Data actor pool."""
    from raynlp._internal.cluster import ensure_ray
    from raynlp.inference import evaluate as evaluate_dataset
    from raynlp.inference.classifier import describe_classifier

    settings = _corpus(dataset, input, split)
    describe_classifier(preset)  # before Ray starts
    ensure_ray()
    corpus = settings.open()
    if max_rows:
        corpus = corpus.limit(max_rows)
    return evaluate_dataset(corpus, preset, num_actors=num_actors, batch_size=batch_size)


def serve(preset: str, *, port: int = 8000, config=None, overrides=None, **values) -> str:
    """Serve `preset` on Ray Serve in the background of this process; returns its URL (see `raynlp.serve.Client`)."""
    from raynlp.serve import start
    from raynlp.tasks import load_task_config

    return start(load_task_config("serve", config, overrides, {"preset": preset, "http.port": port, **values}))
