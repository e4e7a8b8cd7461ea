"""Tests for raynlp.data.masked_lm: keras-hub's masked-LM contract, selection statistics, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from raynlp import datasets, presets
from raynlp.data.config import MaskingSettings
from raynlp.data.masked_lm import BatchMasker, mask_tokens, masked_lm_features

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
def tokenizer():
    """The bert uncased vocabulary (MiniLM's)."""
    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer

    vocabulary = presets.fetch("minilm_l6_en_uncased") / "assets" / "tokenizer" / "vocabulary.txt"
    tokenizer = FastWordPieceTokenizer(vocabulary, strip_accents=True)
    assert tokenizer.vocabulary_size == VOCAB_SIZE
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id) == (
        PAD, CLS, SEP, MASK
    )
    return tokenizer


@pytest.fixture(scope="module")
def real_packed(tokenizer) -> dict[str, np.ndarray]:
    """Every Pang & Lee sentence (rotten_tomatoes, train + test: 4,000) packed with the bert uncased vocabulary."""
    texts = [
        text for split in ("train", "test") for text in datasets.read_split("rotten_tomatoes", split)["text"].to_pylist()
    ]
    assert len(texts) == 4000
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


def _words(ids: np.ndarray, continuation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: whether it continues a word (a ## piece after a selectable token), and its word's start."""
    selectable = ~np.isin(ids, SPECIAL)
    previous = np.concatenate([np.zeros((len(ids), 1), bool), selectable[:, :-1]], axis=1)
    continues = selectable & continuation[ids] & previous
    columns = np.arange(ids.shape[1])
    return continues, np.maximum.accumulate(np.where(~continues, columns, 0), axis=1)


@pytest.mark.parametrize("max_selections", [96, 4], ids=["uncapped", "capped"])
def test_whole_word_masking_masks_every_piece_of_a_word_or_none(real_packed, tokenizer, max_selections):
    ids = real_packed["token_ids"]
    continuation = tokenizer.continuation_ids
    out = _mask(ids, seed=11, continuation_ids=continuation, max_selections=max_selections)
    real, selected = _check_contract(ids, out, max_selections)
    continues, start = _words(ids, continuation)
    assert continues.sum() > 5000  # real text: many words of several pieces
    # Never part of a word: each piece is selected exactly when its word's first piece is.
    np.testing.assert_array_equal(selected[continues], np.take_along_axis(selected, start, axis=1)[continues])
    assert (selected & continues).sum() > 100
    if max_selections == 96:
        # The rate still counts tokens (words are selected with it, so each token is too).
        rate = real.sum() / (~np.isin(ids, SPECIAL)).sum()
        assert abs(rate - 0.15) < 0.01, rate
    else:
        assert (real.sum(axis=1) <= 4).all() and (real.sum(axis=1) == 4).mean() > 0.3


def test_whole_words_by_hand():
    """Words of the row below: [a ##b ##c], [d], [##e] (a piece right after [CLS] starts a word), [f ##g]."""
    a, b, c, d, e, f, g = range(2000, 2007)
    continuation = np.zeros(VOCAB_SIZE, bool)
    continuation[[b, c, e, g]] = True
    ids = np.array([[CLS, e, a, b, c, d, f, g, SEP, PAD]], np.int32)
    words = [{1}, {2, 3, 4}, {5}, {6, 7}]
    for seed in range(40):
        for cap in (2, 3, 10):
            out = _mask(ids, seed=seed, selection_rate=0.5, max_selections=cap, continuation_ids=continuation)
            chosen = set(out["mask_positions"][0][out["mask_weights"][0] == 1].tolist())
            assert len(chosen) <= cap and all(w <= chosen or not (w & chosen) for w in words), (seed, cap, chosen)


def test_a_tokenizer_without_word_pieces_cannot_mask_whole_words():
    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
    from raynlp.errors import RaynlpError

    plain = FastWordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film"])
    assert MaskingSettings().mask_kwargs(plain)["continuation_ids"] is None
    with pytest.raises(RaynlpError, match=r"model.masking.whole_word: .* no word-continuation pieces"):
        MaskingSettings(whole_word=True).mask_kwargs(plain)


def _batch(ids):
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != PAD}


def test_dynamic_masks_are_new_each_epoch_and_the_same_for_the_same_seed_epoch_step_rank(tokenizer):
    ids = _synthetic_packed(n=64)
    train = BatchMasker(MaskingSettings().mask_kwargs(tokenizer), seed=3)
    first = train(_batch(ids), epoch=1, step=5, rank=1)
    again = BatchMasker(MaskingSettings().mask_kwargs(tokenizer), seed=3)(_batch(ids), epoch=1, step=5, rank=1)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])  # a resumed run draws the same masks
    for other in [dict(epoch=2, step=5, rank=1), dict(epoch=1, step=6, rank=1), dict(epoch=1, step=5, rank=0)]:
        assert not np.array_equal(train(_batch(ids), **other)["mask_positions"], first["mask_positions"]), other
    assert not np.array_equal(BatchMasker(train.mask_kwargs, seed=4)(_batch(ids), epoch=1, step=5, rank=1)
                              ["mask_positions"], first["mask_positions"])
    # A validation split draws the same masks every epoch, and not the training split's.
    validation = BatchMasker(train.mask_kwargs, seed=3, split="validation")
    np.testing.assert_array_equal(validation(_batch(ids), epoch=0, step=5, rank=1)["mask_positions"],
                                  validation(_batch(ids), epoch=4, step=5, rank=1)["mask_positions"])
    assert not np.array_equal(validation(_batch(ids), epoch=1, step=5, rank=1)["mask_positions"],
                              first["mask_positions"])
    assert set(first) == {"token_ids", "segment_ids", "padding_mask", "mask_positions", "mask_ids", "mask_weights"}


