"""Class labels as a classifier needs them: ids 0..n-1, and the names they stand for.

    >>> names = label_names(read_corpus("news/train"))        # ['business', 'sports', ...] (class folders)
    >>> train = encode_labels(read_corpus("news/train"), names)  # label column: ids by sorted name

Corpora label their rows with names (a class folder, `"positive"` in a CSV) or with integer ids. Names are
sorted and numbered, the way `keras.utils.text_dataset_from_directory` numbers class folders; the names travel
with the trained model (its card), so that every later answer says `"sports"`, not `2`. Integer ids, and text
that reads as one (`"3"` in a CSV), stay the ids they are.
"""

from __future__ import annotations

import re

import numpy as np

from raynlp.errors import RaynlpError

_INTEGER = re.compile(r"[+-]?\d+")


def has_integer_labels(dataset) -> bool:
    """Whether the `label` column is an integer column (no pass over the data)."""
    import pyarrow as pa

    schema = dataset.schema()
    kind = dict(zip(schema.names, schema.types)).get("label")
    return isinstance(kind, pa.DataType) and pa.types.is_integer(kind)


def label_names(dataset, known: list[str] | None = None) -> list[str] | None:
    """The sorted label names of `dataset`, or None where its labels are integer ids.

    `known`: the names where a listing already gave them (class folders), which saves a pass over the data;
    otherwise the distinct labels are read from the data (one pass over it).
    """
    if has_integer_labels(dataset):
        return None
    names = sorted(known) if known is not None else sorted({str(v) for v in dataset.unique("label")})
    return None if all(_INTEGER.fullmatch(n) for n in names) else names


def as_label_ids(dataset, class_names: list[str] | None = None):
    """`(dataset with class-id labels, the names they stand for or None)`; a dataset without labels as it is.
    `class_names`: a class-folder corpus's names (`corpus.class_names`), which saves a pass over the data."""
    if "label" not in dataset.schema().names:
        return dataset, None
    names = label_names(dataset, known=class_names)
    return encode_labels(dataset, names), names


def unseen_labels(names: list[str] | None, other: list[str] | None) -> list[str]:
    """The names `other` holds that `names` has not (none where either is a set of integer ids)."""
    if names is None or other is None:
        return []
    return sorted(set(other) - set(names))


def encode_labels(dataset, names: list[str] | None):
    """`dataset` with its `label` column as int64 class ids: the index of each name in `names`, or the integer
    a label spells. Any other label fails the pass that meets it, naming the label."""
    if has_integer_labels(dataset):
        return dataset
    return dataset.map_batches(_to_ids, fn_kwargs={"names": names}, batch_format="numpy", batch_size=4096)


def _to_ids(batch: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
    index = None if names is None else {name: i for i, name in enumerate(names)}
    ids = []
    for value in batch["label"]:
        label = str(value)
        if index is not None and label in index:
            ids.append(index[label])
        elif _INTEGER.fullmatch(label):  # an id given as text ("1" in a CSV)
            ids.append(int(label))
        else:
            known = "integer ids" if index is None else ", ".join(names)
            raise RaynlpError(f"label {label!r} is not one of the labels the model knows ({known})")
    return {**batch, "label": np.asarray(ids, np.int64)}
