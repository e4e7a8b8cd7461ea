"""End to end on a real local Ray cluster: fine-tuning from a user's class folders, pretraining, fine-tuning from
cached tokens of sentence pairs on two workers (levels 4 and 6, and the demo's chain of all six, run in
tests/demo_test.py; a killed worker and a resume in tests/long_runs_test.py).

Sizes are small so that the suite stays fast on 2 CPU cores; what each test asserts would fail if training
did not learn, if the export did not hold the trained weights, or if a resumed run started over.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raynlp import datasets
from raynlp.inference import TextClassifier, evaluate
from raynlp.train import load_config, train

pytestmark = pytest.mark.slow  # Ray Train runs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipe(name: str, out: Path, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml", [f"run.output={out}", *overrides])


@pytest.fixture(scope="module")
def finetuned(ray_cluster, tmp_path_factory):
    """The shipped fine-tuning recipe at a test budget: MiniLM, one worker, one epoch of 1,280 Rotten Tomatoes
    sentences, laid out as the guide lays out IMDB: `train/neg/*.txt`, `train/pos/*.txt`, one sentence per file,
    files written class by class (as a user's folders list).

    Read in listing order (sorted by class), the same run sits at chance.
    """
    from labelled_corpus_test import write_class_folders

    root = tmp_path_factory.mktemp("folders")
    for split, rows in (("train", TRAIN_ROWS), ("test", None)):
        table = datasets.read_split("rotten_tomatoes", split)
        pairs = list(zip(table["text"].to_pylist(), table["label"].to_pylist()))
        write_class_folders(root / split, pairs[:rows] if rows else pairs)
    # Validated on 256 test rows after the epoch (the run's curves); the tests below evaluate all 800.
    config = recipe("finetune", tmp_path_factory.mktemp("finetune") / "run", "train.epochs=1",
                    "scaling.num_workers=1", "train.batch_size=32", "data.sequence_length=40",
                    "optimizer.learning_rate=2e-4", "data.dataset=null",
                    f"data.train={root / 'train'}", f"data.test={root / 'test'}", "data.max_test_rows=256")
    return config, train(config), root


TRAIN_ROWS = 1280


def test_finetune_minilm_learns_rotten_tomatoes_from_class_folders(finetuned):
    from raynlp._internal import storage
    from raynlp.data import read_corpus
    from raynlp.train._internal.feeding import ParquetShard

    config, result, root = finetuned
    assert [m["global_step"] for m in result.metrics] == [TRAIN_ROWS // 32]
    assert all(m["examples_per_second"] > 0 for m in result.metrics)
    # The tokenized training rows are mixed: the label changes about every other row (it would change once,
    # were the folders read in listing order), and the first global batch, as two workers would be dealt it
    # (the split kept in memory: each rank reads its half of the rows), holds both classes on each.
    folder = str(result.output / "data" / "train")
    labels = [label for shard in storage.files(folder, ".parquet")
              for label in pq.read_table(shard, columns=["label"])["label"].to_pylist()]
    assert len(labels) == TRAIN_ROWS and sum(a != b for a, b in zip(labels, labels[1:])) > TRAIN_ROWS * 0.4
    for rank in (0, 1):
        first = next(ParquetShard(folder, rows=TRAIN_ROWS, rank=rank, world_size=2).iter_batches(batch_size=16))
        assert set(first["label"].tolist()) == {0, 1}, rank
    # The 256 rows validated on are a sample of the test folders, not the first class folder's files.
    validated = pq.read_table(str(result.output / "data" / "test"), columns=["label"])["label"].to_pylist()
    assert len(validated) == 256 and 0.35 < sum(validated) / 256 < 0.65
    # Near what the mixed data set reaches at this budget (chance, had the folders been read class by class).
    from_folders = evaluate(read_corpus(root / "test"), str(result.preset))
    assert from_folders["rows"] == 800 and from_folders["labels"] == ["neg", "pos"]
    assert from_folders["accuracy"] >= BAR, from_folders
    # The folders' names give the named data set's integer labels: the same ids, text for text.
    named = datasets.read_split("rotten_tomatoes", "test")
    by_text = dict(zip(named["text"].to_pylist(), named["label"].to_pylist()))
    for label, name in enumerate(from_folders["labels"]):
        assert {by_text[p.read_text()] for p in (root / "test" / name).iterdir()} == {label}
    for name in ("metrics.json", "curves.png", "config.yaml"):
        assert (result.output / name).exists()


BAR = 0.70


def test_exported_preset_loads_with_keras_hub_alone_and_predicts_as_trained(finetuned):
    """The export, loaded in a fresh process by keras-hub alone (raw strings in), predicts what the weights at
    the end of training (Ray Train's last checkpoint, restored into a model built here) predict."""
    import keras

    from raynlp.train._internal.checkpoint import restore_checkpoint
    from raynlp.train.recipes import RECIPES, Plan

    config, result, _ = finetuned
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


@pytest.fixture(scope="module")
def pretrained(ray_cluster, tmp_path_factory):
    """Level 5: masked-LM pretraining of a random-init BERT-Tiny on Shakespeare (one worker: two are the
    chained fine-tune's): 750 passages packed into about 1,000 full windows, masks drawn per batch."""
    config = recipe("pretrain_shakespeare", tmp_path_factory.mktemp("pretrain") / "run",
                    f"data.max_train_rows={PASSAGES}", "data.max_test_rows=256", "data.sequence_length=32",
                    "train.epochs=2", "scaling.num_workers=1")
    return train(config)


PASSAGES = 750


@pytest.fixture(scope="module")
def cached_tokens(pretrained, tmp_path_factory):
    """Level 3: the user tokenizes Rotten Tomatoes once with the new backbone's tokenizer (`raynlp tokenize`), as
    sentence pairs from a csv (a review, then the review before it; the first one's label), so that the cached
    tokens carry segment ids."""
    import pyarrow as pa
    from pyarrow import csv as arrow_csv

    from raynlp.cli import main

    folder = tmp_path_factory.mktemp("tokens")
    for split in ("train", "test"):
        table = datasets.read_split("rotten_tomatoes", split)
        texts = table["text"].to_pylist()
        arrow_csv.write_csv(pa.table({"review": texts, "before": texts[-1:] + texts[:-1], "label": table["label"]}),
                            folder / f"{split}.csv")
        assert main(["tokenize", "--preset", str(pretrained.preset), "--input", str(folder / f"{split}.csv"),
                     "--text-column", "review", "--pair-column", "before", "--sequence-length", "32",
                     "--output", str(folder / split)]) == 0
    return folder


def test_pretrain_lowers_masked_lm_loss_and_exports_a_backbone(pretrained):
    import keras_hub

    losses = [m["loss"] for m in pretrained.metrics]
    accuracies = [m["accuracy"] for m in pretrained.metrics]
    # From the first steps' loss (the mean over the first tenth of epoch 1: 10.3 measured) to the last epoch's (7.1).
    assert losses[-1] < pretrained.metrics[0]["progress"][0]["loss"] - 0.5 and losses[-1] < losses[0], losses
    assert accuracies[-1] > accuracies[0], accuracies
    assert pretrained.metrics[-1]["val_loss"] < pretrained.metrics[0]["val_loss"]
    # About ten points within each epoch for the curves, at increasing steps before the epoch's end.
    steps = [p["global_step"] for m in pretrained.metrics for p in [*m["progress"], m]]
    assert steps == sorted(set(steps)) and all(len(m["progress"]) >= 5 for m in pretrained.metrics)
    backbone = keras_hub.models.BertBackbone.from_preset(str(pretrained.preset))
    assert backbone.num_layers == 2 and backbone.hidden_dim == 128
    # Trained on packed windows (pretraining's default) with masks drawn by the workers, none in the shards.
    manifest = json.loads((pretrained.output / "data" / "train" / "_raynlp_tokenized.json").read_text())
    packing = manifest["packing"]
    assert packing["documents"] == PASSAGES and packing["windows"] == manifest["rows"] > PASSAGES
    assert packing["padding_after"] < 0.01 < 0.3 < packing["padding_before"] and manifest["masking"] is None
    assert pretrained.metrics[0]["global_step"] == manifest["rows"] // 32  # every window trained (batch 32)
    # Each window says where its first document's part starts, for the masker's positions (document attention).
    firsts = pq.read_table(pretrained.output / "data" / "train", columns=["first_position"])["first_position"]
    firsts = firsts.to_numpy()
    assert len(firsts) == manifest["rows"] and firsts.min() == 1 and (firsts > 1).mean() > 0.25  # long passages


def test_finetune_from_the_pretrained_backbone_and_cached_tokens_on_two_workers(pretrained, cached_tokens, tmp_path):
    """Levels 5 → 3 chained on 2 workers: the pretraining export is the preset, the tokens cached with its
    tokenizer are the data, nothing is tokenized again. The 2 workers take all 4 of the node's CPUs: shards kept
    in memory need no reading task beside them, so the layout is let through (streamed, it is refused:
    tests/train_errors_test.py). (Losing a worker is tests/long_runs_test.py's; the same command run again
    resuming a finished run is object_storage_test's.)"""
    config = recipe("finetune", tmp_path / "run", f"preset={pretrained.preset}", "data.dataset=null",
                    f"data.train={cached_tokens / 'train'}", f"data.test={cached_tokens / 'test'}",
                    "data.max_train_rows=640", "data.max_test_rows=64", "data.sequence_length=32",
                    "optimizer.learning_rate=1e-3", "train.epochs=2", "scaling.cpus_per_worker=2",
                    "data.shard_cache=memory", "run.wait_for_workers_s=60")
    assert config.scaling.num_workers == 2
    result = train(config)
    assert not (result.output / "data").exists()  # trained from the cached tokens, nothing tokenized again
    # Pairs: the shards hold the second segment's ids (int8), and they reached `fit`: the second segment's
    # embedding, which pretraining never saw (its windows are one segment), moved as far as steps of Adam move a
    # weight (about the learning rate each), not only by AdamW's decay (a thousandth of that).
    import keras_hub

    from raynlp._internal.ray_data import read_parquet

    segments = read_parquet(str(cached_tokens / "train")).take_batch(64, batch_format="numpy")["segment_ids"]
    assert segments.dtype == np.int8 and segments.any()
    before = keras_hub.models.BertBackbone.from_preset(str(pretrained.preset)).segment_embedding.get_weights()[0]
    tuned = keras_hub.models.BertTextClassifier.from_preset(str(result.preset)).backbone.segment_embedding
    moved = np.abs(tuned.get_weights()[0][1] - before[1]).max()
    assert moved > 1e-3, moved
    steps = 640 // (16 * 2)
    assert [(m["epoch"], m["global_step"]) for m in result.metrics] == [(1, steps), (2, 2 * steps)]
    assert result.metrics[-1]["loss"] < result.metrics[0]["loss"] and "val_accuracy" in result.metrics[-1]
