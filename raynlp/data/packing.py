"""Document packing for masked-LM pretraining: no window of padding, no token thrown away.

One document a row wastes most of a pretraining step: a 20-token line in a 128-token row is 85% padding, and a
745-word review cut at 128 tokens loses the rest. Packed, the documents' tokens are one stream, each document
closed by `[SEP]`, cut into windows of `sequence_length` framed as `[CLS] ... [SEP]`: every window is full but
the last, and a long document goes on in the next window (as Hugging Face's `run_mlm.py` `group_texts`, which
drops the remainder instead, and MosaicBERT's unpadding). `data.packing: whole_documents` (`WholeDocumentPacker`)
splits no document that fits in a window: one that does not fit in the rest of a window starts the next (the rest
is padding), so every window starts with a document, as every row does one document a row; this costs some
padding, and a model trained on it also learns what the first tokens of a document look like (a speaker's name,
a title), which a row a document at fine-tuning time starts with.

A window also records where its first document's part starts in that document (`first_position`: 1 when the
window opens the document, further on when it goes on with one begun in the window before), so that a model
that reads each document by itself (`document_positions`) counts a continuation's positions on from there, and
position 1 always holds a document's first token, as it does in a row.

Tokenizing is the costly part and runs on Ray Data's workers, a batch of documents into one stream row
(`tokenize_documents`); cutting the streams into windows carries the last unfinished window from one batch to
the next, so it runs in order in one place (`write_packed`), streaming: memory holds one shard of windows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np

from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

# Windows a Parquet shard of packed rows holds.
SHARD_WINDOWS = 8192


@dataclass
class PackingStats:
    """What packing did, for the log and the tokenized folder's manifest."""

    sequence_length: int
    documents: int = 0
    tokens: int = 0  # the documents' own tokens (no special tokens), as packed
    tokens_cut: int = 0  # what `max_tokens` cut off the documents before packing
    windows: int = 0
    pad_tokens: int = 0  # [PAD]s in the windows
    # A row per document instead: its real tokens ([CLS] a [SEP], cut at sequence_length) and what the cut lost.
    unpacked_real_tokens: int = 0
    tokens_lost_unpacked: int = 0

    def add_documents(self, lengths: np.ndarray) -> None:
        kept = np.minimum(lengths, self.sequence_length - 2)
        self.documents += int(lengths.size)
        self.tokens += int(lengths.sum())
        self.unpacked_real_tokens += int((kept + 2).sum())
        self.tokens_lost_unpacked += int((lengths - kept).sum())

    @property
    def padding_before(self) -> float:
        """The share of [PAD] in one row a document."""
        return 1 - self.unpacked_real_tokens / max(self.documents * self.sequence_length, 1)

    @property
    def padding_after(self) -> float:
        return self.pad_tokens / max(self.windows * self.sequence_length, 1)

    def to_dict(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "windows": self.windows,
                "padding_before": round(self.padding_before, 4), "padding_after": round(self.padding_after, 4),
                "tokens_lost_unpacked": self.tokens_lost_unpacked, "tokens_cut": self.tokens_cut}


