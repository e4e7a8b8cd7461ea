"""Masked-LM masking in numpy, with the contract of keras-hub's ``MaskedLMMaskGenerator``.

The outputs have the names, shapes, dtypes and meaning of ``keras_hub.layers.MaskedLMMaskGenerator`` with
``mask_selection_length`` set, which ``keras_hub.models.BertMaskedLMPreprocessor`` turns into
``x = {token_ids, padding_mask, segment_ids, mask_positions}``, ``y = mask_ids``, ``sample_weight = mask_weights``.

How positions are chosen. keras-hub has two implementations that differ here:

* its pure-Python path (eager calls, Grain) selects every selectable token independently with probability
  ``mask_selection_rate``; when a row gets more than ``mask_selection_length`` it keeps a uniformly random subset
  of that size; positions are reported in ascending order;
* its tf.data path (tf_text ``RandomItemSelector``) selects exactly ``min(ceil(rate * num_selectable), cap)``
  positions per row, uniformly at random, also reported in ascending order.

This module follows the first (independent selection, random subset when over the cap, ascending positions). Of
the selected positions, a fraction ``mask_token_rate`` becomes the mask token, ``random_token_rate`` a token drawn
uniformly from ``[0, vocabulary_size)`` (as in both keras-hub paths, special tokens included), and the rest keep
their token but still count as labels. No TensorFlow, Keras or Ray here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BatchMasker", "mask_tokens", "masked_lm_features"]


def mask_tokens(
    token_ids: np.ndarray,
    *,
    vocabulary_size: int,
    mask_token_id: int,
    unselectable_token_ids: Sequence[int],
    selection_rate: float = 0.15,
    max_selections: int = 96,
    mask_token_rate: float = 0.8,
    random_token_rate: float = 0.1,
    continuation_ids: np.ndarray | None = None,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Choose and corrupt masked-LM positions in a batch of packed token ids.

    Args:
        token_ids: int array [n, L] of packed ids (e.g. ``pack(...)["token_ids"]``).
        vocabulary_size: Random replacement tokens are drawn from ``[0, vocabulary_size)``.
        mask_token_id: The ``[MASK]`` id.
        unselectable_token_ids: Ids never selected; for BERT, keras-hub passes its special tokens
            ``[CLS]``, ``[SEP]``, ``[PAD]`` and ``[MASK]``.
        selection_rate: Probability that each selectable token is selected.
        max_selections: At most this many positions per row (keras-hub's ``mask_selection_length``).
        mask_token_rate: Fraction of selected positions replaced by ``mask_token_id``.
        random_token_rate: Fraction of selected positions replaced by a random token.
        continuation_ids: For whole-word masking, bool [vocabulary_size]: the ids that continue a word ("##"
            pieces). A word (a selectable token and the continuations right after it) is selected with
            probability ``selection_rate``, all its pieces together, so the rate still counts tokens; a row
            over ``max_selections`` keeps whole words, in a random order, as long as they fit. None: token by
            token.
        rng: Source of randomness; the same generator state gives the same output.

    Returns:
        ``token_ids`` int32 [n, L] (the corrupted ids), ``mask_positions`` int32 [n, max_selections] (ascending,
        0 where unused), ``mask_ids`` int32 [n, max_selections] (original ids at those positions, 0 where unused),
        ``mask_weights`` float32 [n, max_selections] (1.0 for real selections, 0.0 for padding).
    """
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids must be a 2-D integer array [batch, length]; got {ids.dtype} {ids.shape}")
    if not 0 <= mask_token_id < vocabulary_size:
        raise ValueError(f"mask_token_id={mask_token_id} is outside [0, vocabulary_size={vocabulary_size})")
    if not (0.0 <= selection_rate <= 1.0 and 0.0 <= mask_token_rate and 0.0 <= random_token_rate):
        raise ValueError("selection_rate must be in [0, 1] and the token rates non-negative")
    if mask_token_rate + random_token_rate > 1.0:
        raise ValueError(f"mask_token_rate + random_token_rate = {mask_token_rate + random_token_rate} > 1")
    if max_selections < 0:
        raise ValueError(f"max_selections must be >= 0; got {max_selections}")
    n, length = ids.shape

    # Selection. The uniform draw that selects a position (u < rate) is also its priority for the cap: given
    # selection, those draws are i.i.d. on [0, rate), so keeping the smallest is a uniformly random subset.
    draw = rng.random((n, length))
    selectable = np.ones((n, length), dtype=bool)
    for token_id in unselectable_token_ids:
        selectable &= ids != token_id
    if continuation_ids is not None:
        # Every piece of a word takes the draw of its first piece (the word's start).
        columns = np.arange(length)
        previous = np.concatenate([np.zeros((n, 1), bool), selectable[:, :-1]], axis=1)
        starts = selectable & ~(np.asarray(continuation_ids, bool)[ids] & previous)
        start_of = np.maximum.accumulate(np.where(starts, columns, 0), axis=1)
        draw = np.take_along_axis(draw, start_of, axis=1)
    selected = selectable & (draw < selection_rate)
    over = np.flatnonzero(selected.sum(axis=1) > max_selections)
    if over.size and continuation_ids is not None:
        for row in over:
            selected[row] = _whole_words_within(selected[row], starts[row], draw[row], max_selections)
    elif over.size:
        priority = np.where(selected[over], draw[over], np.inf)
        rank = np.argsort(np.argsort(priority, axis=1, kind="stable"), axis=1, kind="stable")
        selected[over] &= rank < max_selections

    # Selected positions in row-major order, so ascending within each row; slot = rank within the row.
    rows, columns = np.nonzero(selected)
    counts = np.bincount(rows, minlength=n)
    slots = np.arange(rows.size) - (np.cumsum(counts) - counts)[rows]
    positions = np.zeros((n, max_selections), dtype=np.int32)
    positions[rows, slots] = columns
    mask_ids = np.zeros((n, max_selections), dtype=np.int32)
    mask_ids[rows, slots] = ids[rows, columns]
    mask_weights = np.zeros((n, max_selections), dtype=np.float32)
    mask_weights[rows, slots] = 1.0

    # Corruption of the selected positions.
    choice = rng.random(rows.size)
    to_mask = choice < mask_token_rate
    to_random = ~to_mask & (choice < mask_token_rate + random_token_rate)
    corrupted = ids.astype(np.int32, copy=True)
    corrupted[rows[to_mask], columns[to_mask]] = mask_token_id
    corrupted[rows[to_random], columns[to_random]] = rng.integers(
        0, vocabulary_size, size=int(to_random.sum()), dtype=np.int32
    )

    return {
        "token_ids": corrupted,
        "mask_positions": positions,
        "mask_ids": mask_ids,
        "mask_weights": mask_weights,
    }


