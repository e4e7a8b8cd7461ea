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

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class PreparedData:
    """The tokenized splits of a run, and what the driver learned from them."""

    folders: dict[str, str]  # split → folder of Parquet shards
    rows: dict[str, int]  # rows used: all of a folder, or its first `data.max_*_rows`
    limited: tuple[str, ...] = ()  # splits of which only the first `rows` rows are used

    def read(self, split: str):
        """The split's rows for the workers' feed, read by tasks that fit beside the workers."""
        from raynlp._internal.ray_data import FEED_TASK_CPUS, read_parquet

        dataset = read_parquet(self.folders[split], num_cpus=FEED_TASK_CPUS)
        return dataset.limit(self.rows[split]) if split in self.limited else dataset

    def row_bytes(self, split: str) -> float:
        """Bytes a row of `split` takes in a worker's memory as it is read: its shards' column types and shapes,
        and for a column of no fixed width (text riding along) its first shard's uncompressed bytes a row."""
        import pyarrow.parquet as pq
        import ray.data  # noqa: F401  registers Ray's tensor types: the schema then shows their shapes

        from raynlp.data.columns import row_bytes

        shard = pq.ParquetFile(storage.files(self.folders[split], ".parquet")[0])
        meta, stored = shard.metadata, {}
        for i in range(meta.num_columns):
            name = meta.schema.column(i).path.split(".")[0]
            size = sum(meta.row_group(g).column(i).total_uncompressed_size for g in range(meta.num_row_groups))
            stored[name] = stored.get(name, 0) + size / max(meta.num_rows, 1)
        return row_bytes(shard.schema_arrow, stored)


def check_paths(config: RecipeConfig) -> None:
    """Refuse a data.train, data.validation or data.test path that does not exist, naming the field: before Ray
    starts. (`raw_splits` checks the files' heads, the reading tasks the rest.) A named data set's run reads no
    path."""
    from raynlp.data.corpus import check_corpus_path

    if config.data.dataset:
        return
    for split in SPLITS:
        path = getattr(config.data, split)
        if path is not None:
            check_corpus_path(path, field=f"data.{split}")


def raw_splits(config: RecipeConfig, *, labelled: bool) -> tuple[dict, list[str] | None]:
    """The configured splits (raw text as Ray Datasets, or `raynlp tokenize` folders) and the label names.

    A training corpus read from a path comes shuffled (seeded by `train.seed`, unless `train.shuffle` is off);
    the other splits keep their order, so that reports stay comparable, unless `data.max_test_rows` cuts them:
    the cut is then a seeded sample, not the first rows (of a class-folder corpus, the first class alone). Names (class folders, string labels)
    become ids by sorted name, and a validation or test split holding a label the training data lacks is
    refused here, before anything is tokenized.
    """

    d = config.data
    if d.dataset:
        # Stored in a seeded random order already (raynlp.datasets), with integer labels.
        splits, names = _named_splits(config, labelled=labelled)
    else:
        seed = config.train.seed if config.train.shuffle else None
        sample = config.train.seed if d.max_test_rows else None
        splits = {split: _read(config, path, shuffle_seed=seed if split == "train" else sample)
                  for split, path in (("train", d.train), ("validation", d.validation), ("test", d.test))
                  if path is not None}
        names = None
    if d.validation_fraction:
        if isinstance(splits["train"], str):
            raise RaynlpError("data.validation_fraction carves raw training text; with a tokenized data.train give "
                              "data.validation (a folder tokenized the same way)")
        splits["validation"] = _carve(splits["train"], d.validation_fraction, config.train.seed, keep=True)
        splits["train"] = _carve(splits["train"], d.validation_fraction, config.train.seed, keep=False)
    columns = _columns(splits["train"])
    if labelled and "label" not in columns:
        raise RaynlpError(f"task {config.task} needs labelled data, but the training data has no label column "
                          f"(columns: {', '.join(columns)}); use class folders, a label column, or task pretrain")
    if not labelled:
        return {k: v if isinstance(v, str) else v.select_columns(["text"]) for k, v in splits.items()}, None
    if not d.dataset:
        splits, names = _encode_labels(config, splits)
    return splits, names


def _named_splits(config: RecipeConfig, *, labelled: bool) -> tuple[dict, list[str] | None]:
    """The splits of one named data set, or of several joined split by split: a test sentence of one stays in
    the test split. Joined training rows are shuffled together (seeded), so that no epoch starts with one set."""
    from raynlp import datasets

    specs = [datasets.get_spec(name) for name in config.data.datasets]  # their labels agree (Recipe.check)
    if len(specs) == 1:
        loaded = datasets.load(specs[0].name)
    else:
        columns = ["text", "label"] if labelled else ["text"]
        parts = [datasets.load(spec.name) for spec in specs]
        loaded = {split: parts[0][split].select_columns(columns).union(
            *(p[split].select_columns(columns) for p in parts[1:])) for split in datasets.SPLITS}
        loaded["train"] = loaded["train"].random_shuffle(seed=config.train.seed)
    names = specs[0].label_names
    return dict(loaded), list(names) if names else None


