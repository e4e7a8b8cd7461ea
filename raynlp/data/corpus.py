"""Any corpus as a streaming Ray Dataset with a `text` column (and `label` where the corpus has one; `text_pair`
where asked, for pairs of texts).

    >>> read_corpus("aclImdb/train")                 # class folders: pos/, neg/ → label "neg", "pos"
    >>> read_corpus("s3://bucket/corpus/*.jsonl")    # one JSON object per line
    >>> read_corpus("plays/", format="paragraphs")   # a document per blank-line-separated paragraph
    >>> read_corpus("news/train", shuffle_seed=0)    # rows in a seeded random order (a training split)
    >>> read_corpus("nli.csv", text_column="premise", pair_column="hypothesis")  # sentence pairs

The driver only lists files and checks each one's head (non-empty, decodable, the text column present); the
files themselves are read by Ray tasks, a group of files per task, a batch of rows at a time, so a corpus larger
than memory is never loaded whole.

Labels come as the corpus has them: a class folder's name, or the label column's values (text formats give
strings, Parquet its own type). `raynlp.data.labels` turns names into class ids.

Shuffling (`shuffle_seed`). Users' corpora often come sorted (class folders one after the other, files
written class by class), and training on them in that order fails. Two seeded steps make the order random:
the file list is permuted in the driver (free; for one document per file, as class folders hold, this alone
mixes every row), then Ray Data's `random_shuffle` mixes the rows of all files (also inside one sorted file).
The second step is an all-to-all exchange through Ray's object store, which spills to disk past its memory:
memory stays bounded, at the cost of writing the raw text once more; for text this costs less than
shuffling the tokenized rows, which are larger. Files are grouped into read tasks of up to
`_FILES_PER_TASK` files or `_BYTES_PER_TASK` bytes, so that a folder of many small files is a few blocks, not one
block (and one shuffle input) per file. Same seed, same files → the same order on every run.
"""

import codecs
import csv
import glob as globlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raynlp._internal import storage
from raynlp._internal.ray_data import read_parquet
from raynlp._internal.storage import is_uri
from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

Format = Literal["lines", "paragraphs", "jsonl", "csv", "parquet", "folders"]
FORMATS: tuple[str, ...] = get_args(Format)
_TABLE_FORMATS = ("csv", "jsonl", "parquet")  # formats with named columns
_FORMAT_BY_SUFFIX = {".txt": "lines", ".text": "lines", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv",
                     ".parquet": "parquet"}
_HEAD_BYTES = 1 << 16
_ROWS_PER_BATCH = 1024
# A Ray task per file costs about 10 ms of scheduling on 2 cores: group small files into one read task.
_FILES_PER_TASK = 256
_BYTES_PER_TASK = 64 << 20

csv.field_size_limit(sys.maxsize)  # Full reviews can exceed csv's 128 KiB default.


@dataclass(frozen=True)
class _File:
    path: str  # a local path or a URI pyarrow can open
    label: str | None = None  # the class folder's name (class-folder corpora only)
    size: int = 0  # bytes, where the listing said


class CorpusFileError(RaynlpError):
    """A corpus file that cannot be read. Its message ends with how to go on; whoever knows the caller's own
    option names (a config field, a command-line flag) rewords that part with `suggesting`."""

    def __init__(self, problem: str, *, undecodable: bool = False,
                 skip: str = "on_bad_file='skip'", encoding: str = "encoding='latin-1'"):
        self.problem, self.undecodable = problem, undecodable
        hint = f"give its encoding ({encoding}) or " if undecodable else ""
        super().__init__(f"{problem} ({hint}{skip} to leave such files out)")

    def suggesting(self, *, skip: str, encoding: str) -> "CorpusFileError":
        return CorpusFileError(self.problem, undecodable=self.undecodable, skip=skip, encoding=encoding)


class CorpusPathError(RaynlpError):
    """A corpus path that does not exist, named by the setting that gave it (`field`, a config field); whoever
    knows the caller's own name for that setting (a command-line flag) rewords it with `named`."""

    def __init__(self, path: str, field: str):
        self.path, self.field = path, field
        super().__init__(f"{field}: {_missing(path)}")

    def named(self, field: str) -> "CorpusPathError":
        return CorpusPathError(self.path, field)


