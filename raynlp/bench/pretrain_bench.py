"""Masked-LM pretraining: the guide's recipe in one plain keras-hub process against raynlp's packed documents.

The work, for each corpus (the first documents of a named data set's training split, written to one Parquet
file that every way reads): pretrain the same random-init BERT-Tiny with masked-LM at the same sequence length,
optimizer, constant learning rate and number of passes, on the same budget of real tokens per step and in all:

- `keras_hub_guide_1_process`: the guide's way: a document a row, cut at the sequence length,
  `BertMaskedLMPreprocessor` (`MaskedLMMaskGenerator`) mapped over a `tf.data` pipeline, `fit`, 32 rows a step;
- `raynlp_packed_1_worker`, `raynlp_packed_2_workers`: `raynlp.train.train` with the documents packed into full
  windows (`data.packing: documents`), masks drawn as each worker deals a batch, and each document attending
  only to itself (`model.document_attention`, raynlp's default);
- `raynlp_packed_across_documents_1_worker`: the same with `model.document_attention: false` (a window's
  documents read each other and count positions from the window's start), what document attention buys;
- `raynlp_whole_documents_cut_like_a_row_1_worker`: packing on the text the guide trains on: each document cut to
  what a row keeps (`data.max_document_tokens`: sequence length - 2), none split across windows
  (`data.packing: whole_documents`). Every other packed way also trains on the rest of long documents, which
  the guide throws away, and which held-out text a row a document never holds.

What counts is real tokens: the documents' own tokens a step trains on (no [CLS], [SEP] or [PAD]). A row per
document spends most of a window on padding where documents are short (Shakespeare's paragraphs) and throws the
rest of a long one away (a movie review); packing fills the windows and keeps every token. The packed ways take
as many windows a step as hold the guide's real tokens a step (pretraining states its batch in tokens: at equal
rows a step, packing would take fewer, larger steps and its loss per token would measure the step count, not
packing), and as many steps a pass as give the guide's real tokens in all. Each way reports its real tokens per
optimizer step and per second (training steps of the passes after the first, so compilation and reading the
shards are left out), its training loss against the real tokens seen, and, at the end, its masked-LM loss on
held-out documents of the data set's test split, both as the guide feeds them (a document a row) and packed
(read as the way trained: with document attention, each document of a window by itself); every way is scored on
the same masked arrays.
"""

import functools
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from raynlp.bench._clock import step_clock
from raynlp.bench._report import machine, write_report
from raynlp.data.packing import document_positions

logger = logging.getLogger(__name__)

PRESET = "bert_tiny_en_uncased_scratch"
SEQUENCE_LENGTH = 128
GUIDE_BATCH = 32  # rows a step, the guide's
LEARNING_RATE = 1e-3
SELECTION_RATE = 0.15
MAX_SELECTIONS = 32  # 15% of a full window's 126 tokens is 19 on average: room above it
# Passes over the corpus; the first one, which compiles, is left out of the speeds.
EPOCHS = 3
DEFAULT_DOCUMENTS = {"shakespeare": 8000, "movie_reviews": 1000}
HELDOUT_DOCUMENTS = 1000  # at most, from the test split
# Where in a window a masked token sits, for the held-out loss by position.
POSITION_BUCKETS = ((1, 16), (17, 32), (33, 64), (65, SEQUENCE_LENGTH - 2))
BASELINE = "keras_hub_guide_1_process"
# raynlp's ways: (data.packing, workers, model.document_attention, data.max_document_tokens).
ROW_TOKENS = SEQUENCE_LENGTH - 2  # what a row a document keeps of a document
PACKED_WAYS = (("documents", 1, True, None), ("documents", 2, True, None), ("documents", 1, False, None),
               ("whole_documents", 1, True, ROW_TOKENS))
CURVE_POINTS_PER_EPOCH = 5