def _read(config: RecipeConfig, path: str, *, shuffle_seed: int | None):
    """A split's raw text as a Ray Dataset, or a tokenized folder's path as it is (read when prepared)."""
    from raynlp.data.corpus import CorpusFileError, read_corpus

    if is_tokenized(path):
        return path
    d = config.data
    try:
        return read_corpus(path, format=d.format, text_column=d.text_column, encoding=d.encoding,
                           on_bad_file="skip" if d.skip_bad_files else "raise", shuffle_seed=shuffle_seed)
    except CorpusFileError as e:
        raise e.suggesting(skip="data.skip_bad_files=true", encoding="data.encoding=latin-1") from None


def _carve(dataset, fraction: float, seed: int, *, keep: bool):
    """The rows whose text hashes (with `seed`) into the first `fraction` of the range (`keep`), or the others.

    A row's side depends on its text alone: streaming, the same split on every run, and a text repeated in the
    corpus never lands on both sides.
    """
    return dataset.map_batches(_carved_rows, fn_kwargs={"fraction": fraction, "seed": seed, "keep": keep},
                               batch_format="pyarrow")


def _carved_rows(batch, *, fraction: float, seed: int, keep: bool):
    import zlib

    import pyarrow as pa

    salt = f"{seed}\x00".encode()
    chosen = [zlib.crc32(salt + str(t).encode()) < fraction * 2**32 for t in batch["text"].to_pylist()]
    return batch.filter(pa.array(chosen) if keep else pa.array([not c for c in chosen]))


def _encode_labels(config: RecipeConfig, splits: dict) -> tuple[dict, list[str] | None]:
    """Names → ids by the training split's sorted names; tokenized folders carry their names in the manifest."""
    from raynlp.data.corpus import class_names, files_with_label
    from raynlp.data.labels import encode_labels, label_names, unseen_labels

    d = config.data
    paths = {"train": d.train, "validation": d.validation, "test": d.test}

    def names_of(split):
        source = splits[split]
        if isinstance(source, str):
            return _manifest(source).get("label_names")
        return label_names(source, known=class_names(paths[split], d.format) if paths[split] else None)

    def where(split, label):
        """The class folder or the files a label comes from."""
        path = paths[split]
        if class_names(path, d.format):
            return f"{path}/{label}"
        return ", ".join(files_with_label(path, label, d.format, text_column=d.text_column, encoding=d.encoding))

    names = names_of("train")
    # A validation split carved out of train holds only training labels.
    for split in [s for s in splits if s != "train" and not (s == "validation" and d.validation_fraction)]:
        other = names_of(split)
        if isinstance(splits[split], str) or isinstance(splits["train"], str):
            if other != names:
                raise RaynlpError(f"the {split} folder {paths[split]} was tokenized with labels {other}, the training "
                                  f"data with {names}; tokenize both from corpora with the same labels")
            continue
        for label in unseen_labels(names, other)[:1]:
            raise RaynlpError(f"the {split} split holds label {label!r} ({where(split, label)}), which the training "
                              f"data never has (its labels: {', '.join(names)}); remove those rows or add training "
                              "rows labelled so")
    encoded = {k: v if isinstance(v, str) else encode_labels(v, names) for k, v in splits.items()}
    if names:
        logger.info("labels by name: %s", ", ".join(f"{i} {n}" for i, n in enumerate(names)))
    return encoded, names


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
        manifest = _manifest(folders[split])
        rows[split] = manifest["rows"]
        limit = _row_limit(config, split)
        if manifest.get("packing") and not isinstance(source, str):
            limit = None  # the limit counted documents, packed here into windows
        if limit and limit < rows[split]:  # a cached folder is used whole unless the config limits it
            rows[split] = limit
            limited.append(split)
    return PreparedData(folders=folders, rows=rows, limited=tuple(limited))


def _known_rows(config: RecipeConfig, split: str) -> int | None:
    """At most how many rows a named data set's split holds, from its cache's record (a validation split is
    carved out of train); None for other corpora: unknown until read."""
    if not config.data.dataset:
        return None
    from raynlp import datasets

    return sum(datasets.split_rows(name, "test" if split == "test" else "train") for name in config.data.datasets)


