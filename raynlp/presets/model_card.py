"""`raynlp_model.json`: what a folder that raynlp training exported holds, so that any process can load it.

keras-hub's own files (`config.json`, `task.json`, `tokenizer.json`, ...) describe a keras-hub task or backbone.
A `fit` or `scratch` export is a plain `keras.Model` (`model.keras`) beside a keras-hub tokenizer, which
keras-hub alone cannot name; the card says which file holds the model, which packed features it takes,
at what sequence length, and what its classes are called.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from raynlp.errors import RaynlpError

MODEL_CARD = "raynlp_model.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    task: str  # the raynlp task that trained it: finetune, fit, pretrain, scratch
    class_name: str  # keras-hub class (BertTextClassifier, BertBackbone) or "keras.Model"
    features: list[str]  # packed inputs the model takes, e.g. token_ids, segment_ids, padding_mask
    sequence_length: int
    model_file: str | None = None  # "model.keras" for a plain Keras model; None for a keras-hub preset
    num_classes: int | None = None
    label_names: list[str] | None = None
    source_preset: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_classifier(self) -> bool:
        return self.num_classes is not None

    def labels(self) -> list[str]:
        """A name for every class: the data set's names, else the class ids as text."""
        if self.label_names and len(self.label_names) == self.num_classes:
            return list(self.label_names)
        return [str(i) for i in range(self.num_classes or 0)]

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MODEL_CARD
        path.write_text(json.dumps({"format": FORMAT_VERSION, **asdict(self)}, indent=2))
        return path


def read_model_card(folder: str | Path) -> ModelCard | None:
    """The card of an exported folder, or None for a folder raynlp did not write (a plain keras-hub preset)."""
    path = Path(folder) / MODEL_CARD
    if not path.exists():
        return None
    tree = json.loads(path.read_text())
    if tree.pop("format", None) != FORMAT_VERSION:
        raise RaynlpError(f"{path} was written by another raynlp version (format {tree.get('format')}); re-export it")
    return ModelCard(**tree)