def _write_corpus(folder: Path, dataset: str, documents: int) -> Path:
    import pyarrow.parquet as pq

    from raynlp import datasets

    table = datasets.read_split(dataset, "train").select(["text"])
    path = folder / f"{dataset}.parquet"
    pq.write_table(table.slice(0, min(documents, table.num_rows)), path)
    return path


def _guide_preprocessor():
    import keras_hub

    from raynlp.presets import resolve

    return keras_hub.models.BertMaskedLMPreprocessor(
        tokenizer=keras_hub.models.BertTokenizer.from_preset(resolve(PRESET)), sequence_length=SEQUENCE_LENGTH,
        mask_selection_rate=SELECTION_RATE, mask_selection_length=MAX_SELECTIONS)


def _masked_lm_loss():
    import keras

    # The mean over the masked positions, as raynlp's (the guide's default divides by every selection slot,
    # so its loss would fall with the share of empty slots, not with learning).
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")


def _guide_fit(corpus: Path, clock: Path, weights: Path) -> dict:
    """The guide's level 5, line by line: a row per document through keras-hub's masked-LM preprocessor."""
    import keras
    import keras_hub
    import pyarrow.parquet as pq
    import tensorflow as tf

    from raynlp.presets import resolve

    start = time.perf_counter()
    texts = pq.read_table(corpus)["text"].to_pylist()
    preprocessor = _guide_preprocessor()
    steps = len(texts) // GUIDE_BATCH
    # The real tokens of the rows a pass trains on (padding is the same whatever the masks), counted off the clock.
    real = sum(int(np.asarray(x["padding_mask"]).sum()) - 2 * len(x["padding_mask"]) for x, _, _ in
               tf.data.Dataset.from_tensor_slices(texts[: steps * GUIDE_BATCH]).batch(GUIDE_BATCH).map(preprocessor))
    ds = (tf.data.Dataset.from_tensor_slices(texts).shuffle(len(texts), seed=0)
          .batch(GUIDE_BATCH, drop_remainder=True).map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    keras.utils.set_random_seed(0)
    model = keras_hub.models.BertMaskedLM.from_preset(resolve(PRESET), preprocessor=None)
    model.compile(optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=0.01), loss=_masked_lm_loss(),
                  weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.fit(ds, epochs=EPOCHS, callbacks=[step_clock(str(clock), str(weights))], verbose=0,
              shuffle=False)  # shuffled above
    return {"rows_per_step": GUIDE_BATCH, "steps_per_epoch": steps, "real_tokens_per_step": real / steps,
            "wall_seconds": round(time.perf_counter() - start, 1)}


def _pack(texts: list[str], mode: str = "documents", max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                              int]:
    """The windows raynlp's packing (`mode`, a `data.packing`; `max_tokens`, a `data.max_document_tokens`) makes of
    `texts` (its own tokenizer and packer, in this process), their first positions, and the documents' own tokens
    they hold (no [CLS], [SEP] or [PAD], as every way counts real tokens)."""
    from raynlp.data.packing import PACKERS, DocumentTokenizer

    tokenizer = DocumentTokenizer(PRESET, max_tokens=max_tokens)
    documents = tokenizer({"text": np.asarray(texts, dtype=object)})
    ids = tokenizer.tokenizer
    packer = PACKERS[mode](SEQUENCE_LENGTH, ids.cls_token_id, ids.sep_token_id, ids.pad_token_id)
    parts = [packer.add(documents["stream"][0], documents["lengths"][0]), packer.finish()]
    return (np.concatenate([w for w, _ in parts]), np.concatenate([f for _, f in parts]),
            int(documents["lengths"][0].sum()))


def _packed_plan(corpus: Path, guide: dict, workers: tuple[int, ...], packing: str, max_tokens: int | None) -> dict:
    """Windows a step holding the guide's real tokens a step (a multiple of every worker count), and steps a
    pass giving the guide's real tokens in all."""
    import pyarrow.parquet as pq

    windows, _, tokens = _pack(pq.read_table(corpus)["text"].to_pylist(), packing, max_tokens)
    per_window = tokens / len(windows)
    unit = int(np.lcm.reduce(workers))
    batch = max(unit, round(guide["real_tokens_per_step"] / per_window / unit) * unit)
    budget = EPOCHS * guide["steps_per_epoch"] * guide["real_tokens_per_step"]
    steps = min(len(windows) // batch, round(budget / (EPOCHS * batch * per_window)))
    return {"windows": len(windows), "real_tokens_per_window": per_window, "rows_per_step": batch,
            "steps_per_epoch": steps}


def _raynlp_fit(corpus: Path, out: Path, clock: Path, weights: Path, workers: int, plan: dict, packing: str,
                document_attention: bool, max_tokens: int | None) -> dict:
    from raynlp.train import load_config, train

    # The workers run in their own working folders.
    out, clock, weights = out.resolve(), clock.resolve(), weights.resolve()
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    config = load_config(None, [
        "task=pretrain", f"preset={PRESET}", f"data.train={corpus}", f"data.sequence_length={SEQUENCE_LENGTH}",
        f"data.packing={packing}", f"model.document_attention={str(document_attention).lower()}",
        f"model.masking.selection_rate={SELECTION_RATE}",
        f"model.masking.max_selections={MAX_SELECTIONS}",
        f"optimizer.learning_rate={LEARNING_RATE}", "optimizer.schedule=constant", f"train.epochs={EPOCHS}",
        f"train.batch_size={plan['rows_per_step'] // workers}", f"train.steps_per_epoch={plan['steps_per_epoch']}",
        f"scaling.num_workers={workers}", f"run.output={out}",
        *([f"data.max_document_tokens={max_tokens}"] if max_tokens else []),
    ])
    result = train(config, callbacks=[functools.partial(step_clock, str(clock), str(weights))])
    packing = json.loads((out / "data" / "train" / "_raynlp_tokenized.json").read_text())["packing"]
    # Every window but the last is full: a step's windows hold the corpus' mean tokens a window.
    return {"rows_per_step": plan["rows_per_step"], "steps_per_epoch": result.metrics[0]["global_step"],
            "real_tokens_per_step": plan["rows_per_step"] * packing["tokens"] / packing["windows"],
            "wall_seconds": round(time.perf_counter() - start, 1), "packing": packing}


def _heldout_sets(dataset: str) -> dict[str, tuple]:
    """The test split's first documents, masked once, as the guide feeds them (a document a row) and packed."""
    import keras
    import tensorflow as tf

    from raynlp import datasets
    from raynlp.data.tokenize import max_sequence_length
    from raynlp.presets import resolve

    texts = datasets.read_split(dataset, "test")["text"].to_pylist()[:HELDOUT_DOCUMENTS]
    preprocessor = _guide_preprocessor()
    keras.utils.set_random_seed(0)
    rows = keras.tree.map_structure(np.asarray, preprocessor(tf.constant(texts)))
    windows, firsts, _ = _pack(texts)
    masked = {k: np.asarray(v) for k, v in preprocessor.masker(tf.constant(windows)).items()}
    tokenizer = preprocessor.tokenizer
    x = {"token_ids": masked["token_ids"], "segment_ids": np.zeros_like(windows),
         "padding_mask": windows != tokenizer.pad_token_id, "mask_positions": masked["mask_positions"],
         **document_positions(windows, sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id,
                              first_positions=firsts, max_position=max_sequence_length(resolve(PRESET)))}
    return {"a_document_a_row": rows, "packed": (x, masked["mask_ids"], masked["mask_weights"])}


def _heldout_scores(weights: Path, sets: dict[str, tuple], document_attention: bool = False) -> dict:
    """Masked-LM loss (the mean over every masked position of the set) and accuracy of the trained weights, and
    the loss by where in the window the masked token sits (a row form starts every document at position 1).
    Packed windows are read as the way trained on them: with `document_attention`, each document by itself."""
    import keras
    import keras_hub

    from raynlp.presets import resolve
    from raynlp.train.recipes.document_masked_lm import DocumentMaskedLM

    plain = keras_hub.models.BertMaskedLM.from_preset(resolve(PRESET), preprocessor=None)
    with np.load(weights) as saved:
        for i, variable in enumerate(plain.weights):
            variable.assign(saved[f"arr_{i}"])
    scores = {}
    for name, (x, y, w) in sets.items():
        model = DocumentMaskedLM(plain) if document_attention and "document_ids" in x else plain
        if model is plain:
            x = {k: v for k, v in x.items() if k not in ("document_ids", "position_ids")}
        nll, right = np.zeros(y.shape), np.zeros(y.shape)
        for i in range(0, len(y), 64):
            logits = model.predict_on_batch({k: v[i:i + 64] for k, v in x.items()})
            nll[i:i + 64] = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
                y[i:i + 64], logits, from_logits=True))
            right[i:i + 64] = np.argmax(logits, axis=-1) == y[i:i + 64]
        masked = w > 0
        by_position = {}
        for first, last in POSITION_BUCKETS:
            bucket = masked & (x["mask_positions"] >= first) & (x["mask_positions"] <= last)
            by_position[f"{first}-{last}"] = round(float(nll[bucket].mean()), 4) if bucket.any() else None
        scores[name] = {"loss": round(float(nll[masked].mean()), 4), "accuracy": round(float(right[masked].mean()), 4),
                        "masked_positions": int(masked.sum()), "loss_by_position": by_position}
    return scores


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
            "real_tokens": round(seen * per_step),
            "real_tokens_per_second": round(steps * per_step / seconds, 1),
            "steps_per_second": round(steps / seconds, 2),
            "epoch_train_seconds": [round(e["step_ends"][-1] - e["started"], 2) for e in epochs],
            "epoch_losses": [round(e["running_loss"][-1], 4) for e in epochs],
            "loss_curve": curve}


