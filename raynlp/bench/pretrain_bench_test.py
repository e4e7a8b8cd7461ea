"""`raynlp bench pretrain` at a tiny size: the guide's recipe and raynlp packed on 1 worker, both packings (documents
attending to themselves only, and whole documents cut like a row, attending across), on the same documents.

The 2-worker way is left out here (each raynlp run costs tens of seconds of start-up on 2 cores; 2-worker
pretraining is tested in tests/train_test.py). What is checked is what the figures stand on: the real tokens
each way counts a step (recounted here with raynlp's tokenizer) and in all, equal between the ways; the ratios;
training losses that are the mean over the masked positions (both start at ln(vocabulary size), whatever the
share of empty selection slots); and held-out scores of each way's own trained weights on the same masked arrays.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from raynlp.bench.pretrain_bench import (
    BASELINE,
    EPOCHS,
    GUIDE_BATCH,
    POSITION_BUCKETS,
    PRESET,
    ROW_TOKENS,
    SEQUENCE_LENGTH,
    run_pretrain_bench,
)
from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
from raynlp.presets import resolve

pytestmark = pytest.mark.slow  # a benchmark

DOCUMENTS = 480


@pytest.fixture(scope="module")
def report(ray_cluster, tmp_path_factory):
    # A relative output folder, as `raynlp bench pretrain --output runs/bench` passes: the Train workers run in
    # their own working folders and must still write where the driver reads.
    here, base = os.getcwd(), tmp_path_factory.mktemp("bench")
    os.chdir(base)
    try:
        path = run_pretrain_bench(Path("bench"), documents=DOCUMENTS, corpora=("shakespeare",),
                                  ways=(("documents", 1, True, None), ("whole_documents", 1, False, ROW_TOKENS)))
        return json.loads((base / path).read_text()), base / "bench"
    finally:
        os.chdir(here)


def test_real_tokens_speeds_and_losses_of_every_way(report):
    data, folder = report
    shakespeare = data["corpora"]["shakespeare"]
    results = shakespeare["results"]
    assert list(data["corpora"]) == ["shakespeare"]
    ways = {"raynlp_packed_1_worker": ("documents", True, None),
            "raynlp_whole_documents_across_documents_cut_like_a_row_1_worker": ("whole_documents", False, ROW_TOKENS)}
    assert list(results) == [BASELINE, *ways]
    for way, settings in ways.items():
        run = yaml.safe_load((folder / "shakespeare" / "runs" / way / "config.yaml").read_text())
        assert (run["data"]["packing"], run["model"]["document_attention"],
                run["data"]["max_document_tokens"]) == settings
    guide = results[BASELINE]

    # Real tokens a step, recounted: the guide trains on the first whole batches of rows, each cut to
    # [CLS] + 126 tokens + [SEP]; packing fills its windows with every document's tokens.
    tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(resolve(PRESET))
    texts = pq.read_table(folder / "shakespeare" / "shakespeare.parquet")["text"].to_pylist()
    assert len(texts) == DOCUMENTS
    lengths = tokenizer.encode(texts)[1]
    steps = DOCUMENTS // GUIDE_BATCH
    assert guide["steps_per_epoch"] == steps and guide["rows_per_step"] == GUIDE_BATCH
    kept = np.minimum(lengths[: steps * GUIDE_BATCH], SEQUENCE_LENGTH - 2).sum() / steps
    assert guide["real_tokens_per_step"] == pytest.approx(kept, rel=0.01)  # keras-hub's tokenizer counted it
    packings = shakespeare["packing"]
    assert list(packings) == ["documents", f"whole_documents_cut_at_{ROW_TOKENS}"]
    # Every token packed, or (cut like a row) the tokens a row keeps, and the rest counted as cut.
    for packing, cut in zip(packings.values(), (lengths, np.minimum(lengths, ROW_TOKENS))):
        assert packing["documents"] == DOCUMENTS and packing["tokens"] == cut.sum()
        assert packing["tokens_cut"] == lengths.sum() - cut.sum()
    assert packings["documents"]["tokens_cut"] == 0 < packings[f"whole_documents_cut_at_{ROW_TOKENS}"]["tokens_cut"]
    # Short paragraphs: one a row is mostly padding; packed, the windows are full, or (whole documents) padded
    # only where a paragraph would have been split.
    assert packings["documents"]["padding_before"] > 0.5 and packings["documents"]["padding_after"] < 0.01
    assert 0.01 < packings[f"whole_documents_cut_at_{ROW_TOKENS}"]["padding_after"] < 0.3
    for way, packing in zip(ways, packings.values()):
        mode = packing["mode"]
        packed, per_window = results[way], packing["tokens"] / packing["windows"]
        # As many windows a step as hold the guide's real tokens a step, and as many steps as give the guide's
        # real tokens in all (each within half a window, half a step; whole documents plan on the corpus' own
        # order, and train on it shuffled, which packs a little differently).
        assert packed["real_tokens_per_step"] == pytest.approx(packed["rows_per_step"] * per_window, abs=0.1)
        assert packed["rows_per_step"] < GUIDE_BATCH / 2
        # (Whole documents: the plan's windows, of the corpus' own order, may hold fewer tokens than the shuffled
        # ones trained on: within a window.)
        off = per_window * (0.6 if mode == "documents" else 1)
        assert abs(packed["real_tokens_per_step"] - guide["real_tokens_per_step"]) <= off, mode
        assert abs(packed["real_tokens"] - guide["real_tokens"]) <= EPOCHS * packed["real_tokens_per_step"] / 2, mode
        if mode == "documents":  # real tokens as the manifest counts them
            assert packed["steps_per_epoch"] == min(packing["windows"] // packed["rows_per_step"], round(
                guide["real_tokens"] / (EPOCHS * packed["real_tokens_per_step"])))

    ratios = shakespeare["ratio_to_keras_hub_guide"]
    for measure in ("real_tokens_per_second", "real_tokens_per_step"):
        for way, figures in results.items():
            assert figures[measure] > 0 and ratios[measure][way] == pytest.approx(
                figures[measure] / guide[measure], abs=0.006), (measure, way)
    assert ratios["real_tokens_per_step"]["raynlp_packed_1_worker"] == pytest.approx(1, abs=0.07)

    for way, figures in results.items():
        assert len(figures["epoch_train_seconds"]) == len(figures["epoch_losses"]) == EPOCHS, way
        tokens, losses = zip(*figures["loss_curve"])
        assert list(tokens) == sorted(tokens) and tokens[-1] == pytest.approx(
            EPOCHS * figures["steps_per_epoch"] * figures["real_tokens_per_step"], rel=1e-3)
        # The mean over masked positions starts at a uniform guess over the vocabulary, and falls.
        assert losses[0] == pytest.approx(math.log(tokenizer.vocabulary_size), abs=0.5), way
        assert losses[-1] < losses[0] - 1, way
        assert figures["real_tokens"] == tokens[-1], way
    at = shakespeare["training_loss_at_equal_real_tokens"]
    assert at["real_tokens"] == min(r["loss_curve"][-1][0] for r in results.values())
    assert set(at) == {"real_tokens", *results}

    # Held out: every way's trained weights scored on the same masked documents, in both forms; a model whose
    # weights were not loaded would score a uniform guess, ln(vocabulary size).
    heldout = shakespeare["heldout_loss_at_equal_real_tokens"]
    assert heldout["real_tokens"] == {w: r["real_tokens"] for w, r in results.items()}
    for form in ("a_document_a_row", "packed"):
        positions = {r["heldout"][form]["masked_positions"] for r in results.values()}
        assert len(positions) == 1 and positions.pop() > 1000, form
        for way, figures in results.items():
            scores = figures["heldout"][form]
            assert heldout[form][way] == scores["loss"] < math.log(tokenizer.vocabulary_size) - 1, (form, way)
            assert 0 < scores["accuracy"] < 1, (form, way)
            # By position: every bucket of the window, and the whole set's mean lies among its parts.
            parts = scores["loss_by_position"]
            assert list(parts) == [f"{a}-{b}" for a, b in POSITION_BUCKETS] and parts["1-16"] is not None
            known = [v for v in parts.values() if v is not None]
            assert min(known) <= scores["loss"] <= max(known), (form, way, parts)
    assert (folder / "pretrain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
