"""Batch inference and evaluation at corpus scale: a classifier on a Ray Data actor pool (the guide's level 1).

    >>> predictions = predict_dataset(read_corpus("reviews/"), "runs/finetune/preset", num_actors=2)
    >>> predictions.write_parquet("runs/predictions")
    >>> evaluate(raynlp.datasets.load("rotten_tomatoes")["test"], "runs/finetune/preset")
    {'rows': 800, 'accuracy': 0.86, 'loss': 0.33, 'confusion_matrix': [[...], [...]], ...}

Each actor loads the classifier once; rows stream through in batches, so the corpus is never held whole.
"""

from __future__ import annotations

import logging

import numpy as np

from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("predicted_label", "predicted_name", "probabilities")


class _Predictor:
    """One Ray Data actor: the classifier, loaded once, applied to each batch of text."""

    def __init__(self, preset: str, batch_size: int):
        from raynlp._internal.cluster import keep_tensorflow_out
        from raynlp.inference.classifier import TextClassifier

        keep_tensorflow_out()
        self.classifier = TextClassifier.load(preset, max_batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        probabilities = self.classifier.predict_proba([str(t) for t in batch["text"]])
        predicted = probabilities.argmax(axis=1)
        labels = np.array(self.classifier.labels, dtype=object)
        return {**batch, "predicted_label": predicted.astype(np.int64), "predicted_name": labels[predicted],
                "probabilities": probabilities}


def predict_dataset(dataset, preset: str, *, num_actors: int = 1, batch_size: int = 32, num_gpus: float = 0):
    """`dataset` (a `text` column, any others ride along) with the classifier's predictions added. `num_gpus`:
    what each actor takes (a fraction: actors share a GPU)."""
    import ray.data

    from raynlp.presets import portable

    if "text" not in dataset.schema().names:
        raise RaynlpError(f"the data to classify has no text column (columns: {', '.join(dataset.schema().names)})")
    _check_loadable(preset)
    return dataset.map_batches(
        _Predictor,
        fn_constructor_kwargs={"preset": portable(preset), "batch_size": batch_size},
        batch_size=batch_size * 4,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        **actor_options(num_gpus),
    )


def actor_options(num_gpus: float = 0) -> dict:
    """What each inference actor is given: `num_gpus` and the environment for it (JAX's memory taken as it is
    needed where actors share a GPU)."""
    from raynlp._internal.cluster import worker_env

    return {**({"num_gpus": num_gpus} if num_gpus else {}), "runtime_env": {"env_vars": worker_env(num_gpus)}}


def evaluate(dataset, preset: str, *, num_actors: int = 1, batch_size: int = 32, num_gpus: float = 0) -> dict:
    """Accuracy, mean cross-entropy and confusion matrix of the classifier over a labelled dataset."""
    from raynlp.data.labels import encode_labels
    from raynlp.presets import resolve

    if "label" not in dataset.schema().names:
        raise RaynlpError("evaluation needs labelled data: the data has no label column")
    labels = _check_loadable(preset)
    # Labels given by name (class folders, string labels) are the classifier's names; integer ids stay.
    predictions = predict_dataset(encode_labels(dataset, labels), preset, num_actors=num_actors,
                                  batch_size=batch_size, num_gpus=num_gpus)
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    loss_sum, rows = 0.0, 0
    for batch in predictions.select_columns(["label", "probabilities"]).iter_batches(batch_size=1024,
                                                                                        batch_format="numpy"):
        truth = batch["label"].astype(np.int64)
        probabilities = np.stack(batch["probabilities"])
        if truth.min() < 0 or truth.max() >= len(labels):
            raise RaynlpError(f"the data holds label {int(truth.max())}, the classifier knows {len(labels)} classes")
        np.add.at(confusion, (truth, probabilities.argmax(axis=1)), 1)
        loss_sum += float(-np.log(np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, None)).sum())
        rows += len(truth)
    if rows == 0:
        raise RaynlpError("the evaluation data is empty")
    per_class = {name: {"rows": int(confusion[i].sum()),
                        "recall": round(float(confusion[i, i] / max(confusion[i].sum(), 1)), 4),
                        "precision": round(float(confusion[i, i] / max(confusion[:, i].sum(), 1)), 4)}
                 for i, name in enumerate(labels)}
    return {"preset": str(resolve(preset)), "rows": rows, "accuracy": round(float(np.trace(confusion) / rows), 4),
            "loss": round(loss_sum / rows, 4), "labels": labels, "confusion_matrix": confusion.tolist(),
            "per_class": per_class}


def _check_loadable(preset: str) -> list[str]:
    """Fail on the driver, with a clear message, before actors start: the class names of the classifier."""
    from raynlp.inference.classifier import describe_classifier

    return describe_classifier(preset)[2]
