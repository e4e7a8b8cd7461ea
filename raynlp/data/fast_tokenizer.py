"""A fast WordPiece tokenizer that reproduces keras-hub's BERT preprocessing exactly.

keras-hub's ``WordPieceTokenizer`` (and so ``BertTokenizer`` / ``BertTextClassifierPreprocessor``) works like this
(``keras_hub/src/tokenizers/word_piece_tokenizer.py``; its eager Python path, which this module follows, and its
tf.data path agree, except that the tf.data path ignores a text from its first NUL character on):

1. ``strip_accents``: NFD-normalise the whole text and delete every nonspacing mark (``Mn``).
2. Split into words: ASCII whitespace ``[ \\t\\n\\r\\f]``, ``\\p{Cc}`` and ``\\p{Cf}`` separate words and are dropped;
   ASCII punctuation, ``\\p{P}`` and (with ``split_on_cjk``) CJK ideographs separate words and are kept as
   one-character words. Everything else (letters, digits, symbols such as emoji or U+00B4) belongs to a word.
3. ``lowercase``: each word is case-folded *on its own* with NFKC_Casefold (NFKC, full case folding, NFKC, minus
   default-ignorable code points). Because this comes after splitting, "…" is one word that becomes "...", and a
   no-break space inside a word becomes a space inside that word.
4. WordPiece, greedy longest-match-first with the ``##`` suffix indicator; a word that cannot be covered, or whose
   UTF-8 form is longer than 100 bytes, becomes the single out-of-vocabulary token. Special tokens written in the
   text ("[CLS]") are plain text (keras-hub's default ``special_tokens_in_strings=False``).

Here the work per token is a few C-level passes. An ASCII text is lower-cased whole (for ASCII that is step 3)
and cut with ``str.split()`` into chunks such as ``"it's"``; other texts are split into keras-hub's words with one
regex ``findall``. Chunks and words are looked up in a cache of their token ids; the ones not seen before are split
into words, case-folded and sent to Hugging Face ``tokenizers``' Rust ``WordPiece`` model in one
``encode_batch_fast`` call. Running the whole pipeline inside ``tokenizers`` (regex ``Split`` pre-tokenizer +
``WordPiece``) was measured several times slower than this, and its order (normalise the whole text, then split)
cannot reproduce step 3 exactly. Packing into ``[CLS] a [SEP] (b [SEP])`` with round-robin truncation and padding
is numpy.

This module must stay light: it imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import sys
import unicodedata
from collections.abc import Sequence

import numpy as np
import regex
from tokenizers import Tokenizer, models

from raynlp.errors import RaynlpError

__all__ = ["FastWordPieceTokenizer"]

# keras-hub's split classes (step 2), as character-class bodies for the `regex` module, which keras-hub's Python
# path also uses. All its delimiters are single characters, so "runs of other characters, or one kept delimiter"
# gives exactly its words.
_REMOVED_CLASS = r" \t\n\r\f\p{Cc}\p{Cf}"
_PUNCTUATION_CLASS = r"!-/:-@\[-`{-~\p{P}"
_CJK_CLASS = "".join(
    rf"\U{lo:08X}-\U{hi:08X}"
    for lo, hi in (
        (0x4E00, 0x9FFF),
        (0x3400, 0x4DBF),
        (0x20000, 0x2A6DF),
        (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF),
        (0xF900, 0xFAFF),
        (0x2F800, 0x2FA1F),
    )
)

# The same words for ASCII text, where \p{Cc} is [\x00-\x1f\x7f] and \p{Cf}, \p{P} and CJK add nothing.
_ASCII_WORDS = re.compile(r"[^\x00-\x20\x7f!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")
# ASCII control characters that separate words but that str.split() keeps.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")

# keras-hub (and tf_text.FastWordpieceTokenizer) map words longer than this many UTF-8 bytes to the OOV token.
_MAX_BYTES_PER_WORD = 100
# The key cache is dropped when it grows past this many entries (some tens of MB).
_MAX_CACHED_KEYS = 500_000
# Closes each text in the flat key list of a batch. No key can be a space: chunks are split on it and words on
# every whitespace character.
_ROW_END = " "
_ROW_END_CODE = -1
# `pack` works through a large batch this many rows at a time: its temporaries then stay in the CPU's caches.
_PACK_CHUNK_ROWS = 256

# Unicode Default_Ignorable_Code_Point ranges, dropped by NFKC_Casefold (as in keras-hub's tensor_utils).
_DEFAULT_IGNORABLE = re.compile(
    "["
    + "".join(
        f"{chr(lo)}-{chr(hi)}"
        for lo, hi in (
            (0x00AD, 0x00AD),
            (0x034F, 0x034F),
            (0x061C, 0x061C),
            (0x115F, 0x1160),
            (0x17B4, 0x17B5),
            (0x180B, 0x180F),
            (0x200B, 0x200F),
            (0x202A, 0x202E),
            (0x2060, 0x206F),
            (0x3164, 0x3164),
            (0xFE00, 0xFE0F),
            (0xFEFF, 0xFEFF),
            (0xFFA0, 0xFFA0),
            (0xFFF0, 0xFFF8),
            (0x1BCA0, 0x1BCA3),
            (0x1D173, 0x1D17A),
            (0xE0000, 0xE0FFF),
        )
    )
    + "]"
)


def _casefold(word: str) -> str:
    """keras-hub's Python equivalent of ``tf_text.case_fold_utf8`` (NFKC_Casefold)."""
    word = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", word).casefold())
    return _DEFAULT_IGNORABLE.sub("", word)


