"""A user's own labelled corpus, laid out as users lay them out: files written class by class, string labels,
a Latin-1 file, a broken file, a test label the training data lacks.

The corpora are written by the tests from raynlp's named data sets. One small Ray Train run (BERT-Tiny, one
worker) carries the label names from the files to every place a user reads them.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raynlp import datasets
from raynlp._internal import storage
from raynlp.cli import main
from raynlp.data.corpus import CorpusFileError
from raynlp.train import load_config, train

pytestmark = pytest.mark.slow  # a Ray Train run and a Serve app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NAMES = {0: "rotten", 1: "fresh"}  # sorted, "fresh" is class 0: names decide the ids, not the source's ids


def write_jsonl(path: Path, rows: list[tuple[str, int]], encoding: str = "utf-8") -> Path:
    path.write_bytes("".join(json.dumps({"text": t, "label": NAMES[label]}, ensure_ascii=False) + "\n"
                             for t, label in rows).encode(encoding, "replace"))  # "?" for what Latin-1 lacks
    return path


def rows_of(split: str, limit: int | None = None) -> list[tuple[str, int]]:
    table = datasets.read_split("rotten_tomatoes", split)
    rows = list(zip(table["text"].to_pylist(), table["label"].to_pylist()))
    return rows[:limit] if limit else rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Training rows sorted by label into four Latin-1 files (with accented words in them), a file that is not
    JSON, and a test file with the same string labels."""
    root = tmp_path_factory.mktemp("corpus")
    train = sorted(rows_of("train", 960), key=lambda r: r[1])
    assert any(not t.isascii() for t, _ in train)  # the Latin-1 bytes matter
    (root / "train").mkdir()
    for i in range(4):
        write_jsonl(root / "train" / f"part-{i}.jsonl", train[i * 240 : (i + 1) * 240], encoding="latin-1")
    (root / "train" / "part-9.jsonl").write_text("this file is not JSON\n")
    write_jsonl(root / "test.jsonl", rows_of("test", 96))
    return root


def config(out: Path, corpus: Path, *overrides: str):
    return load_config(CONFIGS / "finetune.yaml", [
        f"run.output={out}", "preset=bert_tiny_en_uncased_scratch", "data.dataset=null",
        f"data.train={corpus / 'train'}", f"data.test={corpus / 'test.jsonl'}", "data.sequence_length=32",
        "scaling.num_workers=1", "train.epochs=1", "optimizer.learning_rate=1e-3", *overrides])


