"""Masked-LM pretraining: the guide's recipe in one plain keras-hub process against raynlp's packed documents.

The work, for each corpus (the first documents of a named data set's training split, written to one Parquet
file that every way reads): pretrain the same random-init BERT-Tiny with masked-LM at the same sequence length,
global batch, optimizer and number of passes over the corpus:

- `keras_hub_guide_1_process`: the guide's way: a document a row, cut at the sequence length,
  `BertMaskedLMPreprocessor` (`MaskedLMMaskGenerator`) mapped over a `tf.data` pipeline, `fit`;
- `raynlp_packed_1_worker`, `raynlp_packed_2_workers`: `raynlp.train.train` with the documents packed into full
  windows (`data.packing: documents`) and masks drawn as each worker deals a batch, per-worker batch
  `global_batch / workers`.

What counts is real tokens: the documents' own tokens a step trains on (no [CLS], [SEP] or [PAD]). A row per
document spends most of a window on padding where documents are short (Shakespeare's paragraphs) and throws the
rest of a long one away (a movie review); packing fills the windows and keeps every token. Each way reports its
real tokens per optimizer step and per second (training steps of the passes after the first, so compilation
and reading the shards are left out), and its masked-LM loss against the real tokens seen; the losses are
compared at the largest budget every way reached.
"""

import functools
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from raynlp.bench._report import machine

logger = logging.getLogger(__name__)

PRESET = "bert_tiny_en_uncased_scratch"
SEQUENCE_LENGTH = 128
GLOBAL_BATCH = 32
LEARNING_RATE = 1e-3
SELECTION_RATE = 0.15
MAX_SELECTIONS = 32  # 15% of a full window's 126 tokens is 19 on average: room above it
# Passes over the corpus; the first one, which compiles, is left out of the speeds.
EPOCHS = 3
DEFAULT_DOCUMENTS = {"shakespeare": 8000, "movie_reviews": 300}
BASELINE = "keras_hub_guide_1_process"
CURVE_POINTS_PER_EPOCH = 5


def step_clock(path: str):
    """A Keras callback (made inside each process that trains) that writes, from process 0, when each training
    step of each epoch ended and the epoch's running mean loss then. Not async-safe on purpose: every way waits
    for each step's loss alike."""
    import jax
    import keras

    class StepClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append({"started": time.perf_counter(), "step_ends": [], "running_loss": []})

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1]["step_ends"].append(time.perf_counter())
            self.epochs[-1]["running_loss"].append(float(logs["loss"]))

        def on_train_end(self, logs=None):
            if jax.process_index() == 0:
                Path(path).write_text(json.dumps(self.epochs))

    return StepClock()


def _write_corpus(folder: Path, dataset: str, documents: int) -> Path:
    import pyarrow.parquet as pq

    from raynlp import datasets

    table = datasets.read_split(dataset, "train").select(["text"])
    path = folder / f"{dataset}.parquet"
    pq.write_table(table.slice(0, min(documents, table.num_rows)), path)
    return path


def _guide_fit(corpus: Path, clock: Path) -> dict:
    """The guide's level 5, line by line: a row per document through keras-hub's masked-LM preprocessor."""
    import keras
    import keras_hub
    import pyarrow.parquet as pq
    import tensorflow as tf

    from raynlp.presets import resolve

    start = time.perf_counter()
    texts = pq.read_table(corpus)["text"].to_pylist()
    preset_dir = resolve(PRESET)
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        tokenizer=keras_hub.models.BertTokenizer.from_preset(preset_dir), sequence_length=SEQUENCE_LENGTH,
        mask_selection_rate=SELECTION_RATE, mask_selection_length=MAX_SELECTIONS)
    steps = len(texts) // GLOBAL_BATCH
    # The real tokens of the rows a pass trains on (padding is the same whatever the masks), counted off the clock.
    real = sum(int(np.asarray(x["padding_mask"]).sum()) - 2 * len(x["padding_mask"]) for x, _, _ in
               tf.data.Dataset.from_tensor_slices(texts[: steps * GLOBAL_BATCH]).batch(GLOBAL_BATCH).map(preprocessor))
    ds = (tf.data.Dataset.from_tensor_slices(texts).shuffle(len(texts), seed=0)
          .batch(GLOBAL_BATCH, drop_remainder=True).map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    keras.utils.set_random_seed(0)
    model = keras_hub.models.BertMaskedLM.from_preset(preset_dir, preprocessor=None)
    model.compile(optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=0.01),
                  # The mean over the masked positions, as raynlp's (the guide's default divides by every
                  # selection slot, so its loss would fall with the share of empty slots, not with learning).
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  reduction="mean_with_sample_weight"),
                  weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.fit(ds, epochs=EPOCHS, callbacks=[step_clock(str(clock))], verbose=0, shuffle=False)  # shuffled above
    return {"steps_per_epoch": steps, "real_tokens_per_step": real / steps,
            "wall_seconds": round(time.perf_counter() - start, 1)}