def read_corpus(
    path: str | os.PathLike,
    format: Format | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    pair_column: str | None = None,
    on_bad_file: Literal["raise", "skip"] = "raise",
    encoding: str = "utf-8",
    shuffle_seed: int | None = None,
):
    """Read `path` (a file, a folder, a glob or a `s3://` / `gs://` URI) into a Ray Dataset.

    `format` is inferred from the file suffix or, for a folder of sub-folders, is the class-folder layout of
    `keras.utils.text_dataset_from_directory`. Files are decoded with `encoding` (a UTF-8 byte-order mark is
    dropped). Empty, undecodable or wrongly shaped files raise a `CorpusFileError` naming the file, or, with
    `on_bad_file="skip"`, are left out, named and counted in a warning. With `shuffle_seed`, rows come in an
    order seeded by it (see the module's docstring); without, in listing order. `pair_column` (csv, jsonl and
    parquet only): a second text a row, for sentence pairs, read into a `text_pair` column.
    """
    import ray.data

    if on_bad_file not in ("raise", "skip"):
        raise RaynlpError(f"on_bad_file must be 'raise' or 'skip', not {on_bad_file!r}")
    if format is not None and format not in FORMATS:
        raise RaynlpError(f"unknown corpus format {format!r}; formats: {', '.join(FORMATS)}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise RaynlpError(f"unknown text encoding {encoding!r}; give a Python codec name such as utf-8 or latin-1") from None
    files, format, class_names = _list_files(str(path), format)
    if pair_column and format not in _TABLE_FORMATS:
        raise RaynlpError(f"a second text column ({pair_column!r}) needs a table of texts ({', '.join(_TABLE_FORMATS)}); "
                          f"corpus {path} is {format}")
    if pair_column and pair_column in (text_column, label_column):
        raise RaynlpError(f"the second text column ({pair_column!r}) must be another column than the text and the "
                          "label")
    text_columns = [text_column] + ([pair_column] if pair_column else [])
    files, skipped = _check_files(files, format, text_columns, on_bad_file, encoding)
    if skipped:
        logger.warning("skipped %d bad corpus file(s) of %d: %s", len(skipped), len(files) + len(skipped),
                       "; ".join(skipped))
    if not files:
        raise RaynlpError(f"no readable corpus files under {path}")
    labelled = format == "folders" or (format in _TABLE_FORMATS
                                       and _has_column(files[0].path, format, label_column, encoding))
    logger.info("corpus %s: %d file(s), format %s%s", path, len(files), format,
                f", classes {class_names}" if class_names else "")
    if shuffle_seed is not None:
        files = [files[i] for i in np.random.default_rng(shuffle_seed).permutation(len(files))]
    if format == "parquet":
        columns = text_columns + ([label_column] if labelled else [])
        dataset = read_parquet([f.path for f in files]).select_columns(columns)
        renames = {text_column: "text", label_column: "label", **({pair_column: "text_pair"} if pair_column else {})}
        if any(k != v for k, v in renames.items()):
            dataset = dataset.rename_columns({k: v for k, v in renames.items() if k in columns and k != v})
    else:
        reader = _FileReader(format, text_column, label_column, labelled, on_bad_file, encoding, pair_column)
        groups = _read_tasks(files)
        listing = ray.data.from_items([{"path": [f.path for f in g], "label": [f.label for f in g]} for g in groups],
                                      override_num_blocks=len(groups))
        dataset = listing.map_batches(reader, batch_size=1, batch_format="pyarrow")
    return dataset.random_shuffle(seed=shuffle_seed) if shuffle_seed is not None else dataset


def check_corpus_path(path: str | os.PathLike, *, field: str) -> None:
    """Refuse a corpus path that does not exist, naming the setting that gave it (`field`): one call on the path's
    filesystem, which a command makes before it starts Ray. A glob, and everything else about a corpus, is checked
    when it is read."""
    path = str(path)
    if any(ch in path for ch in "*?["):
        return
    fs, root = _filesystem(path)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise CorpusPathError(path, field)


def class_names(path: str | os.PathLike, format: Format | None = None) -> list[str] | None:
    """The sorted class-folder names of a class-folder corpus (a listing, no file is read); None for others."""
    files, format, names = _list_files(str(path), format)
    return names if format == "folders" else None


def files_with_label(path: str | os.PathLike, label: str, format: Format | None = None, *, text_column: str = "text",
                     label_column: str = "label", encoding: str = "utf-8", limit: int = 1) -> list[str]:
    """The first `limit` files of a corpus holding rows labelled `label`, read here in the driver: for an error
    message that names where a label came from, not for a hot path."""
    files, format, _ = _list_files(str(path), format)
    found = []
    reader = _FileReader(format, text_column, label_column, True, "skip", encoding)
    for file in files:
        if file.label is not None:
            hit = file.label == label
        elif format == "parquet":
            column = pq.read_table(file.path, columns=[label_column])[label_column].to_pylist()
            hit = label in {str(v) for v in column}
        else:
            hit = any(str(row_label) == label for *_, row_label in reader._records(file.path, None))
        if hit:
            found.append(file.path)
            if len(found) == limit:
                break
    return found


def _read_tasks(files: list[_File]) -> list[list[_File]]:
    """Consecutive files grouped into read tasks of at most _FILES_PER_TASK files or _BYTES_PER_TASK bytes."""
    groups: list[list[_File]] = []
    size = 0
    for file in files:
        if not groups or len(groups[-1]) == _FILES_PER_TASK or size + file.size > _BYTES_PER_TASK:
            groups.append([])
            size = 0
        groups[-1].append(file)
        size += file.size
    return groups


# --- listing ---------------------------------------------------------------------------------------------

def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        try:
            return storage.filesystem(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise RaynlpError(f"cannot open corpus URI {path}: {e}") from e
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _join(path: str, name: str, uri_prefix: str) -> str:
    return f"{uri_prefix}{path.rstrip('/')}/{name}"


def _list_files(path: str, format: str | None) -> tuple[list[_File], str, list[str]]:
    fs, root = _filesystem(path)
    prefix = path.split("://", 1)[0] + "://" if is_uri(path) else ""
    if any(ch in path for ch in "*?["):
        files = _glob(fs, root, prefix)
        if not files:
            raise RaynlpError(f"no files match the corpus pattern {path}")
        return _files_of_one_format(files, format, path), format or _format_of(files[0], path), []
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise RaynlpError(_missing(path))
    if info.type == pafs.FileType.File:
        return [_File(prefix + root if prefix else root, size=info.size or 0)], format or _format_of(root, path), []
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    entries = [e for e in entries if not e.base_name.startswith(".")]
    folders = sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory)
    sizes = {_join(root, e.base_name, prefix): e.size or 0 for e in entries if e.type == pafs.FileType.File}
    plain = sorted(sizes)
    if folders and (format in (None, "folders")) and not plain:
        return _class_folder_files(fs, root, prefix, folders, path), "folders", folders
    if not plain:
        raise RaynlpError(f"corpus folder {path} holds no files; put text files in it, or class folders "
                          f"(pos/, neg/, ...) with one document per file")
    return _files_of_one_format(plain, format, path, sizes), format or _format_of(plain[0], path), []


def _missing(path: str) -> str:
    return f"corpus path {path} does not exist; give a file, a folder, a glob or an s3:// / gs:// URI"


def _glob(fs: pafs.FileSystem, pattern: str, prefix: str) -> list[str]:
    if not prefix:
        return sorted(p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p))
    import fnmatch

    base = pattern[: min(pattern.index(ch) for ch in "*?[" if ch in pattern)].rsplit("/", 1)[0]
    selected = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted(prefix + e.path for e in selected
                  if e.type == pafs.FileType.File and fnmatch.fnmatch(e.path, pattern))


