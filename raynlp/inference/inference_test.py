"""The classifier loader against keras-hub's own predict, and batch inference / evaluation on Ray Data."""

import json

import numpy as np
import pytest

from raynlp import datasets
from raynlp.errors import RaynlpError
from raynlp.inference import TextClassifier, evaluate, predict_dataset
from raynlp.inference.classifier import batch_buckets


def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_batch_buckets_cover_every_size():
    # Powers of two and, from 4 on, one and a half times each.
    assert batch_buckets(32) == [1, 2, 4, 6, 8, 12, 16, 24, 32]
    assert batch_buckets(20) == [1, 2, 4, 6, 8, 12, 16, 20]
    assert batch_buckets(2) == [1, 2] and batch_buckets(1) == [1]
    for largest in range(1, 1025):
        sizes = batch_buckets(largest)
        assert sizes == sorted(set(sizes)) and sizes[0] == 1 and sizes[-1] == largest
        for n in range(1, largest + 1):  # padding is under a third of a padded batch
            assert 3 * (next(b for b in sizes if b >= n) - n) < next(b for b in sizes if b >= n), (largest, n)


@pytest.mark.parametrize("rows", [1, 5, 45])  # one row, a padded bucket, and more than one full batch
def test_predictions_equal_keras_hub_predict_in_input_order(keras_hub_classifier, rows):
    folder, reference = keras_hub_classifier
    texts = datasets.read_split("rotten_tomatoes", "test")["text"].to_pylist()[:rows]
    expected = softmax(np.asarray(reference.predict(texts, verbose=0)))
    loaded = TextClassifier.load(folder, max_batch_size=16)
    assert loaded.labels == ["0", "1", "2"] and loaded.sequence_length == 48

    def per_call_bookkeeping(*args, **kwargs):
        raise AssertionError("on JAX the classifier calls its compiled forward pass, not predict_on_batch")

    loaded.model.predict_on_batch = per_call_bookkeeping
    np.testing.assert_allclose(loaded.predict_proba(texts), expected, atol=1e-5)


def test_a_backbone_is_not_a_classifier():
    with pytest.raises(RaynlpError, match="holds no classifier"):
        TextClassifier.load("bert_tiny_en_uncased_scratch")
    with pytest.raises(RaynlpError, match="not a local classifier folder"):
        TextClassifier.load("kaggle://keras/bert/keras/bert_tiny_en_uncased")


def test_predict_dataset_and_evaluate_agree_with_one_process(ray_cluster, keras_hub_classifier):
    folder, _ = keras_hub_classifier
    test = datasets.load("rotten_tomatoes")["test"].limit(96)
    rows = predict_dataset(test, folder, num_actors=1, batch_size=16).take_all()
    assert len(rows) == 96 and {"text", "label", "predicted_label", "predicted_name", "probabilities"} <= set(rows[0])
    local = TextClassifier.load(folder)
    by_text = dict(zip([r["text"] for r in rows], [np.asarray(r["probabilities"]) for r in rows]))
    texts = list(by_text)
    np.testing.assert_allclose(np.stack([by_text[t] for t in texts]), local.predict_proba(texts), atol=1e-5)

    report = evaluate(test, folder, num_actors=1, batch_size=16)
    truth = np.array([r["label"] for r in rows])
    predicted = np.array([r["predicted_label"] for r in rows])
    assert report["rows"] == 96
    assert report["accuracy"] == pytest.approx(float((truth == predicted).mean()), abs=1e-4)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 96 and np.trace(matrix) == (truth == predicted).sum()


def test_an_inference_actor_runs_keras_hub_without_tensorflow(ray_cluster, keras_hub_classifier):
    """The process of a `predict` / `evaluate` actor (and a Serve replica's, through the same call) keeps
    TensorFlow out: keras-hub, which imports it where it can, loads the classifier without it."""
    from raynlp.inference.batch import _Predictor

    class Probe(_Predictor):
        def modules(self):
            import sys

            return sys.modules.get("tensorflow") is not None, "keras_hub" in sys.modules

    folder, _ = keras_hub_classifier
    probe = ray_cluster.remote(Probe).remote(folder, 8)
    assert ray_cluster.get(probe.modules.remote()) == (False, True)


def test_evaluate_needs_labels_and_cli_writes_reports(ray_cluster, keras_hub_classifier, tmp_path, capsys):
    from raynlp.cli import main

    folder, _ = keras_hub_classifier
    with pytest.raises(RaynlpError, match="no label column"):
        evaluate(datasets.load("shakespeare")["test"], folder)

    corpus = tmp_path / "reviews.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a fine film", "dull", "so-so at best"]))
    assert main(["predict", "--preset", folder, "--input", str(corpus), "--output", str(tmp_path / "out")]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out")
    assert sorted(table["text"].to_pylist()) == sorted(["a fine film", "dull", "so-so at best"])
    assert all(abs(sum(p) - 1) < 1e-5 for p in table["probabilities"].to_pylist())
    assert main(["predict", "--preset", folder, "--input", str(corpus), "--output", str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_inference_actors_take_gpus_and_share_one_without_jax_taking_its_memory():
    from raynlp.inference.batch import actor_options

    shared, whole, none = actor_options(0.25), actor_options(1), actor_options(0)
    assert shared["num_gpus"] == 0.25 and shared["runtime_env"]["env_vars"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert whole["num_gpus"] == 1 and "XLA_PYTHON_CLIENT_PREALLOCATE" not in whole["runtime_env"]["env_vars"]
    assert "num_gpus" not in none
    for options in (shared, whole, none):  # TensorFlow (keras-hub's tokenizers) never holds a whole GPU
        assert options["runtime_env"]["env_vars"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