def _raynlp_fit(corpus: Path, out: Path, clock: Path, workers: int) -> dict:
    from raynlp.train import load_config, train

    out, clock = out.resolve(), clock.resolve()  # the workers run in their own working folders
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    config = load_config(None, [
        "task=pretrain", f"preset={PRESET}", f"data.train={corpus}", f"data.sequence_length={SEQUENCE_LENGTH}",
        f"model.masking.selection_rate={SELECTION_RATE}", f"model.masking.max_selections={MAX_SELECTIONS}",
        f"optimizer.learning_rate={LEARNING_RATE}", "optimizer.schedule=constant", f"train.epochs={EPOCHS}",
        f"train.batch_size={GLOBAL_BATCH // workers}", f"scaling.num_workers={workers}", f"run.output={out}",
    ])
    result = train(config, callbacks=[functools.partial(step_clock, str(clock))])
    packing = json.loads((out / "data" / "train" / "_raynlp_tokenized.json").read_text())["packing"]
    steps = result.metrics[0]["global_step"]
    # Every window but a shard's last is full: a step's windows hold the corpus' mean tokens a window.
    return {"steps_per_epoch": steps, "real_tokens_per_step": GLOBAL_BATCH * packing["tokens"] / packing["windows"],
            "wall_seconds": round(time.perf_counter() - start, 1), "packing": packing}


def _figures(run: dict, clock: Path) -> dict:
    """Speeds and the loss curve of one way, from its step clock."""
    epochs = json.loads(clock.read_text())
    per_step = run["real_tokens_per_step"]
    steady = epochs[1:]
    seconds = sum(e["step_ends"][-1] - e["started"] for e in steady)
    steps = sum(len(e["step_ends"]) for e in steady)
    curve, seen = [], 0
    for epoch in epochs:
        # The epoch's running mean after step k, back into the mean loss of each stretch of steps.
        means = np.asarray(epoch["running_loss"], dtype=np.float64)
        totals = np.concatenate([[0.0], means * np.arange(1, len(means) + 1)])
        ends = np.linspace(0, len(means), CURVE_POINTS_PER_EPOCH + 1).round().astype(int)
        for a, b in zip(ends[:-1], ends[1:]):
            curve.append([round((seen + b) * per_step), round(float((totals[b] - totals[a]) / (b - a)), 4)])
        seen += len(means)
    return {**{k: v for k, v in run.items() if k != "packing"},
            "real_tokens_per_step": round(per_step, 1),
            "real_tokens_per_second": round(steps * per_step / seconds, 1),
            "steps_per_second": round(steps / seconds, 2),
            "epoch_train_seconds": [round(e["step_ends"][-1] - e["started"], 2) for e in epochs],
            "epoch_losses": [round(e["running_loss"][-1], 4) for e in epochs],
            "loss_curve": curve}


def _loss_at(curve: list, tokens: float) -> float:
    x, y = zip(*curve)
    return round(float(np.interp(tokens, x, y)), 4)