def _class_folder_files(fs, root: str, prefix: str, classes: list[str], path: str) -> list[_File]:
    files = []
    for name in classes:
        selected = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", recursive=True))
        found = sorted((e.path, e.size or 0) for e in selected
                       if e.type == pafs.FileType.File and not e.base_name.startswith("."))
        if not found:
            raise RaynlpError(f"class folder {path}/{name} holds no files; remove it or add documents")
        files += [_File(prefix + p, name, size) for p, size in found]
    return files


def _format_of(file: str, path: str) -> str:
    suffix = os.path.splitext(file)[1].lower()
    if suffix not in _FORMAT_BY_SUFFIX:
        raise RaynlpError(f"cannot tell the format of {file} from its suffix; pass format= one of {', '.join(FORMATS)}")
    return _FORMAT_BY_SUFFIX[suffix]


def _files_of_one_format(files: list[str], format: str | None, path: str,
                         sizes: dict[str, int] | None = None) -> list[_File]:
    if format is None:
        kinds = {_format_of(f, path) for f in files}
        if len(kinds) > 1:
            raise RaynlpError(f"corpus {path} mixes formats ({', '.join(sorted(kinds))}); "
                              f"use a glob such as {path.rstrip('/')}/*.jsonl")
    return [_File(f, size=(sizes or {}).get(f, 0)) for f in files]


