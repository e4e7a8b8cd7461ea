"""Distributed WordPiece vocabulary learning on Ray Data.

`learn_vocabulary` gives the same vocabulary, token for token and in the same order, as
`keras_hub.tokenizers.compute_word_piece_vocabulary` on the same texts and settings, but it counts
words in parallel over the blocks of a Ray Dataset, so the corpus never has to fit in memory; only the
table of distinct words (which the WordPiece learner needs anyway) is held on the driver.

How:

1. Each block is mapped (`Dataset.map_batches`) to a two-column table `word`/`count` of the words it
   contains, split and normalised exactly as keras-hub's `pretokenize` does.
2. The per-block tables are streamed to the driver and merged with Arrow's group-by/sum, compacting
   as they arrive so the driver holds about one word table (not the corpus) at a time.
3. The merged counts go to the WordPiece learner keras-hub itself calls
   (`tensorflow_text.tools.wordpiece_vocab.wordpiece_tokenizer_learner_lib.learn`), with the same
   arguments keras-hub passes.

Word splitting: texts that are pure ASCII take a pure-Python path that is provably identical to
keras-hub's TensorFlow `pretokenize` on ASCII (see `_ascii_words`); any other text goes through
keras-hub's own `pretokenize`, so parity never rests on re-implementing Unicode normalisation,
case folding or Unicode character classes. TensorFlow is imported (lazily, in the Ray worker) only
by workers that meet non-ASCII text.
"""

from __future__ import annotations

import collections
import functools
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pyarrow as pa

from raynlp.errors import RaynlpError

if TYPE_CHECKING:
    import ray.data

__all__ = ["learn_vocabulary", "save_vocabulary"]

DEFAULT_RESERVED_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")

_WORD = "word"
_COUNT = "count"
# How a RaynlpError raised in a worker reads in the traceback text of Ray's wrapping exception.
_WORKER_RAYNLP_ERROR = re.compile(r"raynlp\.errors\.RaynlpError: ([^\n]*)")
_WORD_COUNT_SCHEMA = pa.schema([(_WORD, pa.large_string()), (_COUNT, pa.int64())])

# keras-hub's split on ASCII input, derived from its RE2 patterns in word_piece_tokenizer.py:
# delimiters are `\s` (RE2: [\t\n\f\r ]), `\p{Cc}` (\x00-\x1f, \x7f) and `\p{Cf}` (none in ASCII),
# which are dropped, and the punctuation classes [!-/] [:-@] [\[-`] [{-~] (\p{P} adds nothing in
# ASCII), which are kept as one-character words. Every delimiter is a single character, so words are
# the maximal runs of the remaining characters, [0-9A-Za-z].
_ASCII_WORD_OR_PUNCTUATION = re.compile(r"[0-9A-Za-z]+|[!-/:-@\[-`{-~]")

# A block is split into chunks of at most about this many characters (and this many non-ASCII rows,
# which go to TensorFlow as one ragged tensor), so memory per task is bounded whatever the block size.
_CHUNK_CHARACTERS = 1 << 22
_TF_CHUNK_ROWS = 1024
# Merged-table compaction on the driver starts once this many un-merged rows are pending (or as many
# as the merged table holds, if that is more), so memory stays within a small multiple of the table.
_MIN_PENDING_ROWS_BEFORE_MERGE = 1 << 20


