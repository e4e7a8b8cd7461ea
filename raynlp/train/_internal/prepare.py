"""Before training starts: the text of each split tokenized once into Parquet shards in the run's folder.

Tokenizing first (on every CPU of the cluster, by Ray Data's actor pool) and training second has three reasons:

- the training workers stream cheap Parquet reads, not a tokenizer pipeline that would compete with them
  for CPUs (on a small cluster, a streaming tokenizer beside the trainers can be starved of CPUs entirely);
- every epoch, and every restart after a failure, reads the very same rows in the same order;
- the row counts and labels are known exactly from the shards, so every rank runs the same number of steps.

This is the Levanter way: a sharded corpus tokenized by Ray into cached shards. A split already tokenized
with `raynlp tokenize` (a folder holding a manifest) is used as it is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from raynlp._internal import storage
from raynlp.errors import RaynlpError
from raynlp.train.config import RecipeConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
SMALL_SPLIT_ROWS = 20_000


@dataclass(frozen=True)
class PreparedData:
    """The tokenized splits of a run, and what the driver learned from them."""

    folders: dict[str, str]  # split → folder of Parquet shards
    rows: dict[str, int]  # rows used: all of a folder, or its first `data.max_*_rows`
    limited: tuple[str, ...] = ()  # splits of which only the first `rows` rows are used

    def read(self, split: str):
        from raynlp._internal.ray_data import read_parquet

        dataset = read_parquet(self.folders[split])
        return dataset.limit(self.rows[split]) if split in self.limited else dataset


def raw_splits(config: RecipeConfig, *, labelled: bool) -> tuple[dict, list[str] | None]:
    """The configured train and test data (raw text, or `raynlp tokenize` folders) and the label names."""
    from raynlp import datasets
    from raynlp.data import read_corpus

    d = config.data
    if d.dataset:
        splits, label_names = datasets.load(d.dataset), datasets.get_spec(d.dataset).label_names
    else:
        def read(path):
            if path is None or is_tokenized(path):
                return path  # read when prepared: a tokenized folder needs no Ray Data pass now
            return read_corpus(path, format=d.format, text_column=d.text_column)

        splits, label_names = {"train": read(d.train), "test": read(d.test)}, None
    train = splits["train"]
    columns = _columns(train)
    if labelled and "label" not in columns:
        raise RaynlpError(f"task {config.task} needs labelled data, but the training data has no label column "
                          f"(columns: {', '.join(columns)}); use class folders, a label column, or task pretrain")
    return splits, list(label_names) if label_names else None


def prepare(config: RecipeConfig, splits: dict, tokenizer_dir: str, *, masked_lm: bool,
            out: Path | str) -> PreparedData:
    """Tokenize every raw split into `out/data/<split>` (kept for a resumed run; `out` may be a storage URI),
    or check a tokenized one."""
    folders, rows, limited = {}, {}, []
    for split in SPLITS:
        source = splits.get(split)
        if source is None:
            continue
        if isinstance(source, str):
            check_manifest(source, config, masked_lm=masked_lm)
            folders[split] = str(storage.location(source))  # absolute: read by Ray Data tasks
        else:
            folders[split] = str(storage.join(out, "data", split))
            _tokenize_into(folders[split], source, config, tokenizer_dir, split=split, masked_lm=masked_lm)
        rows[split] = _manifest(folders[split])["rows"]
        limit = _row_limit(config, split)
        if limit and limit < rows[split]:  # a cached folder is used whole unless the config limits it
            rows[split] = limit
            limited.append(split)
    return PreparedData(folders=folders, rows=rows, limited=tuple(limited))


def _known_rows(config: RecipeConfig, split: str) -> int | None:
    """Rows of a named data set's split, from its registry entry (None for other corpora: unknown until read)."""
    if not config.data.dataset:
        return None
    from raynlp import datasets

    return datasets.split_rows(config.data.dataset, split)


