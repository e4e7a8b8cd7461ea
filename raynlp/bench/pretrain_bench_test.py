"""`raynlp bench pretrain` at a tiny size: the guide's recipe and raynlp packed on 1 worker, on the same documents.

The 2-worker way is left out here (each raynlp run costs tens of seconds of start-up on 2 cores; 2-worker
pretraining is tested in tests/train_test.py). What is checked is what the figures stand on: the real tokens
each way counts a step (recounted here with raynlp's tokenizer), the ratios, and losses that are the mean over
the masked positions (both start at ln(vocabulary size), whatever the share of empty selection slots).
"""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from raynlp.bench.pretrain_bench import BASELINE, EPOCHS, GLOBAL_BATCH, PRESET, SEQUENCE_LENGTH, run_pretrain_bench
from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
from raynlp.presets import resolve

pytestmark = pytest.mark.slow  # a benchmark

DOCUMENTS = 480


@pytest.fixture(scope="module")
def report(ray_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    path = run_pretrain_bench(folder, documents=DOCUMENTS, corpora=("shakespeare",), workers=(1,))
    return json.loads(path.read_text()), folder


def test_real_tokens_speeds_and_losses_of_both_ways(report):
    data, folder = report
    shakespeare = data["corpora"]["shakespeare"]
    results = shakespeare["results"]
    assert list(data["corpora"]) == ["shakespeare"] and list(results) == [BASELINE, "raynlp_packed_1_worker"]
    guide, packed = results[BASELINE], results["raynlp_packed_1_worker"]

    # Real tokens a step, recounted: the guide trains on the first whole batches of rows, each cut to
    # [CLS] + 126 tokens + [SEP]; packing fills its windows with every document's tokens.
    tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(resolve(PRESET))
    texts = pq.read_table(folder / "shakespeare" / "shakespeare.parquet")["text"].to_pylist()
    assert len(texts) == DOCUMENTS
    lengths = tokenizer.encode(texts)[1]
    steps = DOCUMENTS // GLOBAL_BATCH
    assert guide["steps_per_epoch"] == steps
    kept = np.minimum(lengths[: steps * GLOBAL_BATCH], SEQUENCE_LENGTH - 2).sum() / steps
    assert guide["real_tokens_per_step"] == pytest.approx(kept, rel=0.01)  # keras-hub's tokenizer counted it
    packing = shakespeare["packing"]
    assert packing["documents"] == DOCUMENTS and packing["tokens"] == lengths.sum()
    assert packed["real_tokens_per_step"] == pytest.approx(GLOBAL_BATCH * lengths.sum() / packing["windows"], abs=0.1)
    assert packed["steps_per_epoch"] == packing["windows"] // GLOBAL_BATCH
    assert packing["padding_before"] > 0.5 and packing["padding_after"] < 0.01  # short paragraphs, full windows

    ratios = shakespeare["ratio_to_keras_hub_guide"]
    for measure in ("real_tokens_per_second", "real_tokens_per_step"):
        for way, figures in results.items():
            assert figures[measure] > 0 and ratios[measure][way] == pytest.approx(
                figures[measure] / guide[measure], abs=0.006), (measure, way)
    assert ratios["real_tokens_per_step"]["raynlp_packed_1_worker"] > 3

    for way, figures in results.items():
        assert len(figures["epoch_train_seconds"]) == len(figures["epoch_losses"]) == EPOCHS, way
        tokens, losses = zip(*figures["loss_curve"])
        assert list(tokens) == sorted(tokens) and tokens[-1] == pytest.approx(
            EPOCHS * figures["steps_per_epoch"] * figures["real_tokens_per_step"], rel=1e-3)
        # The mean over masked positions starts at a uniform guess over the vocabulary, and falls.
        assert losses[0] == pytest.approx(math.log(tokenizer.vocabulary_size), abs=0.5), way
        assert losses[-1] < losses[0] - 1, way
    at = shakespeare["loss_at_equal_real_tokens"]
    assert at["real_tokens"] == min(r["loss_curve"][-1][0] for r in results.values())
    assert set(at) == {"real_tokens", *results}
    assert (folder / "pretrain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