def _row_limit(config: RecipeConfig, split: str) -> int | None:
    return config.data.max_train_rows if split == "train" else config.data.max_test_rows


def num_classes(config: RecipeConfig, data: PreparedData, label_names: list[str] | None) -> int:
    """Classes to train: `model.num_classes`, checked against the labels seen, or inferred from them. The
    other splits may hold no class id the training data lacks."""
    seen = {split: _label_range(folder) for split, folder in data.folders.items()}
    low, high = seen["train"]
    if low < 0:
        raise RaynlpError(f"labels must be class ids 0..n-1; the training data holds label {low}")
    classes = len(label_names) if label_names else high + 1
    wanted = config.model.num_classes
    if wanted is not None and wanted < classes:
        raise RaynlpError(f"model.num_classes is {wanted}, but the training data holds label "
                          f"{label_names[-1] if label_names else high} ({classes} classes); raise model.num_classes "
                          "or fix the labels")
    for split, (other_low, other_high) in seen.items():
        if split != "train" and (other_low < 0 or other_high > high):
            bad = other_low if other_low < 0 else other_high
            raise RaynlpError(f"the {split} split holds label {bad}, which the training data never has (labels "
                              f"{low}..{high}); remove those rows or add training rows with that label")
    return wanted or max(classes, 2)


def _label_range(folder: str) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = storage.files(folder, ".parquet")
    labels = pa.concat_arrays([pq.read_table(s, columns=["label"])["label"].combine_chunks() for s in shards])
    return int(pc.min(labels).as_py()), int(pc.max(labels).as_py())


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
    packing = (manifest.get("packing") or {}).get("mode", "none")
    if packing != "none" and not masked_lm:
        raise RaynlpError(f"{path} holds documents packed into windows for masked-LM pretraining, without labels; "
                          f"task {config.task} trains on labelled rows tokenized one a row (raynlp tokenize)")
    if masked_lm and packing != config.data.packing:
        raise RaynlpError(f"{path} was tokenized with data.packing={packing}, the config says "
                          f"data.packing={config.data.packing}: set data.packing={packing} to train on it")
    masked = bool(manifest.get("masking"))
    if masked and not masked_lm:
        raise RaynlpError(f"{path} was tokenized with masked-LM masking, which task {config.task} cannot use")
    if masked_lm and masked == config.model.masking.dynamic:
        raise RaynlpError(
            f"{path} holds masks drawn when it was tokenized, and model.masking.dynamic=true masks every batch anew: "
            "set model.masking.dynamic=false to train on its masks" if masked else
            f"{path} was tokenized without masks, and model.masking.dynamic=false trains on masks drawn when "
            "tokenizing: set model.masking.dynamic=true to mask its batches as they are dealt")


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
    from raynlp.data import tokenize_dataset, write_tokenized
    from raynlp.data.packing import tokenize_documents, write_packed
    from raynlp.data.tokenize import packing_actors, packing_batch_rows

    if is_tokenized(folder):
        logger.info("%s split already tokenized in %s (resuming run)", split, folder)
        return
    limit = _row_limit(config, split)
    if limit:
        dataset = dataset.limit(limit)
    # Static masking masks the rows once, here; dynamic masking leaves them to the workers (`Recipe.masker`).
    masking = config.model.masking if masked_lm and not config.model.masking.dynamic else None
    d = config.data
    # A partial folder from an interrupted attempt holds no manifest: start it over.
    storage.delete(folder)
    if d.packing != "none":
        logger.info("tokenizing the %s split in Ray tasks and packing its documents into windows of %d in %s (%s)",
                    split, d.sequence_length, folder, d.packing)
        documents = tokenize_documents(dataset, tokenizer_dir, max_tokens=d.max_document_tokens)
        write_packed(documents, folder, preset=tokenizer_dir,
                     sequence_length=d.sequence_length, mode=d.packing, masking=masking, mask_seed=config.train.seed,
                     shuffle_seed=config.train.seed if split == "train" and config.train.shuffle else None)
        return
    rows = limit or _known_rows(config, split)
    actors = packing_actors(rows, d.tokenizer_actors)
    logger.info("tokenizing the %s split into %s (%s)", split, folder,
                f"{actors} actors" if actors else "Ray tasks: a small split")
    packed = tokenize_dataset(dataset, tokenizer_dir, sequence_length=d.sequence_length, text_column="text",
                              masking=masking, mask_seed=config.train.seed, num_actors=actors,
                              batch_size=packing_batch_rows(rows, actors))
    write_tokenized(packed, folder, preset=tokenizer_dir, sequence_length=d.sequence_length, masking=masking,
                    mask_seed=config.train.seed)
