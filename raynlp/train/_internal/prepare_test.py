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