def learn_vocabulary(
    dataset: ray.data.Dataset,
    vocabulary_size: int,
    *,
    text_column: str = "text",
    lowercase: bool = True,
    strip_accents: bool = False,
    split_on_cjk: bool = True,
    suffix_indicator: str = "##",
    reserved_tokens: Sequence[str] = DEFAULT_RESERVED_TOKENS,
) -> list[str]:
    """Learns a WordPiece vocabulary from the texts of a Ray Dataset.

    The result equals `keras_hub.tokenizers.compute_word_piece_vocabulary(texts, vocabulary_size,
    lowercase=..., strip_accents=..., split_on_cjk=..., suffix_indicator=..., reserved_tokens=...)`
    on the same texts (see the module docstring for how).

    Args:
        dataset: A Ray Dataset with one string per row in `text_column`.
        vocabulary_size: The maximum number of tokens, reserved tokens included.
        text_column: The column holding the texts.
        lowercase: Case-fold words (Unicode NFKC_Casefold), as keras-hub's `lowercase`.
        strip_accents: Drop accent marks (NFD, then remove \\p{Mn}), as keras-hub's `strip_accents`.
        split_on_cjk: Split CJK ideographs into single-character words.
        suffix_indicator: The prefix that marks a word-internal piece, e.g. "##ing".
        reserved_tokens: Tokens placed first in the vocabulary, in this order.

    Returns:
        The vocabulary: reserved tokens, then single characters, then pieces by frequency.

    Raises:
        RaynlpError: The dataset is empty, lacks `text_column`, holds non-string or null texts,
            yields no words, or `vocabulary_size` leaves no room beyond the reserved tokens.
    """
    reserved = list(reserved_tokens)
    _check_arguments(vocabulary_size, reserved, suffix_indicator)
    _check_text_column(dataset, text_column)

    word_counts = _count_words(
        dataset,
        text_column=text_column,
        lowercase=lowercase,
        strip_accents=strip_accents,
        split_on_cjk=split_on_cjk,
    )
    if not word_counts:
        raise RaynlpError(
            f"learn_vocabulary: column {text_column!r} yielded no words "
            "(the dataset has no rows, or every text is blank)."
        )

    learner = _load_wordpiece_learner()
    # Exactly the call keras-hub's compute_word_piece_vocabulary makes, including its truncation.
    vocabulary = learner.learn(
        word_counts,
        vocab_size=vocabulary_size,
        reserved_tokens=reserved,
        include_joiner_token=True,
        joiner=suffix_indicator,
    )
    return list(vocabulary[:vocabulary_size])


def check_new_vocabulary_file(path: str | Path) -> None:
    """Refuse a vocabulary file that exists, before a command learns one into it: the user's file stays."""
    if Path(path).exists():
        raise RaynlpError(f"vocabulary file {path} exists; choose a new path or delete it")