@dataclass
class DocumentPacker:
    """Cuts a stream of documents into `[CLS] ... [SEP]` windows, carrying an unfinished window to the next call.

    `add` and `finish` return the windows [n, sequence_length] and each window's `first_position` [n]: where its
    first token after `[CLS]` sits in its document's own row (1 for a document's first token).
    """

    sequence_length: int
    cls_id: int
    sep_id: int
    pad_id: int
    carry: np.ndarray = field(init=False, default_factory=lambda: np.zeros(0, np.int32))  # the unfinished window
    carry_position: int = field(init=False, default=1)  # the first_position of the carried tokens

    def __post_init__(self):
        if self.sequence_length < 3:
            raise RaynlpError(f"packing needs a sequence length of at least 3, not {self.sequence_length}")

    def add(self, stream: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The full windows that `stream` (documents, each closed by [SEP]) completes, and their first positions.
        `lengths`, the documents' own tokens, only `WholeDocumentPacker` needs."""
        body = self.sequence_length - 2
        stream = np.concatenate([self.carry, np.asarray(stream, np.int32)])
        positions = self._positions(stream)
        full = stream.size // body
        self.carry = stream[full * body:]
        self.carry_position = int(positions[full * body]) if self.carry.size else 1
        return self._frame(stream[: full * body].reshape(full, body)), positions[: full * body : body]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The last window, padded: [1, sequence_length], or [0, sequence_length] when nothing is left."""
        first = np.array([self.carry_position], np.int32)
        if (self.carry == self.sep_id).all():  # nothing, or the last document's [SEP]: the frame closes it
            self._reset()
            return np.zeros((0, self.sequence_length), np.int32), first[:0]
        body = np.full((1, self.sequence_length - 2), self.pad_id, np.int32)
        body[0, : self.carry.size] = self.carry
        windows = self._frame(body)
        windows[0, 1 + self.carry.size:] = self.pad_id  # the closing [SEP] follows the last token
        windows[0, 1 + self.carry.size] = self.sep_id
        self._reset()
        return windows, first

    def _positions(self, stream: np.ndarray) -> np.ndarray:
        """Each token's place in its document's row; the stream opens with the carried tokens' document."""
        index = np.arange(stream.size)
        opens = np.concatenate([[True], stream[:-1] == self.sep_id])  # a document starts after each [SEP]
        start_of = np.maximum.accumulate(np.where(opens, index, 0))
        return (index - start_of + np.where(start_of == 0, self.carry_position, 1)).astype(np.int32)

    def _reset(self) -> None:
        self.carry, self.carry_position = self.carry[:0], 1

    def _frame(self, body: np.ndarray) -> np.ndarray:
        n = body.shape[0]
        return np.concatenate([np.full((n, 1), self.cls_id, np.int32), body,
                               np.full((n, 1), self.sep_id, np.int32)], axis=1)


class WholeDocumentPacker(DocumentPacker):
    """A `DocumentPacker` that splits only the documents longer than a window.

    A window is `[CLS]` and whole documents, each closed by its `[SEP]`, then padding: a document that does not
    fit in the rest of a window starts the next one. A document longer than a window starts one too and goes on
    into the next, `[CLS] ... [SEP]` framed, its last part sharing a window with the documents after it.
    """

    def add(self, stream: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        room, body = self.sequence_length - 1, self.sequence_length - 2  # room: after [CLS], [SEP]s included
        stream, windows, firsts = np.asarray(stream, np.int32), [], []
        current = [self.carry] if self.carry.size else []
        used, first = self.carry.size, self.carry_position
        ends = np.cumsum(np.asarray(lengths) + 1)
        for start, end in zip(ends - np.asarray(lengths) - 1, ends):
            document, position = stream[start:end], 1  # its tokens and its [SEP]
            if used and used + document.size > room:
                windows.append(self._close(current))
                firsts.append(first)
                current, used = [], 0
            while document.size > room:  # it goes on in the next window; its last part at most fills one
                windows.append(self._frame(document[None, :body])[0])
                firsts.append(position)
                document, position = document[body:], position + body
            if not current:
                first = position
            current.append(document)
            used += document.size
        self.carry = np.concatenate(current) if current else np.zeros(0, np.int32)
        self.carry_position = first if current else 1
        return (np.stack(windows) if windows else np.zeros((0, self.sequence_length), np.int32),
                np.array(firsts, np.int32))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.carry.size:
            return np.zeros((0, self.sequence_length), np.int32), np.zeros(0, np.int32)
        windows, first = self._close([self.carry])[None], np.array([self.carry_position], np.int32)
        self._reset()
        return windows, first

    def _close(self, documents: list[np.ndarray]) -> np.ndarray:
        """`[CLS]`, the documents (each closed by its [SEP]), then padding."""
        window = np.full(self.sequence_length, self.pad_id, np.int32)
        content = np.concatenate(documents)
        window[0], window[1 : 1 + content.size] = self.cls_id, content
        return window


PACKERS = {"documents": DocumentPacker, "whole_documents": WholeDocumentPacker}  # `data.packing` → its packer


def packed_features(token_ids: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """The columns of a packed row (`raynlp.data.tokenize.PACKED_FEATURES`) for windows of token ids."""
    return {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": token_ids != pad_id}


def document_positions(token_ids: np.ndarray, *, sep_id: int, pad_id: int, first_positions: np.ndarray | None = None,
                       max_position: int | None = None) -> dict[str, np.ndarray]:
    """Where each token of packed windows sits in its own document, for attention kept within documents.

    A document ends with its `[SEP]`. Returns `document_ids` int32 [n, L] (0 for the document a window starts
    with, whose part the window's `[CLS]` is, 1 for the next, ...; -1 at padding) and `position_ids` int32 [n, L]
    (counted from the document's start as in a row of its own: `[CLS]` at 0, a later document's first token at 1).
    `first_positions` [n] (the packer's `first_position`) places each window's first document, a continuation
    further on; one that would go past the position table (`max_position`, the backbone's
    `max_sequence_length`) ends at its last place instead. Without, every window's first document starts at 1.
    Derive them from the unmasked ids: a random replacement may draw the `[SEP]` id.
    """
    ids = np.asarray(token_ids)
    n, length = ids.shape
    is_sep = ids == sep_id
    documents = np.cumsum(is_sep, axis=1) - is_sep  # the [SEP]s before a token: a [SEP] is its document's
    columns = np.broadcast_to(np.arange(length), (n, length))
    starts = np.concatenate([np.ones((n, 1), bool), documents[:, 1:] != documents[:, :-1]], axis=1)
    start_of = np.maximum.accumulate(np.where(starts, columns, 0), axis=1)
    positions = columns - start_of + (documents > 0)
    if first_positions is not None:
        first = np.asarray(first_positions, np.int64)
        if max_position is not None:  # the first document's last token at most at max_position - 1
            first = np.minimum(first, max_position - (documents == 0).sum(axis=1) + 1)
        positions = np.where((documents == 0) & (columns > 0), positions + first[:, None] - 1, positions)
    return {"document_ids": np.where(ids == pad_id, -1, documents).astype(np.int32),
            "position_ids": positions.astype(np.int32)}


class DocumentTokenizer:
    """Ray Data batch of documents → one row: their token ids as one stream, each closed by [SEP], and counts.

    `max_tokens`: keep only each document's first `max_tokens` tokens (`data.max_document_tokens`); `cut` counts
    what that left out."""

    def __init__(self, preset: str, text_column: str = "text", max_tokens: int | None = None):
        from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
        from raynlp.presets import resolve

        self.tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(resolve(preset))
        self.text_column, self.max_tokens = text_column, max_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        flat, lengths = self.tokenizer.encode(batch[self.text_column])
        lengths = lengths[lengths > 0]  # an empty document adds nothing, not even its [SEP]
        cut = 0
        if self.max_tokens is not None and lengths.size:
            place = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # within its document
            flat, cut = flat[place < self.max_tokens], int(np.maximum(lengths - self.max_tokens, 0).sum())
            lengths = np.minimum(lengths, self.max_tokens)
        stream = np.insert(flat, np.cumsum(lengths), self.tokenizer.sep_token_id).astype(np.int32)
        return {"stream": _one_row(stream), "lengths": _one_row(lengths.astype(np.int32)),
                "cut": np.array([cut], np.int64)}


def _one_row(array: np.ndarray) -> np.ndarray:
    """A column of one row holding `array` (Ray Data stores it as a variable-shaped tensor)."""
    column = np.empty(1, dtype=object)
    column[0] = array
    return column


def tokenize_documents(dataset, preset: str, *, text_column: str = "text", max_tokens: int | None = None,
                       batch_size: int = 512):
    """`dataset`'s documents as stream rows (`DocumentTokenizer`), tokenized in Ray tasks, in the input's order."""
    from raynlp.presets import portable

    return dataset.map_batches(_tokenize_in_task, fn_kwargs={"preset": portable(preset), "text_column": text_column,
                                                             "max_tokens": max_tokens},
                               batch_size=batch_size, batch_format="numpy")


_TOKENIZERS: dict[tuple, DocumentTokenizer] = {}


def _tokenize_in_task(batch, *, preset: str, text_column: str, max_tokens: int | None = None):
    key = (preset, text_column, max_tokens)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = DocumentTokenizer(preset, text_column, max_tokens)
    return _TOKENIZERS[key](batch)


def write_packed(streams, output_dir: str, *, preset: str, sequence_length: int, mode: str = "documents",
                 masking=None, mask_seed: int = 0, shuffle_seed: int | None = None,
                 shard_windows: int = SHARD_WINDOWS) -> dict:
    """Cut `tokenize_documents`'s stream rows, in order, into windows written as Parquet shards with a manifest.

    `mode`: a `data.packing` that packs (a key of `PACKERS`).

    With `shuffle_seed`, each shard's windows are written in an order seeded by it and the shard's number, so
    that a batch does not hold consecutive windows of one long document (a corpus read from a path comes
    shuffled by document already); without, in the stream's order.

    With `masking` (static masking, `MaskingSettings`), each shard's windows are masked once here, seeded by
    `mask_seed` and the shard's number; otherwise the windows are plain and the trainer masks every batch as
    it is dealt.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorArray

    from raynlp._internal import storage
    from raynlp.data.columns import compact
    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
    from raynlp.data.tokenize import MANIFEST
    from raynlp.presets import resolve

    storage.check_unused(output_dir)
    output = storage.location(output_dir)
    tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(resolve(preset))
    packer = PACKERS[mode](sequence_length, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    stats = PackingStats(sequence_length)
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (windows, their first positions)
    shards = 0

    def write(windows: np.ndarray, first_positions: np.ndarray) -> None:
        nonlocal shards
        if shuffle_seed is not None:
            order = np.random.default_rng([shuffle_seed, shards]).permutation(len(windows))
            windows, first_positions = windows[order], first_positions[order]
        columns = packed_features(windows, tokenizer.pad_token_id)
        if masking is not None:
            from raynlp.data.masked_lm import masked_lm_features

            columns = masked_lm_features(columns, **masking.mask_kwargs(tokenizer),
                                         rng=np.random.default_rng([mask_seed, shards]))
        columns = compact(columns, vocabulary_size=tokenizer.vocabulary_size, pairs=False)
        columns["first_position"] = first_positions
        # Tensor columns, as Ray Data's own `write_parquet` writes them (`write_tokenized`); a number a row plain.
        table = pa.table({name: pa.array(values) if values.ndim == 1 else ArrowTensorArray.from_numpy(values)
                          for name, values in columns.items()})
        path = storage.join(output, f"part-{shards:05d}.parquet")
        if storage.is_uri(path):
            fs, inner = storage.filesystem(str(path))
            pq.write_table(table, inner, filesystem=fs)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        stats.windows += windows.shape[0]
        stats.pad_tokens += int((windows == tokenizer.pad_token_id).sum())
        shards += 1

    def flush(at_least: int) -> None:
        nonlocal pending
        windows = np.concatenate([w for w, _ in pending]) if pending else np.zeros((0, sequence_length), np.int32)
        firsts = np.concatenate([f for _, f in pending]) if pending else np.zeros(0, np.int32)
        while windows.shape[0] >= max(at_least, 1):
            write(windows[:shard_windows], firsts[:shard_windows])
            windows, firsts = windows[shard_windows:], firsts[shard_windows:]
        pending = [(windows, firsts)] if windows.size else []

    # In order: the carried window needs the documents that follow it.
    streams.context.execution_options.preserve_order = True
    for row in streams.iter_rows():
        lengths = np.asarray(row["lengths"])
        stats.add_documents(lengths)
        stats.tokens_cut += int(row["cut"])
        pending.append(packer.add(np.asarray(row["stream"]), lengths))
        if sum(w.shape[0] for w, _ in pending) >= shard_windows:
            flush(shard_windows)
    pending.append(packer.finish())
    flush(1)
    manifest = {
        "preset": preset,
        "sequence_length": sequence_length,
        "masking": masking.manifest(mask_seed) if masking else None,
        "packing": {"mode": mode, **stats.to_dict()},
        "label_names": None,
        "rows": stats.windows,
        "shards": shards,
    }
    storage.write_text(storage.join(output, MANIFEST), json.dumps(manifest, indent=2))
    logger.info("packed %d documents (%d tokens%s) into %d windows of %d in %d Parquet shards at %s: padding "
                "%.1f%% → %.1f%% (one row a document would have cut %d tokens)", stats.documents, stats.tokens,
                f", {stats.tokens_cut} cut off by data.max_document_tokens" if stats.tokens_cut else "",
                stats.windows, sequence_length, shards, output, 100 * stats.padding_before, 100 * stats.padding_after,
                stats.tokens_lost_unpacked)
    return manifest