# --- checking --------------------------------------------------------------------------------------------

def _open_binary(path: str):
    if is_uri(path):
        fs, inner = storage.filesystem(path)
        return fs.open_input_stream(inner)
    return open(path, "rb")


def _codec(encoding: str) -> str:
    """The codec to read with: for UTF-8, the one that also drops a byte-order mark."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _head_text(path: str, encoding: str = "utf-8") -> str:
    """The first 64 KiB of `path` as text; raises UnicodeDecodeError on bytes `encoding` cannot decode."""
    with _open_binary(path) as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        raise ValueError("is empty")
    # A cut multi-byte character at the end of the window is not an error.
    return codecs.getincrementaldecoder(_codec(encoding))().decode(head, final=False)


def _check_file(file: _File, format: str, text_columns: list[str], encoding: str) -> None:
    """`text_columns`: the text column, and the pair column where one is read. The messages name the columns
    found, not an option to pass: each command names its own (a flag, a config field)."""
    if format == "parquet":
        schema = pq.read_schema(file.path) if not is_uri(file.path) else pq.ParquetFile(_open_binary(file.path)).schema_arrow
        for column in text_columns:
            if column not in schema.names:
                raise ValueError(f"has no column {column!r} (columns: {', '.join(schema.names)})")
        return
    head = _head_text(file.path, encoding)
    if format == "csv":
        header = next(csv.reader(io.StringIO(head)), [])
        for column in text_columns:
            if column not in header:
                raise ValueError(f"has no column {column!r} in its header (columns: {', '.join(header)})")
    elif format == "jsonl":
        first = head.split("\n", 1)[0]
        try:
            record = json.loads(first)
        except json.JSONDecodeError as e:
            raise ValueError(f"line 1 is not JSON ({e.msg})") from e
        for column in text_columns:
            if not isinstance(record, dict) or column not in record:
                fields = ", ".join(record) if isinstance(record, dict) else "none"
                raise ValueError(f"line 1 has no field {column!r} (fields: {fields})")


def _describe(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        name = "UTF-8" if codecs.lookup(error.encoding).name.startswith("utf-8") else error.encoding
        return f"is not {name} text (byte 0x{error.object[error.start]:02x} at offset {error.start})"
    if isinstance(error, OSError):
        return f"cannot be read ({error.strerror or error})"
    return str(error)


def _check_files(files: list[_File], format: str, text_columns: list[str], on_bad_file: str, encoding: str):
    good, bad = [], []
    for file in files:
        try:
            _check_file(file, format, text_columns, encoding)
            good.append(file)
        except (ValueError, OSError, pa.ArrowException) as e:
            problem = f"corpus file {file.path} {_describe(e)}"
            if on_bad_file == "raise":
                raise CorpusFileError(problem, undecodable=isinstance(e, UnicodeDecodeError)) from e
            bad.append(problem)
    return good, bad


def _has_column(path: str, format: str, column: str, encoding: str) -> bool:
    if format == "parquet":
        return column in (pq.read_schema(path).names if not is_uri(path)
                          else pq.ParquetFile(_open_binary(path)).schema_arrow.names)
    head = _head_text(path, encoding)
    if format == "csv":
        return column in next(csv.reader(io.StringIO(head)), [])
    return column in json.loads(head.split("\n", 1)[0])


# --- reading (in Ray tasks) ------------------------------------------------------------------------------

class _FileReader:
    """Streams the rows of one corpus file as Arrow batches; runs in Ray Data tasks."""

    def __init__(self, format: str, text_column: str, label_column: str, labelled: bool, on_bad_file: str,
                 encoding: str = "utf-8", pair_column: str | None = None):
        self.format, self.text_column, self.label_column = format, text_column, label_column
        self.labelled, self.on_bad_file, self.encoding = labelled, on_bad_file, _codec(encoding)
        self.pair_column = pair_column
        self.text_columns = [text_column] + ([pair_column] if pair_column else [])

    def __call__(self, listing: pa.Table) -> Iterator[pa.Table]:
        # A row of the listing is a read task: a group of files, whose rows go out in batches of up to
        # _ROWS_PER_BATCH (small files share a batch).
        rows = []
        for paths, folder_labels in zip(listing["path"].to_pylist(), listing["label"].to_pylist()):
            for path, folder_label in zip(paths, folder_labels):
                for row in self._read(path, folder_label):
                    rows.append(row)
                    if len(rows) == _ROWS_PER_BATCH:
                        yield self._batch(rows)
                        rows = []
        if rows:
            yield self._batch(rows)

    def _read(self, path: str, folder_label: str | None) -> Iterator[tuple[str, str | None, str | None]]:
        try:
            yield from self._records(path, folder_label)
        except (UnicodeDecodeError, ValueError, KeyError, OSError) as e:
            problem = f"corpus file {path} {_describe(e)}"
            if self.on_bad_file == "raise":
                raise CorpusFileError(problem, undecodable=isinstance(e, UnicodeDecodeError)) from None
            logger.warning("skipping the rest of %s", problem)

    def _batch(self, rows: list[tuple[str, str | None, str | None]]) -> pa.Table:
        texts, pairs, labels = zip(*rows)
        columns = {"text": pa.array(texts, pa.string())}
        if self.pair_column:
            columns["text_pair"] = pa.array(pairs, pa.string())
        if self.labelled:
            columns["label"] = pa.array(labels, pa.string())
        return pa.table(columns)

    def _records(self, path: str, folder_label: str | None) -> Iterator[tuple[str, str | None, str | None]]:
        """(text, its pair or None, its label or None) a row."""
        with _open_binary(path) as raw:
            stream = io.TextIOWrapper(raw if not is_uri(path) else io.BufferedReader(_Readable(raw)),
                                      encoding=self.encoding, newline="")
            if self.format == "folders":
                yield stream.read().strip(), None, folder_label
            elif self.format == "lines":
                for line in stream:
                    line = line.strip()
                    if line:
                        yield line, None, None
            elif self.format == "paragraphs":
                yield from ((p, None, None) for p in _paragraphs(stream))
            elif self.format == "csv":
                for number, record in enumerate(csv.DictReader(stream), start=2):
                    yield self._fields(record, f"row {number}")
            elif self.format == "jsonl":
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ValueError(f"line {number} is not JSON ({e.msg})") from e
                        yield self._fields(record, f"line {number}")

    def _fields(self, record, where: str) -> tuple[str, str | None, str | None]:
        for column in self.text_columns:
            if not isinstance(record, dict) or record.get(column) is None:
                raise ValueError(f"{where} has no {column!r}")
        label = None
        if self.labelled:
            label = record.get(self.label_column)
            if label is None or str(label).strip() == "":
                raise ValueError(f"{where} has no {self.label_column!r}")
            label = str(label).strip()
        pair = str(record[self.pair_column]) if self.pair_column else None
        return str(record[self.text_column]), pair, label


def _paragraphs(stream) -> Iterator[str]:
    lines: list[str] = []
    for line in stream:
        if line.strip():
            lines.append(line.strip())
        elif lines:
            yield " ".join(lines)
            lines = []
    if lines:
        yield " ".join(lines)


class _Readable(io.RawIOBase):
    """Adapts a pyarrow input stream to `io.BufferedReader`."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