@functools.cache
def _nonspacing_marks() -> dict[int, None]:
    """A ``str.translate`` table deleting every ``Mn`` character.

    From ``unicodedata`` (as keras-hub's Python path decides), not the ``regex`` module, whose newer Unicode
    tables know more marks (e.g. U+1ACF).
    """
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Mn"}


def _read_vocabulary(vocabulary: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(vocabulary, (str, os.PathLike)):
        try:
            with open(vocabulary, encoding="utf-8") as file:
                # As keras-hub reads it: one token per line, trailing whitespace stripped.
                return [line.rstrip() for line in file]
        except OSError as error:
            raise RaynlpError(f"cannot read the vocabulary file {os.fspath(vocabulary)!r}: {error}") from error
    return list(vocabulary)


class FastWordPieceTokenizer:
    """WordPiece tokenization and BERT packing, identical to keras-hub's ``BertTextClassifierPreprocessor``.

    Args:
        vocabulary: A vocabulary file (one token per line) or a list of tokens; a token's id is its index.
        lowercase: Case-fold each word (NFKC_Casefold), like keras-hub's ``lowercase``.
        strip_accents: NFD-normalise and drop nonspacing marks, like keras-hub's ``strip_accents``.
        split_on_cjk: Make every CJK ideograph its own word.
        suffix_indicator: Prefix of word-continuation pieces.
        oov_token: Token for words that cannot be tokenized; must be in the vocabulary.
        cls_token, sep_token, pad_token, mask_token: BERT's special tokens; must be in the vocabulary.

    Instances keep a cache of text chunk / word -> ids that grows with the distinct chunks seen (up to 500,000,
    then it starts over). It is not pickled, and an instance is not meant to be shared between threads.
    """

    def __init__(
        self,
        vocabulary: str | os.PathLike | Sequence[str],
        *,
        lowercase: bool = True,
        strip_accents: bool = False,
        split_on_cjk: bool = True,
        suffix_indicator: str = "##",
        oov_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        mask_token: str = "[MASK]",
    ) -> None:
        self._vocabulary = _read_vocabulary(vocabulary)
        # Later duplicates win, as in keras-hub's token-to-id map.
        self._token_to_id = {token: i for i, token in enumerate(self._vocabulary)}
        self.lowercase = bool(lowercase)
        self.strip_accents = bool(strip_accents)
        self.split_on_cjk = bool(split_on_cjk)
        self.suffix_indicator = suffix_indicator
        self.oov_token = oov_token
        for name, token in (
            ("oov_token", oov_token),
            ("cls_token", cls_token),
            ("sep_token", sep_token),
            ("pad_token", pad_token),
            ("mask_token", mask_token),
        ):
            if token not in self._token_to_id:
                raise RaynlpError(f"{name}={token!r} is not in the vocabulary; pass a vocabulary that has it")
        self._oov_id = self._token_to_id[oov_token]
        self._cls_id = self._token_to_id[cls_token]
        self._sep_id = self._token_to_id[sep_token]
        self._pad_id = self._token_to_id[pad_token]
        self._mask_id = self._token_to_id[mask_token]

        kept = _PUNCTUATION_CLASS + (_CJK_CLASS if split_on_cjk else "")
        self._unicode_words = regex.compile(f"[^{_REMOVED_CLASS}{kept}]+|[{kept}]")
        # No normaliser, pre-tokenizer or post-processor: each input string is one word for WordPiece.
        self._wordpiece = Tokenizer(
            models.WordPiece(
                vocab=dict(self._token_to_id),
                unk_token=oov_token,
                continuing_subword_prefix=suffix_indicator,
                # The 100-byte rule is applied before WordPiece (`_cache_new_keys`); bytes >= characters.
                max_input_chars_per_word=_MAX_BYTES_PER_WORD,
            )
        )
        # Text chunk or word -> its token ids; grows with the distinct chunks seen.
        self._cache = _IdCache()

    def __getstate__(self) -> dict:
        # Ship the tokenizer to Ray workers without the (possibly large) cache.
        state = self.__dict__.copy()
        state["_cache"] = _IdCache()
        return state

    @classmethod
    def from_keras_hub_preset_dir(cls, folder: str | os.PathLike) -> FastWordPieceTokenizer:
        """Build the tokenizer that a keras-hub preset folder describes.

        Reads keras-hub's own serialized ``tokenizer.json`` (``{"class_name": ..., "config": {"lowercase": ...}}``)
        and the vocabulary it saved under ``assets/tokenizer/vocabulary.txt``. Options this class cannot reproduce
        (``split=false``, ``special_tokens_in_strings=true``) raise an error rather than tokenize differently.
        """
        folder = os.fspath(folder)
        config_path = os.path.join(folder, "tokenizer.json")
        try:
            with open(config_path, encoding="utf-8") as file:
                spec = json.load(file)
        except (OSError, ValueError) as error:
            raise RaynlpError(f"cannot read a keras-hub tokenizer config at {config_path!r}: {error}") from error
        config = spec.get("config") if isinstance(spec, dict) else None
        if not isinstance(config, dict) or "class_name" not in spec:
            raise RaynlpError(
                f"{config_path!r} is not a keras-hub tokenizer config (no 'class_name' and 'config'); "
                "save the tokenizer with keras-hub's save_to_preset"
            )
        if not config.get("split", True):
            raise RaynlpError(f"{config_path!r}: split=false (pre-split input) is not supported")
        if config.get("special_tokens_in_strings", False):
            raise RaynlpError(f"{config_path!r}: special_tokens_in_strings=true is not supported")
        vocab_path = os.path.join(folder, "assets", "tokenizer", "vocabulary.txt")
        if not os.path.isfile(vocab_path):
            raise RaynlpError(f"no vocabulary at {vocab_path!r}; expected keras-hub's WordPiece preset layout")
        return cls(
            vocab_path,
            # keras-hub's defaults for keys an older config may lack.
            lowercase=config.get("lowercase", False),
            strip_accents=config.get("strip_accents", False),
            split_on_cjk=config.get("split_on_cjk", True),
            suffix_indicator=config.get("suffix_indicator", "##"),
            oov_token=config.get("oov_token", "[UNK]"),
        )

    # Vocabulary.

    @property
    def vocabulary_size(self) -> int:
        return len(self._vocabulary)

    @functools.cached_property
    def continuation_ids(self) -> np.ndarray:
        """bool [vocabulary_size]: which ids are word continuations (start with ``suffix_indicator``, "##")."""
        return np.array([t.startswith(self.suffix_indicator) and t != self.suffix_indicator
                         for t in self._vocabulary], dtype=bool)

    def token_to_id(self, token: str) -> int:
        try:
            return self._token_to_id[token]
        except KeyError:
            raise ValueError(f"Token {token!r} is not in the vocabulary.") from None

    def id_to_token(self, id: int) -> str:
        if not 0 <= id < len(self._vocabulary):
            raise ValueError(f"`id` must be in range [0, {len(self._vocabulary) - 1}]. Received: {id}")
        return self._vocabulary[id]

    @property
    def cls_token_id(self) -> int:
        return self._cls_id

    @property
    def sep_token_id(self) -> int:
        return self._sep_id

    @property
    def pad_token_id(self) -> int:
        return self._pad_id

    @property
    def mask_token_id(self) -> int:
        return self._mask_id

    # Tokenization.

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (what keras-hub's ``BertTokenizer(texts)`` gives)."""
        flat, lengths = self.encode(texts)
        ends = np.cumsum(lengths).tolist()
        ids = flat.tolist()
        return [ids[end - length : end] for end, length in zip(ends, lengths.tolist(), strict=True)]

    def encode(self, texts: Sequence[str], at_least: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All token ids of a batch, concatenated (int32), and the number of tokens of each text (int64).

        With ``at_least``, a text may be cut short once it surely has that many tokens (then its count is too).
        """
        # One flat list of cache keys for the whole batch, each text closed by the row marker.
        keys: list[str] = []
        extend, close = keys.extend, keys.append
        lowercase = self.lowercase
        for text in _as_str_list(texts):
            if text.isascii():
                # str.split() only splits on ASCII whitespace and \x1c-\x1f here, all of them keras-hub delimiters
                # too; the chunks it leaves ("it's", "(batman") are split further, once, when first cached.
                # NFD and accent stripping do nothing to ASCII, and NFKC_Casefold of ASCII is str.lower.
                if lowercase:
                    text = text.lower()
                if at_least is None:
                    extend(text.split())
                else:
                    # A chunk without control characters gives at least one token, so the first `at_least`
                    # chunks are enough; only they are searched (the rest, `chunks[-1]`, ends the text).
                    chunks = text.split(None, at_least)
                    if len(chunks) > at_least:
                        kept = len(text) - len(chunks[-1])
                        chunks = text.split() if _ASCII_CONTROL.search(text, 0, kept) else chunks[:at_least]
                    extend(chunks)
            else:
                if self.strip_accents:
                    text = unicodedata.normalize("NFD", text).translate(_nonspacing_marks())
                extend(self._unicode_words.findall(text))
            close(_ROW_END)
        try:
            codes = np.fromiter(map(self._cache.codes.__getitem__, keys), dtype=np.int64, count=len(keys))
        except KeyError:
            self._cache_new_keys(keys)
            codes = np.fromiter(map(self._cache.codes.__getitem__, keys), dtype=np.int64, count=len(keys))
        return self._cache.decode(codes)

    def _cache_new_keys(self, keys: list[str]) -> None:
        """Cache the ids of keys not seen before: case-fold (step 3) and WordPiece (step 4) their words.

        A key is a whitespace-free chunk of ASCII text or a word of other text; either way its ids are those of
        the keras-hub words it splits into, so chunks and words share one cache.
        """
        cache = self._cache
        missing = set(keys).difference(cache.codes)
        if len(cache.codes) + 2 * len(missing) > _MAX_CACHED_KEYS:
            cache.clear()
            missing = set(keys).difference(cache.codes)
        # Most new keys are one alphanumeric ASCII word that the vocabulary has whole: settle those first.
        vocabulary = self._token_to_id
        rest: list[str] = []
        for key in missing:
            if key.isascii() and key.isalnum() and len(key) <= _MAX_BYTES_PER_WORD:
                whole = vocabulary.get(key.lower() if self.lowercase else key)
                if whole is not None:
                    cache.codes[key] = whole
                    continue
            rest.append(key)
        words_of = {
            # Non-ASCII keys are single words already; an ASCII chunk is one word when it is alphanumeric.
            key: [key] if not key.isascii() or key.isalnum() else _ASCII_WORDS.findall(key)
            for key in rest
        }
        word_ids: dict[str, Sequence[int]] = {}  # new words only
        known: dict[str, Sequence[int]] = {}
        to_wordpiece: list[str] = []
        wordpiece_keys: list[str] = []
        for word in {word for words in words_of.values() for word in words}:
            if word in cache.codes:
                known[word] = cache.ids(word)
                continue
            if not self.lowercase:
                folded = word
            elif word.isascii():
                folded = word.lower()
            else:
                folded = _casefold(word)
            if not folded:
                word_ids[word] = ()
            elif len(folded.encode("utf-8")) > _MAX_BYTES_PER_WORD:
                word_ids[word] = (self._oov_id,)
            elif (whole := vocabulary.get(folded)) is not None:
                # Greedy longest-match-first takes a word that is in the vocabulary whole.
                word_ids[word] = (whole,)
            else:
                wordpiece_keys.append(word)
                to_wordpiece.append(folded)
        if to_wordpiece:
            # One pre-tokenized sequence: far less per-word overhead than one sequence per word.
            encoding = self._wordpiece.encode(to_wordpiece, is_pretokenized=True, add_special_tokens=False)
            ids = encoding.ids
            # Every word gives at least one token (possibly the OOV token), so word ids mark the boundaries.
            cuts = (np.flatnonzero(np.diff(np.asarray(encoding.word_ids))) + 1).tolist()
            for word, begin, end in zip(wordpiece_keys, [0, *cuts], [*cuts, len(ids)], strict=True):
                word_ids[word] = ids[begin:end]
        for word, ids in word_ids.items():
            cache.add(word, ids)
        word_ids.update(known)
        for key, words in words_of.items():
            if key not in cache.codes:
                cache.add(key, list(itertools.chain.from_iterable(word_ids[word] for word in words)))

    # Packing.

    def pack(
        self,
        texts: Sequence[str],
        texts_b: Sequence[str] | None = None,
        *,
        sequence_length: int,
    ) -> dict[str, np.ndarray]:
        """Tokenize and pack like ``keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length)``.

        Rows are ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, right-padded with ``[PAD]``. Segment id 0 covers
        ``[CLS] a [SEP]``, 1 covers ``b [SEP]``. Too-long pairs are trimmed round-robin (``MultiSegmentPacker``'s
        default, tf_text's ``RoundRobinTrimmer``): tokens are granted a0, b0, a1, b1, ..., skipping an exhausted
        segment, until ``sequence_length - 3`` are granted.

        Returns:
            ``token_ids`` int32 [n, L], ``segment_ids`` int32 [n, L], ``padding_mask`` bool [n, L]
            (``token_ids != pad_token_id``, as keras-hub computes it).
        """
        sequence_length = int(sequence_length)
        num_special = 2 if texts_b is None else 3
        if sequence_length < num_special:
            raise ValueError(f"sequence_length={sequence_length} leaves no room for {num_special} special tokens")
        if texts_b is not None and len(texts_b) != len(texts):
            raise ValueError(f"texts and texts_b differ in length: {len(texts)} != {len(texts_b)}")
        if len(texts) > _PACK_CHUNK_ROWS:
            chunks = [self.pack(texts[i : i + _PACK_CHUNK_ROWS],
                                None if texts_b is None else texts_b[i : i + _PACK_CHUNK_ROWS],
                                sequence_length=sequence_length)
                      for i in range(0, len(texts), _PACK_CHUNK_ROWS)]
            return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}
        budget = sequence_length - num_special
        # Neither segment can keep more than `budget` tokens, and round robin only needs lengths up to it.
        flat_a, len_a = self.encode(texts, at_least=budget)
        n = len(len_a)
        if texts_b is None:
            keep_a = np.minimum(len_a, budget)
        else:
            flat_b, len_b = self.encode(texts_b, at_least=budget)
            keep_a, keep_b = _round_robin(len_a, len_b, budget)

        rows = np.arange(n)
        token_ids = np.full((n, sequence_length), self._pad_id, dtype=np.int32)
        token_ids[:, 0] = self._cls_id
        _scatter(token_ids, flat_a, len_a, keep_a, first_column=np.ones(n, dtype=np.int64))
        token_ids[rows, 1 + keep_a] = self._sep_id
        if texts_b is None:
            segment_ids = np.zeros((n, sequence_length), dtype=np.int32)
        else:
            start_b = 2 + keep_a
            _scatter(token_ids, flat_b, len_b, keep_b, first_column=start_b)
            token_ids[rows, start_b + keep_b] = self._sep_id
            columns = np.arange(sequence_length)
            segment_ids = (
                (columns >= start_b[:, None]) & (columns <= (start_b + keep_b)[:, None])
            ).astype(np.int32)
        return {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": token_ids != self._pad_id,
        }


class _IdCache:
    """Key (text chunk or word) -> token ids, kept as one int code per key so that a batch decodes in numpy.

    A code >= 0 is the key's only token; -1 marks the end of a text; a code ``c <= -2`` means the key's ids
    (any number but one, maybe none) are span ``-c - 2`` of a pool.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.codes: dict[str, int] = {_ROW_END: _ROW_END_CODE}
        self._pool: list[int] = []
        self._span_starts: list[int] = []
        self._span_lengths: list[int] = []
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, key: str, ids: Sequence[int]) -> None:
        if len(ids) == 1:
            self.codes[key] = ids[0]
            return
        self.codes[key] = -2 - len(self._span_starts)
        self._span_starts.append(len(self._pool))
        self._span_lengths.append(len(ids))
        self._pool.extend(ids)
        self._arrays = None

    def ids(self, key: str) -> Sequence[int]:
        code = self.codes[key]
        if code >= 0:
            return (code,)
        start = self._span_starts[-2 - code]
        return self._pool[start : start + self._span_lengths[-2 - code]]

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated ids (int32) and ids per text (int64) of a batch's codes, texts closed by the end code."""
        single = codes >= 0
        spans = -2 - codes[codes <= -2]
        counts = single.astype(np.int64)
        if spans.size:
            if self._arrays is None:
                self._arrays = (
                    np.asarray(self._pool, dtype=np.int32),
                    np.asarray(self._span_starts, dtype=np.int64),
                    np.asarray(self._span_lengths, dtype=np.int64),
                )
            pool, span_starts, span_lengths = self._arrays
            counts[codes <= -2] = span_lengths[spans]
        ends = np.cumsum(counts)
        starts = ends - counts
        flat = np.empty(int(ends[-1]) if ends.size else 0, dtype=np.int32)
        flat[starts[single]] = codes[single]
        if spans.size:
            lengths = span_lengths[spans]
            within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            targets = np.repeat(starts[codes <= -2], lengths) + within
            flat[targets] = pool[np.repeat(span_starts[spans], lengths) + within]
        # An end code adds no ids, so the running count at it is the number of ids up to that text's end.
        per_text = np.diff(ends[codes == _ROW_END_CODE], prepend=0)
        return flat, per_text


def _as_str_list(texts: Sequence[str] | np.ndarray) -> list[str]:
    """A batch of texts (list, numpy array of str/bytes/object) as a list of Python strings."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("expected a batch (a sequence) of strings, got a single string")
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    return [text if type(text) is str else _as_str(text) for text in texts]


def _as_str(text) -> str:
    if isinstance(text, bytes):
        return text.decode("utf-8")
    if isinstance(text, str):
        return str(text)
    raise TypeError(f"expected strings or UTF-8 bytes, got {type(text).__name__}: {text!r}")


def _round_robin(len_a: np.ndarray, len_b: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """How many tokens of each segment tf_text's ``RoundRobinTrimmer`` keeps (closed form, vectorised).

    With tokens granted a0, b0, a1, b1, ...: when both segments are long, ``a`` keeps ``ceil(budget / 2)`` and
    ``b`` ``floor(budget / 2)``; a short segment keeps all of itself and leaves the rest to the other.
    """
    keep_a = np.minimum(len_a, np.maximum((budget + 1) // 2, budget - len_b))
    keep_b = np.minimum(len_b, np.maximum(budget // 2, budget - len_a))
    return keep_a, keep_b


def _scatter(
    out: np.ndarray, flat: np.ndarray, lengths: np.ndarray, keep: np.ndarray, first_column: np.ndarray
) -> None:
    """Write the first ``keep[i]`` ids of ragged row i into ``out[i, first_column[i]:]``."""
    if flat.size == 0:
        return
    rows = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(flat.size) - (np.cumsum(lengths) - lengths)[rows]
    kept = within < keep[rows]
    out[rows[kept], first_column[rows[kept]] + within[kept]] = flat[kept]
