"""Packed rows as they are stored and moved: the narrowest types the models take, and no column a worker derives.

The tokenizer packs like keras-hub (`token_ids` and `segment_ids` int32, `padding_mask` bool). What goes into the
Parquet shards, through the object store and into a worker's memory cache is narrower:

- token ids (`token_ids`, masked-LM `mask_ids`) int16 where the vocabulary allows (BERT's 30,522 ids do), else
  int32; masked-LM `mask_positions` int16 (a position is below the sequence length);
- `padding_mask` bool;
- `segment_ids` int8 for pairs of texts, and not stored at all for a single segment: a worker deals them to `fit`
  as int8 zeros.

A Functional model (keras-hub's) casts each input to the dtype its `Input` declares inside the compiled step, so
the models and the exported presets are the same as with int32 arrays; a subclassed model gets the narrow types
(an `Embedding` casts its ids itself). Dynamic masking hands `fit` int32 ids (`masked_lm.mask_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ID_COLUMNS = ("token_ids", "mask_ids")
POSITION_COLUMNS = ("mask_positions",)
SEGMENT_DTYPE = np.dtype(np.int8)


def id_dtype(vocabulary_size: int) -> np.dtype:
    """int16 when every id of the vocabulary fits in it, else int32."""
    return np.dtype(np.int16 if vocabulary_size <= np.iinfo(np.int16).max + 1 else np.int32)


def compact(columns: Mapping[str, np.ndarray], *, vocabulary_size: int, pairs: bool) -> dict[str, np.ndarray]:
    """Packed (and masked) columns as stored: see the module. `pairs`: the rows hold two segments."""
    out = dict(columns)
    ids = id_dtype(vocabulary_size)
    for name in ID_COLUMNS:
        if name in out:
            out[name] = out[name].astype(ids, copy=False)
    for name in POSITION_COLUMNS:
        if name in out:  # positions are below the sequence length, as ids are below the vocabulary size
            out[name] = out[name].astype(id_dtype(np.shape(out["token_ids"])[1]), copy=False)
    segments = out.pop("segment_ids", None)
    if pairs and segments is not None:
        out["segment_ids"] = segments.astype(SEGMENT_DTYPE, copy=False)
    return out


def derived(name: str, batch: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Column `name` of a packed batch that does not store it (single-segment `segment_ids`), or None."""
    if name == "segment_ids" and "token_ids" in batch:
        return np.zeros(np.shape(batch["token_ids"]), SEGMENT_DTYPE)
    return None


def row_bytes(schema, variable: Mapping[str, float] | None = None) -> float:
    """Bytes one row of a tokenized shard takes as numpy arrays (what a worker's memory cache holds), from the
    shard's Arrow schema (read with `ray.data` imported, which registers its tensor types): fixed-shape tensor
    columns by their shape and type, the others by their type; a column of no fixed width (text riding along)
    by `variable`'s bytes a row for it."""
    import pyarrow as pa

    total = 0.0
    for field in schema:
        kind, shape = field.type, ()
        if isinstance(kind, pa.ExtensionType):  # Ray Data's tensor columns: a shape and an element type
            shape = getattr(kind, "shape", ()) or ()
            kind = kind.storage_type.value_type
        if pa.types.is_boolean(kind):
            item = 1  # numpy keeps a bool in a byte
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            item = kind.bit_width // 8
        else:
            item = None
        if item is None or any(size is None for size in shape):
            if variable is None or field.name not in variable:
                raise ValueError(f"column {field.name} ({field.type}) has no fixed width: give its bytes a row")
            total += variable[field.name]
            continue
        total += item * int(np.prod(shape, dtype=np.int64))
    return total
