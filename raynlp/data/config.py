"""Typed configs for data jobs: where a corpus comes from (shared by every job that reads one), masked-LM masking,
and `vocab`."""

from typing import Literal

from pydantic import Field, model_validator

from raynlp._internal.cluster import ADDRESS_HELP
from raynlp._internal.config_file import Section
from raynlp.data.corpus import Format
from raynlp.errors import RaynlpError

# Ray Data actors that tokenize a corpus that is not small (`raynlp.data.tokenize.packing_actors`).
PACKING_ACTORS = 2
# Rows a packing call takes (`raynlp.data.tokenize.packing_batch_rows`): for a split of known size, up to the
# larger figure, so that Ray's cost per task and per call is small beside the packing. A split of unknown size
# (files being read) keeps the smaller: Ray Data bundles a fused reader's input, files, up to a call's size.
PACKING_BATCH_ROWS = 512
PACKING_BATCH_ROWS_MAX = 16_384


class CorpusSettings(Section):
    """A corpus: one of raynlp's data sets (and its split), or any path/glob/URI `read_corpus` reads."""

    dataset: str | None = Field(None, description="a raynlp data set name (`raynlp datasets list`)")
    split: Literal["train", "test"] = Field("train", description="split of `dataset`")
    input: str | None = Field(None, description="a file, folder, glob, or s3:// / gs:// URI")
    format: Format | None = Field(None, description="inferred from the suffix or the folder layout when left out")
    text_column: str = "text"
    encoding: str = Field("utf-8", description="text encoding of the corpus files, e.g. latin-1")
    skip_bad_files: bool = Field(False, description="leave out empty or unreadable files instead of stopping")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.dataset is None) == (self.input is None):
            raise ValueError("give exactly one of data.dataset and data.input")
        return self

    def check_input(self, field: str = "data.input") -> None:
        """Refuse an input path that does not exist, naming it as the caller knows it (`field`), before a command
        starts Ray."""
        from raynlp.data.corpus import check_corpus_path

        if self.input:
            check_corpus_path(self.input, field=field)

    def class_names(self) -> list[str] | None:
        """The class-folder names of a class-folder corpus (a listing), else None."""
        from raynlp.data.corpus import class_names

        return class_names(self.input, self.format) if self.input else None

    def known_rows(self) -> int | None:
        """The rows of a named data set's split (from its cache's record); None for a path, unknown until read."""
        from raynlp import datasets

        return datasets.split_rows(self.dataset, self.split) if self.dataset else None

    def open(self, shuffle_seed: int | None = None, pair_column: str | None = None):
        """The corpus as a Ray Dataset with a `text` column (and `label` where it has one); with `shuffle_seed`,
        a corpus read from a path comes in a random order seeded by it (a named data set is stored shuffled).
        `pair_column`: a second text a row, from that column of a csv/jsonl/parquet corpus, as `text_pair`."""
        from raynlp import datasets
        from raynlp.data.corpus import CorpusFileError, read_corpus

        if self.dataset:
            if pair_column:
                raise RaynlpError(f"data set {self.dataset} holds one text a row; a second text column "
                                  f"({pair_column!r}) needs a corpus read from csv, jsonl or parquet files")
            return datasets.load(self.dataset)[self.split]
        try:
            return read_corpus(self.input, format=self.format, text_column=self.text_column,
                               pair_column=pair_column, on_bad_file="skip" if self.skip_bad_files else "raise",
                               encoding=self.encoding, shuffle_seed=shuffle_seed)
        except CorpusFileError as e:
            raise e.suggesting(skip="data.skip_bad_files=true", encoding="data.encoding=latin-1") from None


class MaskingSettings(Section):
    """Masked-LM masking, as keras-hub's `MaskedLMMaskGenerator` with the defaults of `BertMaskedLMPreprocessor`."""

    selection_rate: float = Field(0.15, gt=0, lt=1, description="share of the tokens selected as labels "
                                                                "(MosaicBERT trains with 0.30)")
    max_selections: int = Field(96, ge=1, description="at most this many selected positions a row")
    mask_token_rate: float = Field(0.8, ge=0, le=1, description="share of the selections replaced by [MASK]")
    random_token_rate: float = Field(0.1, ge=0, le=1, description="share replaced by a random token")
    dynamic: bool = Field(True, description="mask each batch anew when a worker deals it (new masks every epoch); "
                                            "false: mask once when tokenizing, as the guide does")
    whole_word: bool = Field(False, description="select whole words: every ## piece of a selected word with it")

    @model_validator(mode="after")
    def _rates(self):
        if self.mask_token_rate + self.random_token_rate > 1:
            raise ValueError("masking mask_token_rate and random_token_rate add up to more than 1")
        return self

    def check(self, tokenizer) -> None:
        """Refuse settings a `FastWordPieceTokenizer` cannot mask with."""
        if self.whole_word and not tokenizer.continuation_ids.any():
            raise RaynlpError("model.masking.whole_word: this tokenizer's vocabulary has no word-continuation "
                              f"pieces ({tokenizer.suffix_indicator}...), so it has no words to mask whole")

    def mask_kwargs(self, tokenizer) -> dict:
        """`raynlp.data.masked_lm.mask_tokens`'s settings for a `FastWordPieceTokenizer` (all but `rng`)."""
        self.check(tokenizer)
        return dict(vocabulary_size=tokenizer.vocabulary_size, mask_token_id=tokenizer.mask_token_id,
                    unselectable_token_ids=[tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id],
                    selection_rate=self.selection_rate, max_selections=self.max_selections,
                    mask_token_rate=self.mask_token_rate, random_token_rate=self.random_token_rate,
                    continuation_ids=tokenizer.continuation_ids if self.whole_word else None)

    def manifest(self, seed: int) -> dict:
        """What a tokenized folder records of the masks drawn into it (static masking, so `dynamic` is left out)."""
        return {**self.model_dump(exclude={"dynamic"}), "seed": seed}


class VocabConfig(Section):
    """`raynlp vocab`: learn a WordPiece vocabulary from a corpus (the guide's level 6)."""

    task: Literal["vocab"] = "vocab"
    data: CorpusSettings
    size: int = Field(ge=10, description="vocabulary size, reserved tokens included")
    output: str = Field(description="vocabulary file to write, one token per line")
    lowercase: bool = True
    strip_accents: bool = False
    address: str | None = Field(None, description=ADDRESS_HELP)
