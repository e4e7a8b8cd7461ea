"""Tokenize a Ray Dataset into the packed arrays keras-hub's BERT models take, on a pool of actors.

    >>> ds = read_corpus("reviews.jsonl")
    >>> packed = tokenize_dataset(ds, "minilm_l6_en_uncased", sequence_length=128)
    >>> packed.write_parquet("cache/reviews-128")      # or: write_tokenized(packed, "cache/reviews-128")

Columns out: `token_ids`, `padding_mask` and, for pairs of texts, `segment_ids` ([sequence_length] each), `label`
when the input has one; with masked-LM masking also `mask_positions`, `mask_ids`, `mask_weights` ([max_selections]
each), the features / labels / sample weights of keras-hub's `BertMaskedLMPreprocessor`. They are stored in the
narrowest types the models take, and a single segment's ids (all zero) are left to the worker
(`raynlp.data.columns`).
"""

import json
import logging
import zlib
from pathlib import Path

import numpy as np

from raynlp.data.columns import compact
from raynlp.data.config import PACKING_ACTORS, PACKING_BATCH_ROWS, PACKING_BATCH_ROWS_MAX, MaskingSettings
from raynlp.errors import RaynlpError

logger = logging.getLogger(__name__)

# The inputs of keras-hub's BERT models, as a worker deals them (a single segment's ids are not stored: `columns`).
PACKED_FEATURES = ("token_ids", "segment_ids", "padding_mask")
# A leading underscore: Parquet readers (pyarrow, pandas, Spark, DuckDB) skip the file, so the folder stays a data set.
MANIFEST = "_raynlp_tokenized.json"


class BertPacker:
    """Text batch → packed (and optionally masked) arrays. One per Ray Data actor: the tokenizer is built once.

    `preset` is resolved where the packer runs: a raynlp preset name is fetched into (or found in) this node's
    cache and a storage URI downloaded, so that packers on every node of a cluster find their tokenizer.
    """

    def __init__(self, preset: str, sequence_length: int, text_column: str = "text",
                 pair_column: str | None = None, masking: MaskingSettings | None = None, mask_seed: int = 0):
        from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
        from raynlp.presets import resolve

        self.tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(resolve(preset))
        self.sequence_length = sequence_length
        self.text_column, self.pair_column, self.masking, self.mask_seed = text_column, pair_column, masking, mask_seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch[self.text_column]
        pairs = batch[self.pair_column] if self.pair_column else None
        out = self.tokenizer.pack(texts, pairs, sequence_length=self.sequence_length)
        if self.masking is not None:
            # Drawn a PACKING_BATCH_ROWS slice at a time, whatever the call's size: the draw's temporaries stay small.
            step = PACKING_BATCH_ROWS
            slices = [{key: value[i : i + step] for key, value in out.items()} for i in range(0, len(texts), step)]
            masked = [self._mask(part, texts[i * step : (i + 1) * step]) for i, part in enumerate(slices)]
            out = ({key: np.concatenate([part[key] for part in masked]) for key in masked[0]} if masked
                   else self._mask(out, texts))
        out = compact(out, vocabulary_size=self.tokenizer.vocabulary_size, pairs=pairs is not None)
        for key, value in batch.items():
            if key not in (self.text_column, self.pair_column):
                out[key] = value  # labels and any other column ride along
        return out

    def _mask(self, packed: dict[str, np.ndarray], texts: np.ndarray) -> dict[str, np.ndarray]:
        from raynlp.data.masked_lm import masked_lm_features

        # Seeded by the batch's content, so the same data and seed give the same masks on any worker.
        batch_seed = zlib.crc32("\x00".join(str(t) for t in texts[:4]).encode()) ^ len(texts)
        return masked_lm_features(packed, **self.masking.mask_kwargs(self.tokenizer),
                                  rng=np.random.default_rng([self.mask_seed, batch_seed]))


def max_sequence_length(preset_dir: str) -> int | None:
    config = Path(preset_dir) / "config.json"
    if not config.exists():
        return None
    return json.loads(config.read_text()).get("config", {}).get("max_sequence_length")


_PACKERS: dict[tuple, BertPacker] = {}


def _pack_in_task(batch: dict[str, np.ndarray], **settings) -> dict[str, np.ndarray]:
    """A Ray Data task's batch, packed by the packer this worker process built first (cached per process)."""
    key = tuple(sorted(settings.items()))
    if key not in _PACKERS:
        _PACKERS[key] = BertPacker(**settings)
    return _PACKERS[key](batch)


# A split of at most this many rows is packed in Ray tasks: starting an actor pool would take longer than the work.
SMALL_SPLIT_ROWS = 20_000


