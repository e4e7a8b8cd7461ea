"""keras-hub's BERT preprocessor against raynlp's tokenizer, in one process and on Ray Data, same rows.

Rows: the Rotten Tomatoes sentences and the full movie reviews, cycled up to `rows`, packed at sequence
length 256 with the `minilm_l6_en_uncased` vocabulary. Throughput counts every row and every real
(non-padding) token of the packed output; each way's ids are compared with keras-hub's. raynlp's ways pack in
calls of the size raynlp gives a split of that many rows (`call_rows`, `packing_batch_rows`), or smaller where
the rows would not make 8 calls (a small run still has a steady state after each actor's first call). raynlp's
one process does what the Ray Data ways do, in one process: it packs with the actors' packer (the stored column
types included) and copies each call's output into place, as their consumer copies each packed block (memory a
process writes for the first time is slow on some machines, virtual ones above all: a way that kept more, or wider,
arrays would be timed slower for it). It is timed before and after the Ray Data ways, which are held against the
mean: the machine's speed drifts over minutes.
"""

import logging
import time
from pathlib import Path

import numpy as np

from raynlp.bench._report import machine, ratio_bars, write_report

logger = logging.getLogger(__name__)

PRESET = "minilm_l6_en_uncased"
SEQUENCE_LENGTH = 256
KERAS_HUB_BATCH_SIZE = 256
STEADY_BLOCK_ROWS = 5_000  # Ray Data ways: rows a source block holds
DEFAULT_ROWS = 20_000
KERAS_HUB_ROWS = 20_000


def _texts(rows: int) -> list[str]:
    from raynlp import datasets

    pool = []
    for name in ("rotten_tomatoes", "movie_reviews"):
        for split in ("train", "test"):
            pool += datasets.read_split(name, split)["text"].to_pylist()
    return [pool[i % len(pool)] for i in range(rows)]


def _timed(fn) -> tuple[dict, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _keras_hub_pack(preset_dir: str, texts: list[str]) -> dict:
    import keras_hub

    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        preset_dir, sequence_length=SEQUENCE_LENGTH)
    preprocessor(texts[:8])  # build the graph outside the timing
    parts = []
    start = time.perf_counter()
    for i in range(0, len(texts), KERAS_HUB_BATCH_SIZE):
        x = preprocessor(texts[i : i + KERAS_HUB_BATCH_SIZE])
        parts.append({k: np.asarray(v) for k, v in x.items()})
    seconds = time.perf_counter() - start
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, seconds