def _row_limit(config: RecipeConfig, split: str) -> int | None:
    return config.data.max_train_rows if split == "train" else config.data.max_test_rows


def num_classes(config: RecipeConfig, data: PreparedData) -> int:
    """Classes to train: `model.num_classes`, checked against the labels seen, or inferred from them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = storage.files(data.folders["train"], ".parquet")
    labels = pa.concat_arrays([pq.read_table(s, columns=["label"])["label"].combine_chunks() for s in shards])
    low, high = int(pc.min(labels).as_py()), int(pc.max(labels).as_py())
    if low < 0:
        raise RaynlpError(f"labels must be class ids 0..n-1; the training data holds label {low}")
    seen = high + 1
    wanted = config.model.num_classes
    if wanted is not None and wanted < seen:
        raise RaynlpError(f"model.num_classes is {wanted}, but the training data holds label {high} "
                          f"({seen} classes); raise model.num_classes or fix the labels")
    return wanted or max(seen, 2)


def is_tokenized(path: str | None) -> bool:
    """Whether `path` is a folder (or storage URI) of tokenized shards with their manifest."""
    from raynlp.data.tokenize import MANIFEST

    if not path:
        return False
    try:
        return storage.exists(storage.join(path, MANIFEST))
    except storage.ERRORS:
        return False  # a corpus URI pyarrow cannot open (http://…) is raw text for Ray Data to read


def check_manifest(path: str, config: RecipeConfig, *, masked_lm: bool) -> None:
    manifest = _manifest(path)
    if manifest["sequence_length"] != config.data.sequence_length:
        raise RaynlpError(f"{path} was tokenized at sequence length {manifest['sequence_length']}, the config says "
                          f"data.sequence_length={config.data.sequence_length}; make them agree")
    if bool(manifest.get("masking")) != masked_lm:
        raise RaynlpError(f"{path} was tokenized {'with' if manifest.get('masking') else 'without'} masked-LM "
                          f"masking, which task {config.task} cannot use")


def _manifest(path: str) -> dict:
    from raynlp.data.tokenize import MANIFEST

    return json.loads(storage.read_text(storage.join(path, MANIFEST)))


def _columns(dataset) -> list[str]:
    if isinstance(dataset, str):
        import pyarrow.parquet as pq

        return pq.read_schema(storage.files(dataset, ".parquet")[0]).names
    return dataset.schema().names


def _tokenize_into(folder: str, dataset, config: RecipeConfig, tokenizer_dir: str, *, split: str,
                   masked_lm: bool) -> None:
    from raynlp.data import MaskingConfig, tokenize_dataset, write_tokenized

    if is_tokenized(folder):
        logger.info("%s split already tokenized in %s (resuming run)", split, folder)
        return
    limit = _row_limit(config, split)
    if limit:
        dataset = dataset.limit(limit)
    masking = None
    if masked_lm:
        m = config.model.masking
        masking = MaskingConfig(selection_rate=m.selection_rate, max_selections=m.max_selections,
                                mask_token_rate=m.mask_token_rate, random_token_rate=m.random_token_rate,
                                seed=config.train.seed)
    rows = limit or _known_rows(config, split)
    # A small split is packed in a few Ray tasks: starting an actor pool would take longer than the work.
    actors = 0 if rows is not None and rows <= SMALL_SPLIT_ROWS else config.data.tokenizer_actors
    logger.info("tokenizing the %s split into %s (%s)", split, folder,
                f"{actors} actors" if actors else "Ray tasks: a small split")
    packed = tokenize_dataset(dataset, tokenizer_dir, sequence_length=config.data.sequence_length,
                              text_column="text", masking=masking, num_actors=actors)
    # A partial folder from an interrupted attempt holds no manifest: start it over.
    storage.delete(folder)
    write_tokenized(packed, folder, preset=tokenizer_dir, sequence_length=config.data.sequence_length,
                    masking=masking)