@pytest.fixture(scope="module")
def trained(ray_cluster, corpus, tmp_path_factory):
    handler, logger = _Capture(), logging.getLogger("raynlp")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = train(config(tmp_path_factory.mktemp("run") / "run", corpus, "data.encoding=latin-1",
                              "data.skip_bad_files=true", "data.validation_fraction=0.2"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result, "\n".join(handler.lines)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_latin_1_corpus_with_a_broken_file_trains_with_a_validation_split_carved_out(trained):
    result, log = trained
    assert "skipped 1 bad corpus file(s) of 5" in log and "part-9.jsonl" in log
    assert "labels by name: 0 fresh, 1 rotten" in log
    entry = result.metrics[-1]
    # Validated on the carved-out rows every epoch, the test split reported once at the end.
    assert {"val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= set(entry)
    manifests = {split: json.loads((result.output / "data" / split / "_raynlp_tokenized.json").read_text())
                 for split in ("train", "validation", "test")}
    rows = {split: m["rows"] for split, m in manifests.items()}
    assert rows["train"] + rows["validation"] == 960 and 0.1 < rows["validation"] / 960 < 0.3 and rows["test"] == 96
    # The training shards hold the four sorted files' rows in a mixed order.
    labels = [label for shard in storage.files(result.output / "data" / "train", ".parquet")
              for label in pq.read_table(shard, columns=["label"])["label"].to_pylist()]
    assert sum(a != b for a, b in zip(labels, labels[1:])) > len(labels) / 4


def test_utf_8_refuses_the_latin_1_file_naming_it_and_the_config_field(ray_cluster, corpus, tmp_path):
    with pytest.raises(CorpusFileError, match=r"part-0.jsonl is not UTF-8 .*data.encoding=latin-1"):
        train(config(tmp_path / "run", corpus))


def test_label_names_reach_evaluate_predict_serve_and_keras_hub(trained, corpus, serve_port, tmp_path, capsys):
    import keras_hub

    from raynlp.inference import TextClassifier
    from raynlp.serve import Client, load_serve_config, start, stop

    result, _ = trained
    preset = str(result.preset)
    assert TextClassifier.load(preset).labels == ["fresh", "rotten"]

    assert main(["evaluate", "--preset", preset, "--input", str(corpus / "test.jsonl"),
                 "--output", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    truth = [NAMES[label] for _, label in rows_of("test", 96)]
    assert report["labels"] == ["fresh", "rotten"] and report["rows"] == 96
    assert {name: c["rows"] for name, c in report["per_class"].items()} == {n: truth.count(n) for n in ("fresh", "rotten")}

    capsys.readouterr()
    assert main(["predict", "--preset", preset, "--input", str(corpus / "test.jsonl"),
                 "--output", str(tmp_path / "predictions")]) == 0
    table = pq.read_table(tmp_path / "predictions")
    assert table.num_rows == 96 and set(table["predicted_name"].to_pylist()) <= {"fresh", "rotten"}
    assert all(["fresh", "rotten"][i] == n for i, n in zip(table["predicted_label"].to_pylist(),
                                                            table["predicted_name"].to_pylist()))

    serving = load_serve_config(None, values={"preset": preset, "name": "named", "route_prefix": "/named",
                                              "http.port": serve_port, "replica.num_cpus": 0.5,
                                              "autoscaling.max_replicas": 1})
    url = start(serving)
    try:
        client = Client(url)
        assert client.model()["labels"] == ["fresh", "rotten"]
        answers = client.classify(["a gem of a film", "two hours I will not get back"])
        assert all(a.label_name == ["fresh", "rotten"][a.label] for a in answers)
    finally:
        stop(serving)

    classifier = keras_hub.models.BertTextClassifier.from_preset(preset)
    assert np.asarray(classifier.predict(["a gem of a film"], verbose=0)).shape == (1, 2)


def test_a_test_label_the_training_data_lacks_is_refused_in_one_line(ray_cluster, corpus, tmp_path, capsys):
    write_jsonl(tmp_path / "test.jsonl", rows_of("test", 4))
    with (tmp_path / "test.jsonl").open("a") as f:
        f.write(json.dumps({"text": "a new kind of film", "label": "meh"}) + "\n")
    status = main(["finetune", "--config", str(CONFIGS / "finetune.yaml"), "--set", f"run.output={tmp_path / 'run'}",
                   "--set", "data.dataset=null", "--set", f"data.train={corpus / 'train'}",
                   "--set", f"data.test={tmp_path / 'test.jsonl'}", "--set", "data.encoding=latin-1",
                   "--set", "data.skip_bad_files=true", "--set", "preset=bert_tiny_en_uncased_scratch"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1
    assert "the test split holds label 'meh'" in error[0] and str(tmp_path / "test.jsonl") in error[0]
    assert not (tmp_path / "run" / "data").exists()  # refused before anything was tokenized


# --- the batches workers are dealt -------------------------------------------------------------------------

def write_class_folders(root: Path, rows: list[tuple[str, int]], names=("neg", "pos")) -> Path:
    """The IMDB layout: one document per file, `root/<class>/<n>.txt`, written class by class."""
    for n, (text, label) in enumerate(sorted(rows, key=lambda r: r[1])):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n:05d}.txt").write_text(text)
    return root


def deal(folder: str, *, workers: int, batch_size: int, epochs: int, seed: int | None,
         in_memory: bool = False) -> list[list[list[int]]]:
    """The labels of every batch each worker is dealt, epoch by epoch, from a tokenized training folder, through
    the feeding the trainer uses: [epoch][rank] → batches. Streamed through Ray Data's split, or `in_memory` as
    `data.shard_cache=memory` deals it: each worker reads its share of the shards once and deals every epoch
    from memory."""
    from concurrent.futures import ThreadPoolExecutor

    from ray.train import DataConfig

    from raynlp._internal.ray_data import read_parquet
    from raynlp.train._internal.feeding import ParquetShard, ShardCache, shard_batches, steps_per_epoch
    from raynlp.train.trainer import _in_order

    dataset = read_parquet(folder)
    rows = dataset.count()
    steps = steps_per_epoch(rows, batch_size, workers)
    if in_memory:
        shards = [ParquetShard(folder, rows, rank, workers) for rank in range(workers)]
        caches = [ShardCache(seed) for _ in range(workers)]  # the cache shuffles its own rows
    else:
        dataset.context.execution_options = _in_order(DataConfig.default_ingest_options())
        shards, caches = dataset.streaming_split(workers, equal=True), [None] * workers

    def worker(rank):
        batches = shard_batches(shards[rank], batch_size=batch_size, feature_columns=["token_ids"],
                                label_column="label", steps=steps, cache=caches[rank],
                                shuffle_seed=None if in_memory else seed, rank=rank)
        return [[next(batches)[1].tolist() for _ in range(steps)] for _ in range(epochs)]

    with ThreadPoolExecutor(workers) as pool:  # a streaming split's consumers read side by side
        dealt = list(pool.map(worker, range(workers)))
    return [[dealt[rank][epoch] for rank in range(workers)] for epoch in range(epochs)]


def prepared(root: Path, out: Path, seed: int) -> str:
    """The training split of a class-folder corpus, tokenized into shards the way `train` does it."""
    from raynlp.presets import resolve
    from raynlp.train._internal import prepare

    cfg = load_config(CONFIGS / "finetune.yaml", [
        f"run.output={out}", "preset=bert_tiny_en_uncased_scratch", "data.dataset=null", f"data.train={root}",
        "data.sequence_length=16", "data.shard_cache=stream", f"train.seed={seed}"])
    splits, names = prepare.raw_splits(cfg, labelled=True)
    assert names == ["neg", "pos"]
    return prepare.prepare(cfg, splits, resolve(cfg.preset), masked_lm=False, out=out).folders["train"]


def test_dealt_batches_mix_classes_in_every_epoch_and_follow_the_seed(ray_cluster, tmp_path):
    """Streamed and kept in memory alike, from a corpus written class by class."""
    root = write_class_folders(tmp_path / "corpus", rows_of("train", 640))
    folders = {name: (prepared(root, tmp_path / name, seed), seed) for name, seed in [("first", 0), ("again", 0),
                                                                                       ("other", 1)]}
    for in_memory in (False, True):
        way = "in memory" if in_memory else "streamed"
        runs = {name: deal(folder, workers=2, batch_size=16, epochs=2, seed=seed, in_memory=in_memory)
                for name, (folder, seed) in folders.items()}
        first = runs["first"]
        for epoch in first:
            for batches in epoch:
                assert all(0 < sum(batch) < len(batch) for batch in batches), way  # both classes in every batch
        assert first == runs["again"], way  # same seed: the same shards, the same batches, epoch by epoch
        assert first[0] != runs["other"][0] and first[1] != runs["other"][1], way  # another seed: other batches
        assert first[0] != first[1], way  # the second epoch is dealt in a new order
        # The same shards dealt with another seed: the first epoch as written, the second in another order.
        reseeded = deal(folders["first"][0], workers=2, batch_size=16, epochs=2, seed=1, in_memory=in_memory)
        assert reseeded[0] == first[0] and reseeded[1] != first[1], way