def packing_actors(rows: int | None, actors: int = PACKING_ACTORS) -> int:
    """The `num_actors` to pack a split of `rows` rows with (None: not known before it is read): 0, Ray tasks,
    for a small split, else `actors`."""
    return 0 if rows is not None and rows <= SMALL_SPLIT_ROWS else actors


def packing_batch_rows(rows: int | None, workers: int = PACKING_ACTORS) -> int:
    """The `batch_size` to pack a split of `rows` rows with on `workers` actors (0, Ray tasks: counted as
    PACKING_ACTORS) (rows None: not known before it is read): PACKING_BATCH_ROWS when unknown, else calls as
    large as leave every worker four of them, between PACKING_BATCH_ROWS and PACKING_BATCH_ROWS_MAX."""
    if rows is None:
        return PACKING_BATCH_ROWS
    return int(min(PACKING_BATCH_ROWS_MAX, max(PACKING_BATCH_ROWS, rows // (4 * (workers or PACKING_ACTORS)))))


def check_packing_preset(preset: str, sequence_length: int) -> None:
    """Refuse a preset that is neither local nor a raynlp preset, or too short for `sequence_length`."""
    from raynlp.presets import is_local, resolve

    preset_dir = resolve(preset)
    if not is_local(preset_dir):
        raise RaynlpError(f"tokenizing needs a local preset folder or a raynlp preset name, not {preset!r}")
    limit = max_sequence_length(preset_dir)
    if sequence_length < 3 or (limit and sequence_length > limit):
        raise RaynlpError(f"sequence_length {sequence_length} is outside 3..{limit or '∞'} for preset {preset}")


def check_tokenize_job(preset: str, sequence_length: int, output_dir: str) -> None:
    """What a job that tokenizes into `output_dir` can refuse before it starts Ray: the preset, the folder."""
    from raynlp._internal import storage

    check_packing_preset(preset, sequence_length)
    storage.check_unused(output_dir)


def tokenize_dataset(dataset, preset: str, *, sequence_length: int = 128, text_column: str = "text",
                     pair_column: str | None = None, masking: MaskingSettings | None = None,
                     mask_seed: int = 0, num_actors: int = PACKING_ACTORS, batch_size: int = PACKING_BATCH_ROWS):
    """`dataset` with its text replaced by packed token arrays, computed by `num_actors` Ray actors.

    `num_actors=0` packs in Ray tasks instead, each worker process building the tokenizer once: no actor pool
    to start (several seconds), the better choice for small inputs. Both give the same rows. `batch_size`: rows
    a call packs; `packing_batch_rows` sizes it from the split's rows, where known.
    """
    import ray.data

    from raynlp.presets import portable

    check_packing_preset(preset, sequence_length)
    names = dataset.schema().names
    for column in [text_column] + ([pair_column] if pair_column else []):
        if column not in names:
            raise RaynlpError(f"the data set has no column {column!r} (columns: {', '.join(names)})")
    settings = dict(preset=portable(preset), sequence_length=sequence_length, text_column=text_column,
                    pair_column=pair_column, masking=masking, mask_seed=mask_seed)
    if num_actors == 0:
        return dataset.map_batches(_pack_in_task, fn_kwargs=settings, batch_size=batch_size, batch_format="numpy")
    return dataset.map_batches(
        BertPacker,
        fn_constructor_kwargs=settings,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
    )


def write_tokenized(dataset, output_dir: str, *, preset: str, sequence_length: int,
                    masking: MaskingSettings | None = None, mask_seed: int = 0, label_names: list[str] | None = None) -> dict:
    """Write Parquet shards a trainer can stream, plus a manifest saying how they were made (and, where the
    labels had names, which name each class id stands for).

    The shards keep the input's row order whatever the workers' timing, so that the same config trains on the
    same rows in the same order on every run. `output_dir` may be a storage URI (`s3://bucket/tokens`).
    """
    import pyarrow.parquet as pq

    from raynlp._internal import storage

    storage.check_unused(output_dir)
    output = storage.location(output_dir)
    # A Dataset executes with the context it was created with: the option goes on its own, not the global one.
    dataset.context.execution_options.preserve_order = True
    dataset.write_parquet(str(output))
    shards = storage.files(output, ".parquet")
    manifest = {
        "preset": preset,
        "sequence_length": sequence_length,
        "masking": masking.manifest(mask_seed) if masking else None,
        "label_names": label_names,
        "rows": sum(pq.read_metadata(shard).num_rows for shard in shards),
        "shards": len(shards),
    }
    storage.write_text(storage.join(output, MANIFEST), json.dumps(manifest, indent=2))
    logger.info("wrote %d rows in %d Parquet shards to %s", manifest["rows"], manifest["shards"], output)
    return manifest
