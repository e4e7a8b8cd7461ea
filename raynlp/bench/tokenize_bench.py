"""keras-hub's BERT preprocessor against raynlp's tokenizer, in one process and on Ray Data, same rows.

Rows: the Rotten Tomatoes sentences and the full movie reviews, cycled up to `rows`, packed at sequence
length 256 with the `minilm_l6_en_uncased` vocabulary. Throughput counts every row and every real
(non-padding) token of the packed output; each way's ids are compared with keras-hub's.
"""

import logging
import time
from pathlib import Path

import numpy as np

from raynlp.bench._report import machine, ratio_bars, write_report

logger = logging.getLogger(__name__)

PRESET = "minilm_l6_en_uncased"
SEQUENCE_LENGTH = 256
BATCH_SIZE = 256
DEFAULT_ROWS = 20_000


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
    for i in range(0, len(texts), BATCH_SIZE):
        x = preprocessor(texts[i : i + BATCH_SIZE])
        parts.append({k: np.asarray(v) for k, v in x.items()})
    seconds = time.perf_counter() - start
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, seconds


def _raynlp_pack(preset_dir: str, texts: list[str]) -> tuple[dict, float]:
    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer

    tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(preset_dir)
    tokenizer.pack(texts[:8], sequence_length=SEQUENCE_LENGTH)
    parts = []
    start = time.perf_counter()
    for i in range(0, len(texts), BATCH_SIZE):
        parts.append(tokenizer.pack(texts[i : i + BATCH_SIZE], sequence_length=SEQUENCE_LENGTH))
    seconds = time.perf_counter() - start
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, seconds


def _ray_pack(texts: list[str], num_actors: int) -> tuple[dict, float]:
    import ray.data

    from raynlp.data import tokenize_dataset

    # The source is in the object store before the clock starts; the time includes starting the actors.
    source = ray.data.from_items([{"text": t, "row": i} for i, t in enumerate(texts)],
                                 override_num_blocks=max(8, 4 * num_actors))
    start = time.perf_counter()
    packed = tokenize_dataset(source, PRESET, sequence_length=SEQUENCE_LENGTH, num_actors=num_actors,
                              batch_size=BATCH_SIZE).materialize()
    seconds = time.perf_counter() - start
    batch = packed.sort("row").take_batch(batch_size=len(texts), batch_format="numpy")
    return {k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask")}, seconds


def _same_rows(a: dict, b: dict) -> float:
    equal = np.ones(len(a["token_ids"]), bool)
    for key in ("token_ids", "segment_ids", "padding_mask"):
        equal &= (np.asarray(a[key]) == np.asarray(b[key])).all(axis=1)
    return float(equal.mean())


def run_tokenize_bench(output_dir: Path, rows: int | None = None) -> Path:
    from raynlp._internal.cluster import ensure_ray
    from raynlp.presets import resolve

    rows = rows or DEFAULT_ROWS
    preset_dir = resolve(PRESET)
    texts = _texts(rows)
    logger.info("tokenize bench: %d rows, sequence length %d", rows, SEQUENCE_LENGTH)

    reference, keras_seconds = _keras_hub_pack(preset_dir, texts)
    tokens = int(reference["padding_mask"].sum())
    results = {"keras_hub_preprocessor_1_process": (keras_seconds, 1.0)}
    fast, seconds = _raynlp_pack(preset_dir, texts)
    results["raynlp_1_process"] = (seconds, _same_rows(reference, fast))
    ensure_ray()
    for actors in (1, 2):
        packed, seconds = _ray_pack(texts, actors)
        results[f"raynlp_ray_data_{actors}_actor{'s' if actors > 1 else ''}"] = (seconds, _same_rows(reference, packed))

    figures = {
        way: {"seconds": round(s, 3), "rows_per_s": round(rows / s, 1), "tokens_per_s": round(tokens / s, 1),
              "same_ids_as_keras_hub": round(same, 5)}
        for way, (s, same) in results.items()
    }
    base = figures["keras_hub_preprocessor_1_process"]["rows_per_s"]
    report = {
        "benchmark": "tokenize",
        "rows": rows,
        "tokens": tokens,
        "sequence_length": SEQUENCE_LENGTH,
        "preset": PRESET,
        "machine": machine(),
        "results": figures,
        "speedup_vs_keras_hub": {way: round(f["rows_per_s"] / base, 2) for way, f in figures.items()},
        "note": "Ray Data timings include starting the actor pool and moving rows through the object store.",
    }
    path = write_report(output_dir, "tokenize", report, _plot)
    logger.info("tokenize bench: %s", report["speedup_vs_keras_hub"])
    return path


def _plot(report: dict, path: Path) -> None:
    ratio_bars(path, speeds={w: f["tokens_per_s"] / 1000 for w, f in report["results"].items()},
               ratios=report["speedup_vs_keras_hub"], xlabel="thousand tokens / s",
               title=f"Tokenize {report['rows']:,} rows at length {report['sequence_length']} "
                     f"({report['machine']['cpus']} CPU cores)")