def test_a_masker_for_document_attention_finds_the_documents_in_the_ids_before_masking(real_packed, tokenizer):
    """Every [SEP] ends a document, whichever token a random replacement drew; the masks are the plain masker's."""
    from raynlp.data.packing import DocumentPacker, document_positions

    rows = real_packed["token_ids"][:400]
    stream = rows[(rows != CLS) & (rows != PAD)]  # each sentence closed by its [SEP]
    ids, firsts = DocumentPacker(128, CLS, SEP, PAD).add(stream)
    kwargs = {**MaskingSettings().mask_kwargs(tokenizer), "random_token_rate": 0.2}
    batch = {**_batch(ids), "first_position": firsts}
    plain = BatchMasker(kwargs, seed=3)(batch, epoch=0, step=0, rank=0)
    documents = {"sep_id": SEP, "pad_id": PAD, "max_position": 512}
    masked = BatchMasker(kwargs, seed=3, documents=documents)(batch, epoch=0, step=0, rank=0)
    assert set(masked) - set(plain) == {"document_ids", "position_ids"}
    assert all(np.array_equal(masked[k], plain[k]) for k in plain)
    expected = document_positions(ids, first_positions=firsts, **documents)
    assert (firsts > 1).any()
    assert all(np.array_equal(masked[k], expected[k]) for k in expected)
    assert (masked["document_ids"].max(axis=1) > 0).all()  # real windows hold several documents


def test_dynamic_masking_statistics_over_many_batches(real_packed, tokenizer):
    """15% of the tokens selected, 80/10/10 of them masked / random / kept, over 25 epochs of 4 batches."""
    ids = real_packed["token_ids"][:400]
    masker = BatchMasker(MaskingSettings().mask_kwargs(tokenizer), seed=0)
    selected_count = selectable_count = masked = kept = 0
    for epoch in range(25):
        for step in range(4):
            rows = ids[step * 100 : (step + 1) * 100]
            out = masker(_batch(rows), epoch=epoch, step=step, rank=0)
            real, selected = _check_contract(rows, out, 96)
            selected_count += real.sum()
            selectable_count += (~np.isin(rows, SPECIAL)).sum()
            masked += (out["token_ids"][selected] == MASK).sum()
            kept += (out["token_ids"][selected] == rows[selected]).sum()
    assert abs(selected_count / selectable_count - 0.15) < 0.003
    assert abs(masked / selected_count - 0.8) < 0.01 and abs(kept / selected_count - 0.1) < 0.01
