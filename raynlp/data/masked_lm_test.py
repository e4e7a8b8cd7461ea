"""Tests for raynlp.data.masked_lm: keras-hub's masked-LM contract, selection statistics, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from raynlp import datasets, presets
from raynlp.data.masked_lm import mask_tokens, masked_lm_features

VOCAB_SIZE, PAD, CLS, SEP, MASK = 30522, 0, 101, 102, 103
SPECIAL = [CLS, SEP, PAD]


def _synthetic_packed(n=2000, length=64, seed=0) -> np.ndarray:
    """[CLS] random word ids [SEP] [PAD]..., with row lengths from 0 to length - 2 words."""
    rng = np.random.default_rng(seed)
    words = rng.integers(1000, VOCAB_SIZE, size=(n, length))
    num_words = rng.integers(0, length - 1, size=n)
    columns = np.arange(length)
    ids = np.where(columns <= num_words[:, None], words, PAD)
    ids[:, 0] = CLS
    ids[np.arange(n), num_words + 1] = SEP
    return ids.astype(np.int32)


def _mask(ids, seed=0, **overrides):
    kwargs = {"vocabulary_size": VOCAB_SIZE, "mask_token_id": MASK, "unselectable_token_ids": SPECIAL}
    kwargs.update(overrides)
    return mask_tokens(ids, rng=np.random.default_rng(seed), **kwargs)


@pytest.fixture(scope="module")
def real_packed() -> dict[str, np.ndarray]:
    """Every Pang & Lee sentence (rotten_tomatoes, train + test: 4,000) packed with the bert uncased vocabulary."""
    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer

    texts = [
        text for split in ("train", "test") for text in datasets.read_split("rotten_tomatoes", split)["text"].to_pylist()
    ]
    assert len(texts) == 4000
    vocabulary = presets.fetch("minilm_l6_en_uncased") / "assets" / "tokenizer" / "vocabulary.txt"
    tokenizer = FastWordPieceTokenizer(vocabulary, strip_accents=True)
    assert tokenizer.vocabulary_size == VOCAB_SIZE
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id) == (
        PAD, CLS, SEP, MASK
    )
    return tokenizer.pack(texts, sequence_length=128)


def _check_contract(ids, out, max_selections):
    n, length = ids.shape
    assert out["token_ids"].dtype == np.int32 and out["token_ids"].shape == (n, length)
    for key, dtype in (("mask_positions", np.int32), ("mask_ids", np.int32), ("mask_weights", np.float32)):
        assert out[key].dtype == dtype and out[key].shape == (n, max_selections), key
    weights = out["mask_weights"]
    assert set(np.unique(weights)) <= {0.0, 1.0}
    real = weights == 1.0
    # Real selections come first in each row, then padding with position 0 and label 0.
    assert (np.diff(weights, axis=1) <= 0).all()
    assert (out["mask_positions"][~real] == 0).all() and (out["mask_ids"][~real] == 0).all()
    positions = out["mask_positions"]
    # Positions ascend strictly (so are unique) within the real selections.
    assert ((np.diff(positions, axis=1) > 0) | ~real[:, 1:]).all()
    # Labels are the original ids at the masked positions, never special tokens.
    original = np.take_along_axis(ids, positions, axis=1)
    assert (original[real] == out["mask_ids"][real]).all()
    assert not np.isin(out["mask_ids"][real], SPECIAL).any()
    # Only selected positions may change.
    changed = out["token_ids"] != ids
    selected = np.zeros_like(changed)
    rows = np.repeat(np.arange(n), real.sum(axis=1))
    selected[rows, positions[real]] = True
    assert not (changed & ~selected).any()
    assert (out["token_ids"] >= 0).all() and (out["token_ids"] < VOCAB_SIZE).all()
    return real, selected


def test_contract_on_synthetic_rows():
    ids = _synthetic_packed()
    out = _mask(ids)
    real, _ = _check_contract(ids, out, 96)
    assert real.sum() > 0


def test_rates_on_real_text(real_packed):
    ids = real_packed["token_ids"]
    out = _mask(ids, seed=7)
    real, selected = _check_contract(ids, out, 96)
    selectable = ~np.isin(ids, SPECIAL)
    rate = real.sum() / selectable.sum()
    assert abs(rate - 0.15) < 0.005, rate  # about 15k of 100k tokens: the standard error is about 0.001
    new = out["token_ids"][selected]
    old = ids[selected]
    masked, kept = (new == MASK).mean(), (new == old).mean()
    randomised = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(randomised - 0.1) < 0.02
    # Padding positions are never selected.
    assert not (selected & ~real_packed["padding_mask"]).any()


def test_max_selections_caps_with_a_random_subset():
    ids = _synthetic_packed(n=500, length=40)
    out = _mask(ids, selection_rate=0.9, max_selections=5)
    real, _ = _check_contract(ids, out, 5)
    selectable_counts = (~np.isin(ids, SPECIAL)).sum(axis=1)
    assert (real.sum(axis=1) <= 5).all()
    assert (real.sum(axis=1)[selectable_counts >= 20] == 5).all()
    # Over the cap, a random subset is kept, not always the first selectable positions (1..5).
    full = real.sum(axis=1) == 5
    assert (out["mask_positions"][full] != np.arange(1, 6)).any(axis=1).mean() > 0.9


def test_more_slots_than_positions_and_empty_rows():
    ids = np.array([[CLS, SEP, PAD, PAD], [CLS, 2000, 2001, SEP]], dtype=np.int32)
    out = _mask(ids, selection_rate=1.0, max_selections=6, mask_token_rate=1.0, random_token_rate=0.0)
    assert out["mask_positions"].tolist() == [[0] * 6, [1, 2, 0, 0, 0, 0]]
    assert out["mask_ids"].tolist() == [[0] * 6, [2000, 2001, 0, 0, 0, 0]]
    assert out["mask_weights"].tolist() == [[0.0] * 6, [1.0, 1.0, 0, 0, 0, 0]]
    assert out["token_ids"].tolist() == [[CLS, SEP, PAD, PAD], [CLS, MASK, MASK, SEP]]


def test_seeded_and_deterministic():
    ids = _synthetic_packed(n=200)
    first, again, other = _mask(ids, seed=3), _mask(ids, seed=3), _mask(ids, seed=4)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["mask_positions"], other["mask_positions"])
    assert not np.array_equal(first["token_ids"], other["token_ids"])


def test_refuses_bad_arguments():
    ids = _synthetic_packed(n=4)
    with pytest.raises(ValueError):
        _mask(ids, mask_token_rate=0.8, random_token_rate=0.3)
    with pytest.raises(ValueError):
        _mask(ids[0])
    with pytest.raises(ValueError):
        _mask(ids, mask_token_id=VOCAB_SIZE)


def test_features_for_a_trainer():
    ids = _synthetic_packed(n=50, length=32)
    packed = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != PAD}
    features = masked_lm_features(
        packed, vocabulary_size=VOCAB_SIZE, mask_token_id=MASK, unselectable_token_ids=SPECIAL,
        max_selections=8, rng=np.random.default_rng(0),
    )
    assert set(features) == {"token_ids", "segment_ids", "padding_mask", "mask_positions", "mask_ids",
                             "mask_weights"}
    assert features["segment_ids"] is packed["segment_ids"] and features["padding_mask"] is packed["padding_mask"]
    _check_contract(ids, {k: features[k] for k in ("token_ids", "mask_positions", "mask_ids", "mask_weights")}, 8)


def test_same_contract_as_keras_hub():
    import keras_hub

    ids = _synthetic_packed(n=16, length=32)
    generator = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=VOCAB_SIZE, mask_selection_rate=0.15, mask_token_id=MASK, mask_selection_length=8,
        unselectable_token_ids=SPECIAL,
    )
    theirs = {key: np.asarray(value) for key, value in generator(ids).items()}
    ours = _mask(ids, max_selections=8)
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
    # Same meaning: keras-hub's own output passes the checks ours does.
    _check_contract(ids, theirs, 8)