def _loss_at(curve: list, tokens: float) -> float:
    x, y = zip(*curve)
    return round(float(np.interp(tokens, x, y)), 4)


def _way_name(packing: str, workers: int, document_attention: bool, max_tokens: int | None) -> str:
    across = "" if document_attention else "_across_documents"
    cut = "_cut_like_a_row" if max_tokens == ROW_TOKENS else f"_cut_at_{max_tokens}" if max_tokens else ""
    return (f"raynlp_{'packed' if packing == 'documents' else packing}{across}{cut}_{workers}_"
            f"worker{'s' if workers > 1 else ''}")


def _bench_corpus(output_dir: Path, dataset: str, documents: int, ways: tuple[tuple, ...]) -> dict:
    from raynlp._internal.cluster import ensure_ray

    folder = output_dir / dataset
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    corpus = _write_corpus(folder, dataset, documents)
    logger.info("pretrain bench: %s, %d documents, %s, sequence length %d, %d passes",
                dataset, documents, PRESET, SEQUENCE_LENGTH, EPOCHS)
    heldout = _heldout_sets(dataset)
    results, packing, scores = {}, {}, {}
    clock, weights = folder / f"clock_{BASELINE}.json", folder / f"weights_{BASELINE}.npz"
    guide = _guide_fit(corpus, clock, weights)
    results[BASELINE] = _figures(guide, clock)
    scores[BASELINE] = _heldout_scores(weights, heldout)
    texts = dict.fromkeys((mode, cut) for mode, _, _, cut in ways)  # the text a way packs, and how
    plans = {key: _packed_plan(corpus, guide, tuple(n for m, n, _, c in ways if (m, c) == key), *key)
             for key in texts}
    ensure_ray()
    for mode, count, document_attention, cut in ways:
        name = _way_name(mode, count, document_attention, cut)
        clock, weights = folder / f"clock_{name}.json", folder / f"weights_{name}.npz"
        run = _raynlp_fit(corpus, folder / "runs" / name, clock, weights, count, plans[mode, cut], mode,
                          document_attention, cut)
        packing[mode + (f"_cut_at_{cut}" if cut else "")] = run["packing"]
        results[name] = _figures(run, clock)
        scores[name] = _heldout_scores(weights, heldout, document_attention)
    for name, figures in results.items():
        figures["heldout"] = scores[name]
    base = results[BASELINE]
    budget = min(r["loss_curve"][-1][0] for r in results.values())
    return {
        "documents": documents, "heldout_documents": len(heldout["a_document_a_row"][1]), "packing": packing,
        "results": results,
        "ratio_to_keras_hub_guide": {
            "real_tokens_per_second": {w: round(r["real_tokens_per_second"] / base["real_tokens_per_second"], 2)
                                       for w, r in results.items()},
            "real_tokens_per_step": {w: round(r["real_tokens_per_step"] / base["real_tokens_per_step"], 2)
                                     for w, r in results.items()},
        },
        "heldout_loss_at_equal_real_tokens": {
            "real_tokens": {w: r["real_tokens"] for w, r in results.items()},
            **{form: {w: s[form]["loss"] for w, s in scores.items()} for form in heldout},
        },
        "training_loss_at_equal_real_tokens": {"real_tokens": budget,
                                               **{w: _loss_at(r["loss_curve"], budget) for w, r in results.items()}},
    }


