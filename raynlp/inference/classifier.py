"""A trained text classifier, loaded once, that turns raw texts into class probabilities.

    >>> classifier = TextClassifier.load("runs/finetune/preset")
    >>> classifier.labels                      # ['negative', 'positive']
    >>> classifier.predict_proba(["a gem of a film", "two hours I will not get back"])

It loads what raynlp training exports (a keras-hub `BertTextClassifier` preset, or a `fit` / `scratch`
`model.keras` beside its tokenizer, told apart by `raynlp_model.json`) and plain keras-hub classifier
presets with a WordPiece tokenizer. Text is packed by raynlp's fast tokenizer (the same ids as keras-hub's
preprocessor), and batches are padded up to a few fixed sizes, so the compiled predict function is reused
instead of traced again for every new batch size.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raynlp.data.tokenize import PACKED_FEATURES
from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)


def batch_buckets(max_batch_size: int) -> list[int]:
    """The padded batch sizes predict is compiled for: up to `max_batch_size` (and it), powers of two and, from 4,
    one and a half times each, so that padding is under a third of a padded batch (a served model's batches hold
    whatever queued, of any size)."""
    sizes, power = [1, 2], 4
    while power < max_batch_size:
        sizes += [power, power * 3 // 2]
        power *= 2
    return sorted({s for s in sizes if s < max_batch_size} | {max_batch_size})


@dataclass
class TextClassifier:
    model: object  # a keras.Model taking packed features and returning one score per class
    tokenizer: object  # raynlp.data.fast_tokenizer.FastWordPieceTokenizer
    folder: str
    name: str
    labels: list[str]
    features: tuple[str, ...]
    sequence_length: int
    outputs_probabilities: bool  # the model ends in a softmax (else it returns logits)
    max_batch_size: int = 32
    # One model call at a time (Keras's predict_on_batch, the other backends' way, writes the model's state back).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # `_scores`'s compiled forward pass over the weights as loaded (a classifier never changes them)
    _forward: object = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, preset: str, *, max_batch_size: int = 32, sequence_length: int | None = None) -> TextClassifier:
        """Load a classifier folder (or a raynlp preset name) for inference in this process."""
        import keras_hub

        from raynlp._internal.cluster import keep_tensorflow_off_gpus
        from raynlp._internal.compilation_cache import use_compilation_cache
        from raynlp.data.fast_tokenizer import FastWordPieceTokenizer

        use_compilation_cache()  # every evaluation actor and Serve replica of a classifier compiles it once
        keep_tensorflow_off_gpus()  # the GPUs are JAX's
        folder, card, labels = describe_classifier(preset)
        if card is not None:
            model = _load_model(folder, card.model_file)
            features, length = tuple(card.features), card.sequence_length
        else:
            model = keras_hub.models.TextClassifier.from_preset(folder, preprocessor=None)
            features, length = PACKED_FEATURES, _preprocessor_sequence_length(folder)
        tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(folder)
        activation = getattr(model, "activation", None)
        # A training run's export is `<run>/preset`: the run's folder names the model.
        path = Path(folder).resolve()
        name = path.parent.name if path.name == "preset" else path.name
        return cls(
            model=model, tokenizer=tokenizer, folder=str(folder), name=name, labels=labels, features=features, sequence_length=sequence_length or length,
            outputs_probabilities=activation is not None and getattr(activation, "__name__", "") == "softmax",
            max_batch_size=max_batch_size,
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def pack(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Texts → the packed features the model takes (longer texts are truncated to the sequence length)."""
        packed = self.tokenizer.pack(list(texts), sequence_length=self.sequence_length)
        return {name: packed[name] for name in self.features}

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, one row per text, in input order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.num_classes), np.float32)
        parts = [self._predict_chunk(texts[i : i + self.max_batch_size])
                 for i in range(0, len(texts), self.max_batch_size)]
        return np.concatenate(parts)

    def warm_up(self) -> None:
        """Compile predict for every batch bucket now, so that no later call waits on a compilation."""
        for size in batch_buckets(self.max_batch_size):
            self._predict_chunk(["warm up"] * size)

    def _predict_chunk(self, texts: list[str]) -> np.ndarray:
        n = len(texts)
        size = next(b for b in batch_buckets(self.max_batch_size) if b >= n)
        features = self.pack(texts + [""] * (size - n))
        with self._lock:
            scores = np.asarray(self._scores(features), dtype=np.float32)[:n]
        if self.outputs_probabilities:
            return scores
        scores = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)


    def _scores(self, features: dict[str, np.ndarray]):
        """The model's outputs for a batch. On JAX, its forward pass compiled once as a function of the weights
        (read once: inference never changes them) and the features: a call is the compiled program alone, without
        `predict_on_batch`'s bookkeeping, which reads every variable and writes the state back on each call."""
        import keras

        if keras.backend.backend() != "jax":
            return self.model.predict_on_batch(features)
        if self._forward is None:
            import functools

            import jax

            model = self.model
            weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
            self._forward = functools.partial(
                jax.jit(lambda trainable, other, x: model.stateless_call(trainable, other, x, training=False)[0]),
                *weights)
        return self._forward(features)


def describe_classifier(preset: str):
    """Check, without loading any weights, that `preset` is a classifier folder: `(folder, card or None, labels)`.

    Cheap enough for a driver to call before it starts inference actors, so a wrong folder fails at once.
    """
    from raynlp.presets import is_local, resolve
    from raynlp.presets.model_card import read_model_card

    folder = resolve(preset)
    if not is_local(folder) or not Path(folder).is_dir():
        raise RaynlpError(f"{preset!r} is not a local classifier folder; give the preset/ folder a training run "
                          "exported, or a keras-hub classifier preset folder")
    card = read_model_card(folder)
    if card is not None:
        if not card.is_classifier:
            raise RaynlpError(f"{folder} holds a {card.class_name} from task {card.task}, not a classifier; "
                              "fine-tune it first (raynlp finetune --set preset=...)")
        return folder, card, card.labels()
    task = Path(folder) / "task.json"
    num_classes = json.loads(task.read_text()).get("config", {}).get("num_classes") if task.exists() else None
    if not num_classes:
        raise RaynlpError(f"{folder} holds no classifier (no task.json with num_classes, no raynlp_model.json); "
                          "a backbone preset must be fine-tuned first")
    return folder, None, [str(i) for i in range(num_classes)]


def _load_model(folder: str, model_file: str | None):
    import keras
    import keras_hub  # also registers keras-hub layers for deserialization

    if model_file is None:
        return keras_hub.models.TextClassifier.from_preset(folder, preprocessor=None)
    path = Path(folder) / model_file
    if not path.exists():
        raise RaynlpError(f"{path} is missing; the export in {folder} is incomplete")
    return keras.saving.load_model(str(path), compile=False)


def _preprocessor_sequence_length(folder: str) -> int:
    path = Path(folder) / "preprocessor.json"
    if path.exists():
        length = json.loads(path.read_text()).get("config", {}).get("sequence_length")
        if length:
            return int(length)
    logger.warning("%s has no preprocessor sequence length; using 128", folder)
    return 128