def save_vocabulary(vocabulary: list[str], path: str | Path) -> Path:
    """Writes one token per line (UTF-8, "\\n"-terminated): the file format that
    `keras_hub.tokenizers.WordPieceTokenizer(vocabulary=str(path))` loads. Returns the path.

    Raises:
        RaynlpError: The vocabulary is empty, or a token would not load back as itself: keras-hub
            reads the file line by line (splitting on "\\n" and "\\r") and strips trailing
            whitespace from each line.
    """
    if not vocabulary:
        raise RaynlpError("save_vocabulary: the vocabulary is empty; nothing to save.")
    for token in vocabulary:
        if not isinstance(token, str) or not token or "\n" in token or "\r" in token:
            raise RaynlpError(
                f"save_vocabulary: token {token!r} is empty, not a string, or holds a line break, "
                "so it cannot be one line of a vocabulary file."
            )
        if token != token.rstrip():
            raise RaynlpError(
                f"save_vocabulary: token {token!r} ends in whitespace, which keras-hub strips when it "
                "loads a vocabulary file; pass the list itself to WordPieceTokenizer(vocabulary=...)."
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(token + "\n" for token in vocabulary), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Argument checks (driver)
# --------------------------------------------------------------------------------------------------


def _check_arguments(vocabulary_size: int, reserved: list[str], suffix_indicator: str) -> None:
    if isinstance(vocabulary_size, bool) or not isinstance(vocabulary_size, int):
        raise RaynlpError(f"learn_vocabulary: vocabulary_size must be an int, got {type(vocabulary_size).__name__}.")
    if vocabulary_size <= len(reserved):
        raise RaynlpError(
            f"learn_vocabulary: vocabulary_size={vocabulary_size} leaves no room beyond the "
            f"{len(reserved)} reserved tokens; ask for more."
        )
    if not all(isinstance(token, str) and token for token in reserved):
        raise RaynlpError("learn_vocabulary: reserved_tokens must be non-empty strings.")
    if not isinstance(suffix_indicator, str):
        raise RaynlpError("learn_vocabulary: suffix_indicator must be a string.")


def _check_text_column(dataset: ray.data.Dataset, text_column: str) -> None:
    """Fails fast, before any counting, on a missing or non-text column, where the schema is known.

    The schema is not fetched: for a lazy pipeline that would execute part of it (all of it, behind a
    shuffle) a second time. Where it is unknown, the workers check each block and an empty dataset
    ends in "yielded no words".
    """
    schema = dataset.schema(fetch_if_missing=False)
    if schema is None:
        return
    if text_column not in schema.names:
        raise RaynlpError(
            f"learn_vocabulary: the dataset has no column {text_column!r} "
            f"(columns: {', '.join(schema.names) or 'none'}); pass text_column=."
        )
    column_type = schema.types[schema.names.index(text_column)]
    # Only Arrow types can be judged here; pandas "object" columns are checked row by row in workers.
    if isinstance(column_type, pa.DataType) and not (
        pa.types.is_string(column_type) or pa.types.is_large_string(column_type) or pa.types.is_string_view(column_type)
    ):
        raise RaynlpError(
            f"learn_vocabulary: column {text_column!r} holds {column_type}, not text; "
            "pass the column of strings as text_column=."
        )


def _count_words(
    dataset: ray.data.Dataset, *, text_column: str, lowercase: bool, strip_accents: bool, split_on_cjk: bool
) -> list[tuple[str, int]]:
    """Every distinct word of the corpus with its count, most frequent first (see `_merge_word_counts`).

    Words are counted per block in the workers; only the per-block tables come to the driver.
    """
    block_counts = dataset.map_batches(
        _count_block_words,
        batch_format="pyarrow",
        # One batch per block: the per-block table is then as reduced as it can be.
        batch_size=None,
        fn_kwargs={
            "text_column": text_column,
            "lowercase": lowercase,
            "strip_accents": strip_accents,
            "split_on_cjk": split_on_cjk,
        },
    )
    try:
        return _merge_word_counts(block_counts.iter_batches(batch_size=None, batch_format="pyarrow"))
    except RaynlpError:
        raise
    except Exception as error:
        message = _raynlp_error_message(error)
        if message is None:
            raise
        raise RaynlpError(message) from None


def _raynlp_error_message(error: BaseException) -> str | None:
    """The message of a RaynlpError raised in a Ray worker, if `error` is Ray's wrapper of one.

    Ray Data re-raises a failed map task as `RayTaskError(UserCodeException)` whose only trace of the
    original exception is the formatted traceback in its text, so the message is read from there.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RaynlpError):
            return str(current)
        found = _WORKER_RAYNLP_ERROR.search(str(current))
        if found:
            return found.group(1).strip()
        stack.extend([current.__cause__, current.__context__, getattr(current, "cause", None)])
    return None


# --------------------------------------------------------------------------------------------------
# Per-block word counting (runs in Ray workers)
# --------------------------------------------------------------------------------------------------


def _count_block_words(
    block: pa.Table, *, text_column: str, lowercase: bool, strip_accents: bool, split_on_cjk: bool
) -> pa.Table:
    """Maps one block of texts to its word/count table (the Ray Data `map_batches` function)."""
    if text_column not in block.column_names:
        raise RaynlpError(
            f"learn_vocabulary: the dataset has no column {text_column!r} "
            f"(columns: {', '.join(block.column_names) or 'none'}); pass text_column=."
        )
    counts: collections.Counter[str] = collections.Counter()
    for ascii_texts, other_texts in _chunks(block.column(text_column).to_pylist(), text_column):
        if ascii_texts:
            counts.update(_ascii_words(ascii_texts, lowercase=lowercase))
        if other_texts:
            counts.update(
                _keras_hub_words(
                    other_texts, lowercase=lowercase, strip_accents=strip_accents, split_on_cjk=split_on_cjk
                )
            )
    return pa.Table.from_arrays(
        [pa.array(list(counts.keys()), pa.large_string()), pa.array(list(counts.values()), pa.int64())],
        schema=_WORD_COUNT_SCHEMA,
    )


def _chunks(texts: list[object], text_column: str) -> Iterator[tuple[list[str], list[str]]]:
    """Splits a block's texts into bounded chunks, each as (pure-ASCII texts, other texts).

    Bounding a chunk's characters bounds the word lists and tensors built from it, whatever the
    block size; the order of texts does not matter to counting.
    """
    ascii_texts: list[str] = []
    other_texts: list[str] = []
    characters = 0
    for text in texts:
        if not isinstance(text, str):
            raise RaynlpError(
                f"learn_vocabulary: column {text_column!r} holds a {type(text).__name__} value "
                f"({text!r:.40}); every text must be a string."
            )
        (ascii_texts if text.isascii() else other_texts).append(text)
        characters += len(text)
        if characters >= _CHUNK_CHARACTERS or len(other_texts) >= _TF_CHUNK_ROWS:
            yield ascii_texts, other_texts
            ascii_texts, other_texts, characters = [], [], 0
    if ascii_texts or other_texts:
        yield ascii_texts, other_texts


def _ascii_words(texts: list[str], *, lowercase: bool) -> list[str]:
    """keras-hub's `pretokenize` words of pure-ASCII texts, without TensorFlow.

    On ASCII, keras-hub's steps reduce to: no CJK to pad; NFD and \\p{Mn} removal change nothing
    (`strip_accents` is moot); the split is `_ASCII_WORD_OR_PUNCTUATION`; NFKC_Casefold is
    `str.lower` and commutes with the split (it maps letters to letters). One quirk is kept: TF Text
    ignores everything after a NUL character. `vocabulary_test.py` checks this against keras-hub's
    `pretokenize` on every pair of ASCII characters.
    """
    # "\n" is a delimiter, so joining keeps words from running across texts.
    joined = "\n".join(texts)
    if "\x00" in joined:
        # tf_text.regex_split (inside keras-hub's pretokenize) reads a text only up to its first NUL.
        joined = "\n".join(text.partition("\x00")[0] for text in texts)
    if lowercase:
        joined = joined.lower()
    return _ASCII_WORD_OR_PUNCTUATION.findall(joined)


def _keras_hub_words(texts: list[str], *, lowercase: bool, strip_accents: bool, split_on_cjk: bool) -> list[str]:
    """Words of `texts` from keras-hub's own TensorFlow `pretokenize` (imported lazily: workers only)."""
    import tensorflow as tf
    from keras_hub.src.tokenizers.word_piece_tokenizer import pretokenize

    words = pretokenize(
        tf.constant(texts, dtype=tf.string),
        lowercase=lowercase,
        strip_accents=strip_accents,
        split=True,
        split_on_cjk=split_on_cjk,
    )
    # keras-hub's count_words decodes its byte-string words the same way (strict UTF-8).
    return [word.decode("utf-8") for word in words.flat_values.numpy().tolist()]


# --------------------------------------------------------------------------------------------------
# Merging and learning (driver)
# --------------------------------------------------------------------------------------------------


def _merge_word_counts(tables: Iterable[pa.Table]) -> list[tuple[str, int]]:
    """Sums per-block word/count tables into one list of (word, count), most frequent first.

    Tables are merged as they stream in, so the driver holds the merged table plus a bounded backlog,
    never the whole set of per-block tables. Ties are broken by word so the order is deterministic
    whatever the block layout (it only matters to the learner's `max_input_tokens` cut-off).
    """
    merged = pa.Table.from_pylist([], schema=_WORD_COUNT_SCHEMA)
    pending: list[pa.Table] = []
    pending_rows = 0
    for table in tables:
        if table.num_rows == 0:
            continue
        pending.append(table.select([_WORD, _COUNT]).cast(_WORD_COUNT_SCHEMA))
        pending_rows += table.num_rows
        if pending_rows >= max(_MIN_PENDING_ROWS_BEFORE_MERGE, merged.num_rows):
            merged = _sum_by_word([merged, *pending])
            pending, pending_rows = [], 0
    if pending:
        merged = _sum_by_word([merged, *pending])
    if merged.num_rows == 0:
        return []
    merged = merged.sort_by([(_COUNT, "descending"), (_WORD, "ascending")])
    return list(zip(merged.column(_WORD).to_pylist(), merged.column(_COUNT).to_pylist()))


def _sum_by_word(tables: list[pa.Table]) -> pa.Table:
    summed = pa.concat_tables(tables).group_by(_WORD).aggregate([(_COUNT, "sum")])
    return summed.rename_columns({f"{_COUNT}_sum": _COUNT}).select([_WORD, _COUNT])


@functools.cache
def _load_wordpiece_learner() -> ModuleType:
    """tensorflow_text's `wordpiece_tokenizer_learner_lib`, the learner keras-hub calls.

    Importing it the usual way first imports the `tensorflow_text` package and so TensorFlow
    (seconds), though the learner itself is NumPy and pure Python. Unless TensorFlow Text is already
    loaded, the very same source file is therefore executed on its own, without its package.
    """
    qualified = "tensorflow_text.tools.wordpiece_vocab.wordpiece_tokenizer_learner_lib"
    package = importlib.util.find_spec("tensorflow_text")
    if package is None:
        raise RaynlpError("learn_vocabulary needs tensorflow-text; install raynlp's dependencies.")
    if "tensorflow_text" in sys.modules or not package.submodule_search_locations:
        return importlib.import_module(qualified)
    source = Path(next(iter(package.submodule_search_locations))).joinpath(
        "tools", "wordpiece_vocab", "wordpiece_tokenizer_learner_lib.py"
    )
    spec = importlib.util.spec_from_file_location("_raynlp_wordpiece_learner", source)
    if spec is None or spec.loader is None or not source.is_file():
        return importlib.import_module(qualified)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