def run_pretrain_bench(output_dir: Path, documents: int | None = None, corpora: tuple[str, ...] | None = None,
                       ways: tuple[tuple, ...] = PACKED_WAYS) -> Path:
    """`documents`: how many of each corpus (default: DEFAULT_DOCUMENTS), at most its training split; `ways`:
    raynlp's, as (data.packing, workers, model.document_attention, data.max_document_tokens)."""
    corpora = corpora or tuple(DEFAULT_DOCUMENTS)
    report = {
        "benchmark": "pretrain", "preset": PRESET, "sequence_length": SEQUENCE_LENGTH,
        "guide_rows_per_step": GUIDE_BATCH, "epochs": EPOCHS, "learning_rate": LEARNING_RATE,
        "selection_rate": SELECTION_RATE, "max_selections": MAX_SELECTIONS, "machine": machine(),
        "corpora": {name: _bench_corpus(output_dir, name, documents or DEFAULT_DOCUMENTS[name], ways)
                    for name in corpora},
        "note": "real tokens: the documents' own tokens a step trains on (no [CLS], [SEP], [PAD]); speeds over the "
                "training steps of the passes after the first. Every way trains on the same real tokens a step "
                "(packed: fewer, full windows) and in all (packed: as many steps a pass as that takes); a row per "
                "document fills its rows with padding and repeats the first window of a long document every pass, "
                "where packing goes on into new text. Training losses are over the training batches, averaged "
                "over stretches of steps; held-out losses are the mean over every masked position of the test "
                "split's first documents, the same masked arrays for every way. 2 workers on one machine share "
                "its cores.",
    }
    path = write_report(output_dir, "pretrain", report, _plot)
    for name, figures in report["corpora"].items():
        heldout = figures["heldout_loss_at_equal_real_tokens"]
        logger.info("pretrain bench, %s: real tokens/s ratio %s; held-out loss after %s real tokens: a document a "
                    "row %s, packed %s", name, figures["ratio_to_keras_hub_guide"]["real_tokens_per_second"],
                    heldout["real_tokens"], heldout["a_document_a_row"], heldout["packed"])
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
            result = figures["results"][way]
            x, y = zip(*result["loss_curve"])
            line, = curves.plot(x, y, label=way.replace("_", " "))
            for form, marker in (("a_document_a_row", "o"), ("packed", "s")):
                curves.scatter([result["real_tokens"]], [result["heldout"][form]["loss"]], marker=marker,
                               color=line.get_color(), zorder=3)
        curves.set_xlabel("real tokens trained on")
        curves.set_ylabel("masked-LM loss")
        curves.set_title("training batches; held out at the end: ● a document a row, ■ packed", fontsize=9)
        curves.legend()
    fig.suptitle(f"Masked-LM pretraining of {report['preset']}, equal real tokens a step "
                 f"({report['machine']['cpus']} CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
