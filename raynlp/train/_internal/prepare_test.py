"""Named data sets joined: each split is theirs split by split (a test row stays a test row), training rows
shuffled together, only the columns the task trains on."""

from raynlp import datasets
from raynlp.train import load_config
from raynlp.train._internal.prepare import raw_splits


def _config(task: str, *overrides: str):
    return load_config(None, [f"task={task}", "preset=bert_tiny_en_uncased_scratch",
                              "data.dataset=[movie_reviews, rotten_tomatoes]", *overrides])


def test_joined_data_sets_keep_their_splits_and_mix_their_training_rows(ray_cluster):
    splits, names = raw_splits(_config("pretrain"), labelled=False)
    assert names is None and set(splits) == {"train", "test"}
    for split in ("train", "test"):
        rows = splits[split].take_all()
        assert all(set(row) == {"text"} for row in rows)
        expected = {name: set(datasets.read_split(name, split)["text"].to_pylist())
                    for name in ("movie_reviews", "rotten_tomatoes")}
        texts = [row["text"] for row in rows]
        assert sorted(texts) == sorted(expected["movie_reviews"] | expected["rotten_tomatoes"]), split
    # The 1,200 reviews are not all first: the first 400 training rows hold both sets' rows.
    head = [row["text"] for row in splits["train"].take(400)]
    reviews = set(datasets.read_split("movie_reviews", "train")["text"].to_pylist())
    assert 0 < sum(text in reviews for text in head) < 400


def test_joined_labelled_sets_keep_their_labels(ray_cluster):
    splits, names = raw_splits(_config("finetune"), labelled=True)
    assert names == ["negative", "positive"]
    by_text = {row["text"]: row["label"] for row in splits["test"].take_all()}
    for name in ("movie_reviews", "rotten_tomatoes"):
        for row in datasets.read_split(name, "test").to_pylist()[:50]:
            assert by_text[row["text"]] == row["label"]


def test_compact_columns_reach_the_shards_and_fit_and_size_the_memory_cache(ray_cluster, tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from raynlp._internal import storage
    from raynlp.train._internal.feeding import shard_batches
    from raynlp.train._internal.prepare import PreparedData, prepare
    from raynlp.train.recipes import RECIPES
    from raynlp.train.trainer import _plan

    config = load_config(None, ["task=finetune", "preset=bert_tiny_en_uncased_scratch", "data.dataset=rotten_tomatoes",
                                "data.sequence_length=32", "train.batch_size=16"])
    recipe = RECIPES["finetune"]
    splits, _ = raw_splits(config, labelled=True)
    data = prepare(config, splits, recipe.tokenizer(config, splits["train"], None), masked_lm=False, out=tmp_path)
    # The shards: int16 ids, a bool mask, no segment ids (one segment); a row is 32 × 2 + 32 × 1 + 8 (label) bytes.
    schema = pq.read_schema(storage.files(data.folders["train"], ".parquet")[0])
    assert {f.name: str(getattr(f.type, "storage_type", f.type)) for f in schema} == {
        "token_ids": "large_list<item: int16>", "padding_mask": "large_list<item: bool>", "label": "int64"}
    assert data.row_bytes("train") == 104
    # What `fit` is given: the same arrays, segment ids dealt as zeros, and their bytes are the row size.
    features, labels = next(shard_batches(data.read("train"), batch_size=16, feature_columns=recipe.feature_columns,
                                          label_column="label", steps=1, passes=1))
    assert {k: v.dtype for k, v in features.items()} == {
        "token_ids": np.int16, "segment_ids": np.int8, "padding_mask": np.bool_}
    assert not features["segment_ids"].any() and features["segment_ids"].shape == (16, 32)
    assert (features["token_ids"].nbytes + features["padding_mask"].nbytes + labels.nbytes) / 16 == 104
    # The memory cache's 1 GiB a worker (of the 2 the config asks for) holds rows of that size, the shuffled training
    # split twice (its epochs after the first are dealt from a copy): 8M rows fit, 12M do not (the int64 estimate
    # before would have sent 1.7M to streaming).
    plans = {rows: _plan(config, recipe, PreparedData(data.folders, {"train": rows, "test": 10_000}), preset_dir=None,
                         tokenizer_dir=config.preset, num_classes=2, label_names=None).cache_shards
             for rows in (8_000_000, 12_000_000)}
    assert config.scaling.num_workers == 2 and config.train.shuffle
    assert plans == {8_000_000: True, 12_000_000: False}