def _whole_words_within(selected: np.ndarray, starts: np.ndarray, draw: np.ndarray, cap: int) -> np.ndarray:
    """One row's selected words in a random order (their draws), each kept if it still fits in `cap` positions:
    a word too long for the room left is passed over for a later, shorter one, so short words are favoured."""
    first = np.flatnonzero(selected & starts)
    ends = np.append(first[1:], selected.size)
    keep = np.zeros_like(selected)
    total = 0
    for i in np.argsort(draw[first], kind="stable"):
        word = np.flatnonzero(selected[first[i]:ends[i]]) + first[i]
        if total + word.size <= cap:
            keep[word] = True
            total += word.size
    return keep


def masked_lm_features(packed: dict[str, np.ndarray], **mask_kwargs) -> dict[str, np.ndarray]:
    """The columns a masked-LM trainer needs, from the output of ``FastWordPieceTokenizer.pack``.

    ``mask_kwargs`` are ``mask_tokens``'s keyword arguments. Returns ``token_ids`` (masked), ``segment_ids``
    (where ``packed`` holds them: stored rows of a single segment do not, see ``raynlp.data.columns``),
    ``padding_mask`` (of the unmasked ids, as keras-hub computes it), ``mask_positions``, ``mask_ids`` (the labels)
    and ``mask_weights`` (the sample weights).
    """
    masked = mask_tokens(packed["token_ids"], **mask_kwargs)
    return {
        "token_ids": masked["token_ids"],
        **({"segment_ids": packed["segment_ids"]} if "segment_ids" in packed else {}),
        "padding_mask": packed["padding_mask"],
        "mask_positions": masked["mask_positions"],
        "mask_ids": masked["mask_ids"],
        "mask_weights": masked["mask_weights"],
    }


class BatchMasker:
    """Dynamic masking: masks each packed batch of a split as a training worker deals it.

    A batch's masks come from a generator seeded by (seed, split, epoch, step, rank): every epoch of the training
    split sees new masks, and a run resumed at an epoch draws exactly the masks the uninterrupted run drew there.
    Other splits draw the same masks every epoch, so that their loss compares across epochs.

    `documents`: `document_positions`' keywords for packed windows (`sep_id`, `pad_id`, `max_position`), to add
    each token's `document_ids` and `position_ids` (`raynlp.data.packing.document_positions`, from the ids before
    masking and the windows' `first_position`), for a model that keeps attention within documents.
    """

    SPLITS = ("train", "validation", "test")

    def __init__(self, mask_kwargs: dict, seed: int, split: str = "train", documents: dict | None = None):
        self.mask_kwargs, self.seed, self.split, self.documents = mask_kwargs, seed, split, documents

    def __call__(self, batch: dict[str, np.ndarray], *, epoch: int, step: int, rank: int) -> dict[str, np.ndarray]:
        from raynlp.data.packing import document_positions

        epoch = epoch if self.split == "train" else 0
        rng = np.random.default_rng([self.seed, self.SPLITS.index(self.split), epoch, step, rank])
        features = masked_lm_features(batch, **self.mask_kwargs, rng=rng)
        if self.documents is not None:
            features.update(document_positions(batch["token_ids"], first_positions=batch.get("first_position"),
                                               **self.documents))
        return features
