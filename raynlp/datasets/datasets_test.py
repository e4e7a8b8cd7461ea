import pytest

import raynlp.datasets as datasets
from raynlp.errors import RaynlpError


@pytest.mark.parametrize("name, train, test", [("rotten_tomatoes", 3200, 800), ("movie_reviews", 1200, 300)])
def test_labelled_sets_have_fixed_balanced_splits(name, train, test):
    splits = {s: datasets.read_split(name, s) for s in ("train", "test")}
    assert (splits["train"].num_rows, splits["test"].num_rows) == (train, test)
    train_texts, test_texts = (set(splits[s]["text"].to_pylist()) for s in ("train", "test"))
    assert not train_texts & test_texts
    labels = splits["train"]["label"].to_pylist()
    assert set(labels) == {0, 1} and 0.45 < sum(labels) / len(labels) < 0.55
    assert all(t and t == t.strip() for t in train_texts)


@pytest.mark.parametrize("name", ["rotten_tomatoes", "movie_reviews"])
def test_a_prefix_of_either_split_holds_both_classes(name):
    # The sources are sorted by label; a quick evaluation on the first rows must still see both classes.
    for split in ("train", "test"):
        head = datasets.read_split(name, split)["label"].to_pylist()[:100]
        assert 0.3 < sum(head) / len(head) < 0.7


def test_known_rows_keep_their_labels():
    rows = datasets.read_split("rotten_tomatoes", "test").to_pylist() + datasets.read_split("rotten_tomatoes").to_pylist()
    by_text = {r["text"]: r["label"] for r in rows}
    assert by_text["effective but too-tepid biopic"] == 1  # first rows of the source are positive


def test_shakespeare_is_unlabelled_paragraphs():
    table = datasets.read_split("shakespeare", "train")
    assert table.column_names == ["text"] and table.num_rows > 30000
    assert any("to be, or not to be" in t.lower() for t in table["text"].to_pylist())


def test_load_gives_ray_datasets(ray_cluster):
    splits = datasets.load("rotten_tomatoes")
    assert set(splits) == {"train", "test"}
    assert splits["test"].count() == 800
    assert set(splits["test"].schema().names) == {"text", "label"}
    # The rows themselves, in their stored order, and no file path that only this node's cache holds (Ray Data
    # may read a path on any node of a cluster).
    assert splits["test"].input_files() == []
    assert splits["test"].take(3) == datasets.read_split("rotten_tomatoes", "test").slice(0, 3).to_pylist()


def test_unknown_name_lists_the_data_sets():
    with pytest.raises(RaynlpError, match="unknown data set 'imdb'.*rotten_tomatoes"):
        datasets.load("imdb")