def _bench_corpus(output_dir: Path, dataset: str, documents: int, workers: tuple[int, ...]) -> dict:
    from raynlp._internal.cluster import ensure_ray

    folder = output_dir / dataset
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    corpus = _write_corpus(folder, dataset, documents)
    logger.info("pretrain bench: %s, %d documents, %s, sequence length %d, global batch %d, %d passes",
                dataset, documents, PRESET, SEQUENCE_LENGTH, GLOBAL_BATCH, EPOCHS)
    results, packing = {}, None
    results[BASELINE] = _figures(_guide_fit(corpus, folder / "clock_guide.json"), folder / "clock_guide.json")
    ensure_ray()
    for count in workers:
        name = f"raynlp_packed_{count}_worker{'s' if count > 1 else ''}"
        clock = folder / f"clock_{name}.json"
        run = _raynlp_fit(corpus, folder / "runs" / name, clock, count)
        packing = run["packing"]
        results[name] = _figures(run, clock)
    base = results[BASELINE]
    budget = min(r["loss_curve"][-1][0] for r in results.values())
    return {
        "documents": documents, "packing": packing, "results": results,
        "ratio_to_keras_hub_guide": {
            "real_tokens_per_second": {w: round(r["real_tokens_per_second"] / base["real_tokens_per_second"], 2)
                                       for w, r in results.items()},
            "real_tokens_per_step": {w: round(r["real_tokens_per_step"] / base["real_tokens_per_step"], 2)
                                     for w, r in results.items()},
        },
        "loss_at_equal_real_tokens": {"real_tokens": budget,
                                      **{w: _loss_at(r["loss_curve"], budget) for w, r in results.items()}},
    }


def run_pretrain_bench(output_dir: Path, documents: int | None = None, corpora: tuple[str, ...] | None = None,
                       workers: tuple[int, ...] = (1, 2)) -> Path:
    """`documents`: how many of each corpus (default: DEFAULT_DOCUMENTS), at most its training split."""
    corpora = corpora or tuple(DEFAULT_DOCUMENTS)
    report = {
        "benchmark": "pretrain", "preset": PRESET, "sequence_length": SEQUENCE_LENGTH,
        "global_batch": GLOBAL_BATCH, "epochs": EPOCHS, "learning_rate": LEARNING_RATE,
        "selection_rate": SELECTION_RATE, "max_selections": MAX_SELECTIONS, "machine": machine(),
        "corpora": {name: _bench_corpus(output_dir, name, documents or DEFAULT_DOCUMENTS[name], workers)
                    for name in corpora},
        "note": "real tokens: the documents' own tokens a step trains on (no [CLS], [SEP], [PAD]); speeds over the "
                "training steps of the passes after the first; every way makes the same passes over the same "
                "documents, so a row per document takes more, emptier steps (and a long document loses all but its "
                "first window). Losses are the masked-LM loss of the training batches, averaged over stretches of "
                "steps; 2 workers on one machine share its cores.",
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "pretrain.json"
    path.write_text(json.dumps(report, indent=2))
    _plot(report, output_dir / "pretrain.png")
    for name, figures in report["corpora"].items():
        logger.info("pretrain bench, %s: real tokens/s ratio %s; loss at %d real tokens %s", name,
                    figures["ratio_to_keras_hub_guide"]["real_tokens_per_second"],
                    figures["loss_at_equal_real_tokens"]["real_tokens"], figures["loss_at_equal_real_tokens"])
    return path


def _plot(report: dict, path: Path) -> None:
    """A row per corpus: real tokens per second (with the ratio to the guide), and loss against real tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = report["corpora"]
    fig, axes = plt.subplots(len(corpora), 2, figsize=(12, 3.4 * len(corpora)), squeeze=False)
    for (name, figures), (bars, curves) in zip(corpora.items(), axes):
        ways = list(figures["results"])
        ratios = figures["ratio_to_keras_hub_guide"]["real_tokens_per_second"]
        speeds = [figures["results"][w]["real_tokens_per_second"] for w in ways]
        drawn = bars.barh([w.replace("_", " ") for w in ways], speeds, color=["#888"] + ["#1f77b4"] * (len(ways) - 1))
        for bar, way in zip(drawn, ways):
            bars.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {ratios[way]}×", va="center")
        bars.invert_yaxis()
        bars.set_xlabel("real tokens / s (after the first pass)")
        bars.set_title(f"{name}: {figures['documents']} documents, sequence length {report['sequence_length']}")
        for way in ways:
            x, y = zip(*figures["results"][way]["loss_curve"])
            curves.plot(x, y, label=way.replace("_", " "))
        curves.set_xlabel("real tokens trained on")
        curves.set_ylabel("masked-LM loss")
        curves.legend()
    fig.suptitle(f"Masked-LM pretraining of {report['preset']}, global batch {report['global_batch']} "
                 f"({report['machine']['cpus']} CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