def _call_rows(rows: int) -> int:
    from raynlp.data.tokenize import packing_batch_rows

    return min(packing_batch_rows(rows), max(1, rows // 8))


def _raynlp_pack(texts: list[str]) -> tuple[dict, float, dict]:
    """Packed in this process by the packer an actor runs, in calls of the size an actor's are, each call's
    output copied into place as the Ray Data ways' consumer copies each packed block."""
    from raynlp.data.columns import derived
    from raynlp.data.tokenize import PACKED_FEATURES, BertPacker

    packer = BertPacker(PRESET, SEQUENCE_LENGTH)
    column = np.array(texts, dtype=object)  # a batch's texts as an actor is given them
    packer({"text": column[:8]})
    batch: dict[str, np.ndarray] = {}
    call = _call_rows(len(texts))
    start = time.perf_counter()
    for i in range(0, len(texts), call):
        for name, values in packer({"text": column[i : i + call]}).items():
            if name not in batch:
                batch[name] = np.empty((len(texts), *values.shape[1:]), values.dtype)
            batch[name][i : i + len(values)] = values
    seconds = time.perf_counter() - start
    return {k: batch[k] if k in batch else derived(k, batch) for k in PACKED_FEATURES}, seconds, _dtypes(batch)


def _dtypes(batch: dict[str, np.ndarray]) -> dict[str, str]:
    """The columns a way kept, and their types: the one process keeps what the Ray Data ways' consumer keeps."""
    return {name: str(values.dtype) for name, values in sorted(batch.items())}


def _ray_pack(texts: list[str], num_actors: int) -> tuple[dict, dict, dict]:
    """Packed on Ray Data, and its clock: `seconds` from the call to the last packed block (starting the actors
    included), `startup_s` until each actor's first block is out, `steady_rows` and `steady_s` the rows packed
    after that and the time they took, as a consumer sees them that copies each packed block into place and lets
    it go as it arrives (as a trainer's feed would, rather than holding a corpus' packed blocks in the object store
    to the end); every row must arrive exactly once."""
    import ray
    import ray.data
    from ray.data.block import BlockAccessor

    from raynlp.data import tokenize_dataset
    from raynlp.data.columns import derived
    from raynlp.data.tokenize import PACKED_FEATURES

    # The source is in the object store before the clock starts, in blocks of STEADY_BLOCK_ROWS rows.
    source = ray.data.from_items([{"text": t, "row": i} for i, t in enumerate(texts)],
                                 override_num_blocks=max(4 * num_actors, len(texts) // STEADY_BLOCK_ROWS))
    source = source.materialize()
    start = time.perf_counter()
    packed = tokenize_dataset(source, PRESET, sequence_length=SEQUENCE_LENGTH, num_actors=num_actors,
                              batch_size=_call_rows(len(texts)))
    batch: dict[str, np.ndarray] = {}
    arrived = np.zeros(len(texts), np.int32)  # times each row came out
    arrivals = []  # (seconds since start, rows) as each packed bundle comes out
    for bundle in packed.iter_internal_ref_bundles():
        seconds, rows = time.perf_counter() - start, 0
        for ref in bundle.block_refs:
            block = BlockAccessor.for_block(ray.get(ref)).to_numpy()
            np.add.at(arrived, block["row"], 1)
            rows += len(block["row"])
            for name, values in block.items():
                if name in PACKED_FEATURES:
                    if name not in batch:
                        batch[name] = np.empty((len(texts), *values.shape[1:]), values.dtype)
                    batch[name][block["row"]] = values
        arrivals.append((seconds, rows))
    if not (arrived == 1).all():
        raise RuntimeError(f"Ray Data gave {int((arrived == 0).sum())} rows no packed row and "
                           f"{int((arrived > 1).sum())} rows more than one")
    # Each actor packs its first block during start-up: start-up ends when as many blocks as actors are out.
    first = min(num_actors, len(arrivals)) - 1
    clock = {"seconds": arrivals[-1][0], "startup_s": arrivals[first][0],
             "steady_rows": sum(rows for _, rows in arrivals[first + 1:]),
             "steady_s": arrivals[-1][0] - arrivals[first][0]}
    return {k: batch[k] if k in batch else derived(k, batch) for k in PACKED_FEATURES}, clock, _dtypes(batch)


def _figures(rows: int, tokens: int, seconds: float, same: float) -> dict:
    return {"seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1), "same_ids_as_keras_hub": round(same, 5)}


def _same_rows(a: dict, b: dict) -> float:
    """The share of `a`'s rows that `b`'s first rows equal."""
    from raynlp.data.tokenize import PACKED_FEATURES

    b = {key: np.asarray(value)[: len(a["token_ids"])] for key, value in b.items()}
    equal = np.ones(len(a["token_ids"]), bool)
    for key in PACKED_FEATURES:  # values: the Ray ways store narrower types
        equal &= (np.asarray(a[key]) == np.asarray(b[key])).all(axis=1)
    return float(equal.mean())


def run_tokenize_bench(output_dir: Path, rows: int | None = None) -> Path:
    from raynlp._internal.cluster import ensure_ray
    from raynlp.presets import resolve

    rows = rows or DEFAULT_ROWS
    preset_dir = resolve(PRESET)
    texts = _texts(rows)
    logger.info("tokenize bench: %d rows, sequence length %d", rows, SEQUENCE_LENGTH)

    # keras-hub's preprocessor is 80 times slower: it runs on the first KERAS_HUB_ROWS rows, which every other way's
    # ids are compared with; the Ray Data ways are also compared with raynlp's one process on every row.
    sample = texts[:KERAS_HUB_ROWS]
    reference, keras_seconds = _keras_hub_pack(preset_dir, sample)
    fast, before, kept = _raynlp_pack(texts)
    tokens = int(fast["padding_mask"].sum())
    ensure_ray()
    ray_ways = {}
    for actors in (1, 2):
        packed, clock, ray_kept = _ray_pack(texts, actors)
        way = _figures(rows, tokens, clock["seconds"], _same_rows(reference, packed))
        way["kept_columns"] = ray_kept
        steady_tokens = tokens * clock["steady_rows"] / rows  # rows of a cycled pool: tokens in proportion
        way.update(same_ids_as_raynlp_1_process=_same_rows(fast, packed), startup_s=round(clock["startup_s"], 3),
                   steady_tokens_per_s=round(steady_tokens / clock["steady_s"], 1) if clock["steady_s"] else None)
        ray_ways[actors] = way
        del packed
    # The one process again: the machine's speed drifts over minutes, so the Ray Data ways are held against the one
    # process timed on both sides of them.
    again, after, _ = _raynlp_pack(texts)
    one = _figures(rows, tokens, (before + after) / 2, _same_rows(reference, fast))
    one["kept_columns"] = kept
    one["seconds_before_and_after"] = [round(before, 6), round(after, 6)]
    one["same_ids_after"] = _same_rows(fast, again)
    figures = {"keras_hub_preprocessor_1_process": _figures(len(sample), int(reference["padding_mask"].sum()),
                                                             keras_seconds, 1.0),
               "raynlp_1_process": one}
    for actors, way in ray_ways.items():
        # Against as many copies of the one process as actors, overall and in the steady state.
        way["efficiency"] = round(way["tokens_per_s"] / (actors * one["tokens_per_s"]), 3)
        way["steady_efficiency"] = (round(way["steady_tokens_per_s"] / (actors * one["tokens_per_s"]), 3)
                                    if way["steady_tokens_per_s"] else None)
        figures[f"raynlp_ray_data_{actors}_actor{'s' if actors > 1 else ''}"] = way

    base = figures["keras_hub_preprocessor_1_process"]["rows_per_s"]
    report = {
        "benchmark": "tokenize",
        "rows": rows,
        "keras_hub_rows": len(sample),
        "tokens": tokens,
        "sequence_length": SEQUENCE_LENGTH,
        "call_rows": _call_rows(rows),
        "preset": PRESET,
        "machine": machine(),
        "results": figures,
        "speedup_vs_keras_hub": {way: round(f["rows_per_s"] / base, 2) for way, f in figures.items()},
        "note": "Ray Data ways: `seconds` from the call to the last packed block, starting the actor pool included; "
                "`startup_s` until each actor's first block is out; `steady_tokens_per_s` after that; as a consumer "
                "that copies each block on arrival sees them. `efficiency`: tokens/s against as many copies of "
                "raynlp's one process as actors, the one process timed before and after the Ray Data ways (its "
                "seconds: their mean); it packs with the actors' packer and copies each call's output into place "
                "as their consumer does (`kept_columns`: the same for every raynlp way).",
    }
    path = write_report(output_dir, "tokenize", report, _plot)
    logger.info("tokenize bench: %s", report["speedup_vs_keras_hub"])
    return path


def _plot(report: dict, path: Path) -> None:
    ratio_bars(path, speeds={w: f["tokens_per_s"] / 1000 for w, f in report["results"].items()},
               ratios=report["speedup_vs_keras_hub"], xlabel="thousand tokens / s",
               title=f"Tokenize {report['rows']:,} rows at length {report['sequence_length']} "
                     f"({report['machine']['cpus']} CPU cores)")
