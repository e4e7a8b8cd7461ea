"""End to end on a real local Ray cluster: the four training levels of the guide, on real text, with 2 workers.

Sizes are small so that the suite stays fast on 2 CPU cores; what each test asserts would fail if training
did not learn, if the export did not hold the trained weights, or if a resumed run started over.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raynlp import datasets
from raynlp.inference import TextClassifier, evaluate
from raynlp.train import load_config, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipe(name: str, out: Path, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml", [f"run.output={out}", *overrides])


@pytest.fixture(scope="module")
def finetuned(ray_cluster, tmp_path_factory):
    """The shipped fine-tuning recipe at a test budget: MiniLM, 2 workers, one epoch of Rotten Tomatoes."""
    config = recipe("finetune", tmp_path_factory.mktemp("finetune") / "run",
                    "train.epochs=1", "data.sequence_length=48", "optimizer.learning_rate=1e-4")
    return config, train(config)


def test_finetune_minilm_learns_rotten_tomatoes_with_two_workers(finetuned):
    config, result = finetuned
    assert config.scaling.num_workers == 2
    (epoch,) = result.metrics
    assert epoch["global_step"] == 3200 // (16 * 2) and epoch["examples_per_second"] > 0
    report = evaluate(datasets.load("rotten_tomatoes")["test"], str(result.preset), num_actors=1)
    assert report["rows"] == 800
    assert report["accuracy"] >= 0.80, report
    assert report["labels"] == ["negative", "positive"]
    for name in ("metrics.json", "curves.png", "config.yaml"):
        assert (result.output / name).exists()


def test_exported_preset_loads_with_keras_hub_alone_and_predicts_as_trained(finetuned):
    """The export, loaded in a fresh process by keras-hub alone (raw strings in), predicts what the weights at
    the end of training (Ray Train's last checkpoint, restored into a model built here) predict."""
    import keras

    from raynlp.train._internal.checkpoint import restore_checkpoint
    from raynlp.train.recipes import RECIPES, Plan

    config, result = finetuned
    texts = datasets.read_split("rotten_tomatoes", "test")["text"].to_pylist()[:24]
    script = (
        "import json, sys, numpy as np, keras_hub\n"
        "model = keras_hub.models.BertTextClassifier.from_preset(sys.argv[1])\n"
        "print(json.dumps(np.asarray(model.predict(json.loads(sys.argv[2]), verbose=0)).tolist()))\n"
    )
    fresh = subprocess.run([sys.executable, "-c", script, str(result.preset), json.dumps(texts)],
                           capture_output=True, text=True, check=True, env={**os.environ, "KERAS_BACKEND": "jax"})
    exported = np.array(json.loads(fresh.stdout.strip().splitlines()[-1]))

    metadata = json.loads((Path(result.checkpoint) / "metadata.json").read_text())
    plan = Plan(**metadata["extra"]["plan"])
    trained = RECIPES["finetune"].build(config, plan)
    before = [np.array(v) for v in trained.get_weights()]
    restore_checkpoint(result.checkpoint, trained)
    assert max(np.abs(a - b).max() for a, b in zip(before, trained.get_weights())) > 1e-4  # training moved them
    packed = TextClassifier.load(str(result.preset)).pack(texts)
    at_end_of_training = np.asarray(trained.predict_on_batch(packed))
    np.testing.assert_allclose(exported, at_end_of_training, atol=1e-4)
    keras.backend.clear_session()


def test_pretrain_lowers_masked_lm_loss_and_finetune_takes_the_backbone(ray_cluster, tmp_path):
    import keras_hub

    pretrain = recipe("pretrain_shakespeare", tmp_path / "pretrain", "data.max_train_rows=2048",
                      "data.max_test_rows=256", "data.sequence_length=32", "train.epochs=3")
    result = train(pretrain)
    losses = [m["loss"] for m in result.metrics]
    accuracies = [m["accuracy"] for m in result.metrics]
    assert losses[-1] < losses[0] - 0.5, losses
    assert accuracies[-1] > accuracies[0], accuracies
    assert result.metrics[-1]["val_loss"] < result.metrics[0]["val_loss"]
    backbone = keras_hub.models.BertBackbone.from_preset(str(result.preset))
    assert backbone.num_layers == 2 and backbone.hidden_dim == 128

    finetune = recipe("finetune", tmp_path / "finetune", f"preset={result.preset}", "data.max_train_rows=256",
                      "data.max_test_rows=64", "data.sequence_length=32", "train.epochs=1")
    assert train(finetune).metrics[0]["global_step"] == 256 // 32


def test_level_4_custom_model_on_a_frozen_backbone_beats_chance(ray_cluster, tmp_path):
    config = recipe("fit_frozen_backbone", tmp_path / "fit", "data.max_train_rows=960", "data.max_test_rows=320",
                    "data.sequence_length=40", "train.epochs=2")
    result = train(config)
    classifier = TextClassifier.load(str(result.preset))
    assert classifier.labels == ["negative", "positive"]
    trainable = sum(int(np.prod(w.shape)) for w in classifier.model.trainable_weights)
    assert 0 < trainable < classifier.model.count_params() / 4  # the backbone stayed frozen
    assert evaluate(datasets.load("rotten_tomatoes")["test"], str(result.preset))["accuracy"] >= 0.65


def test_level_6_vocabulary_and_transformer_from_scratch_beat_chance(ray_cluster, tmp_path):
    config = recipe("scratch", tmp_path / "scratch", "model.vocabulary_size=3000", "data.sequence_length=48",
                    "train.epochs=5")
    result = train(config)
    vocabulary = (result.output / "vocabulary.txt").read_text().splitlines()
    assert 1000 <= len(vocabulary) <= 3000 and "[MASK]" in vocabulary  # the learner stops short on small text
    assert result.metrics[-1]["accuracy"] > result.metrics[0]["accuracy"]
    assert evaluate(datasets.load("rotten_tomatoes")["test"], str(result.preset))["accuracy"] >= 0.60
