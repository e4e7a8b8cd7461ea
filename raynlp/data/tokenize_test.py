import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as arrow_csv
import pyarrow.parquet as pq
import pytest

from raynlp import datasets
from raynlp.cli import main
from raynlp.data import MaskingSettings, tokenize_dataset, write_tokenized
from raynlp.data.config import PACKING_BATCH_ROWS, PACKING_BATCH_ROWS_MAX
from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
from raynlp.data.tokenize import MANIFEST, BertPacker, packing_batch_rows
from raynlp.errors import RaynlpError
from raynlp.presets import resolve

PRESET = "minilm_l6_en_uncased"


@pytest.fixture(scope="module")
def preset_dir():
    return resolve(PRESET)


def _in_row_order(dataset) -> dict[str, np.ndarray]:
    """Every row of `dataset`, ordered by its `row` column here (a Ray Data sort costs seconds of shuffle tasks)."""
    blocks = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    order = np.argsort(np.concatenate([block["row"] for block in blocks]))
    return {key: np.concatenate([block[key] for block in blocks])[order] for key in blocks[0]}


def _texts(name):
    return [t for split in ("train", "test") for t in datasets.read_split(name, split)["text"].to_pylist()]


@pytest.mark.parametrize("name, sequence_length", [
    ("rotten_tomatoes", 128),
    pytest.param("movie_reviews", 512, marks=pytest.mark.slow),  # keras-hub's preprocessor over 1,500 full reviews
])
def test_packed_arrays_equal_keras_hub_on_real_text(preset_dir, name, sequence_length):
    import keras_hub

    texts = _texts(name)
    reference = keras_hub.models.BertTextClassifierPreprocessor.from_preset(preset_dir, sequence_length=sequence_length)
    fast = FastWordPieceTokenizer.from_keras_hub_preset_dir(preset_dir)
    differing = []
    for start in range(0, len(texts), 500):
        chunk = texts[start : start + 500]
        ours = fast.pack(chunk, sequence_length=sequence_length)
        theirs = {k: np.asarray(v) for k, v in reference(chunk).items()}
        same = np.ones(len(chunk), bool)
        for key in ("token_ids", "segment_ids", "padding_mask"):
            assert ours[key].dtype == theirs[key].dtype, key
            same &= (ours[key] == theirs[key]).all(axis=1)
        differing += [chunk[i] for i in np.flatnonzero(~same)]
    # The tokenizer replicates keras-hub's normalisation exactly (see fast_tokenizer.py): no row may differ.
    assert differing == [], f"{len(differing)} of {len(texts)} rows differ, e.g. {differing[:2]}"


@pytest.mark.parametrize("num_actors", [2, 0], ids=["actor pool", "tasks"])
def test_ray_data_pipeline_equals_one_process(ray_cluster, preset_dir, num_actors):
    import ray.data

    texts = datasets.read_split("rotten_tomatoes", "test")["text"].to_pylist()
    source = ray.data.from_items([{"text": t, "label": i % 2, "row": i, "b": texts[-1 - i]}
                                  for i, t in enumerate(texts)], override_num_blocks=8)
    packed = tokenize_dataset(source.drop_columns(["b"]), PRESET, sequence_length=64, num_actors=num_actors,
                              batch_size=100)
    batch = _in_row_order(packed)
    fast = FastWordPieceTokenizer.from_keras_hub_preset_dir(preset_dir)
    expected = fast.pack(texts, sequence_length=64)
    # Stored compact: ids in int16 (30,522 of them), the mask in bool, and no segment ids for one segment.
    assert set(batch) == {"token_ids", "padding_mask", "label", "row"}
    assert (batch["token_ids"].dtype, batch["padding_mask"].dtype) == (np.int16, np.bool_)
    assert not expected.pop("segment_ids").any()
    for key, value in expected.items():
        np.testing.assert_array_equal(batch[key], value)
    np.testing.assert_array_equal(batch["label"], np.arange(len(texts)) % 2)
    # Pairs keep their segment ids, in int8.
    pairs = _in_row_order(tokenize_dataset(source, PRESET, sequence_length=64, pair_column="b",
                                           num_actors=num_actors, batch_size=100))
    expected = fast.pack(texts, texts[::-1], sequence_length=64)
    assert pairs["segment_ids"].dtype == np.int8 and expected["segment_ids"].any()
    for key, value in expected.items():
        np.testing.assert_array_equal(pairs[key], value)


def test_calls_grow_with_a_known_split_and_stay_small_for_an_unknown_one():
    assert packing_batch_rows(None) == PACKING_BATCH_ROWS  # files being read: Ray Data bundles files up to a call
    assert packing_batch_rows(1_000) == PACKING_BATCH_ROWS
    assert packing_batch_rows(20_000, 0) == packing_batch_rows(20_000, 2) == 2_500  # four calls a worker
    assert packing_batch_rows(10_000_000, 2) == PACKING_BATCH_ROWS_MAX


def test_a_large_masked_call_draws_its_masks_a_small_batch_at_a_time(preset_dir):
    # Masks (and the draw's temporaries) are a PACKING_BATCH_ROWS slice's, whatever the size of the call.
    texts = np.array(_texts("rotten_tomatoes")[: 2 * PACKING_BATCH_ROWS + 40], dtype=object)
    packer = BertPacker(PRESET, 64, masking=MaskingSettings(max_selections=10), mask_seed=5)
    whole = packer({"text": texts})
    parts = [packer({"text": texts[i : i + PACKING_BATCH_ROWS]}) for i in range(0, len(texts), PACKING_BATCH_ROWS)]
    assert set(whole) == {"token_ids", "padding_mask", "mask_positions", "mask_ids", "mask_weights"}
    for key, value in whole.items():
        assert len(value) == len(texts), key
        np.testing.assert_array_equal(value, np.concatenate([part[key] for part in parts]), err_msg=key)


@pytest.mark.slow  # an actor pool and a task pool over 200 full reviews, then keras-hub's contract row by row
def test_masked_lm_on_ray_data_keeps_the_contract(ray_cluster, preset_dir):
    import ray.data

    texts = datasets.read_split("movie_reviews", "test")["text"].to_pylist()[:200]
    source = ray.data.from_items([{"text": t, "row": i} for i, t in enumerate(texts)], override_num_blocks=4)
    masking, seed = MaskingSettings(max_selections=20), 3
    masked = tokenize_dataset(source, PRESET, sequence_length=128, masking=masking, mask_seed=seed, num_actors=1,
                              batch_size=50)
    batch = _in_row_order(masked)
    # Packed in tasks instead of an actor, the masks come out the same: they are seeded by each batch's content.
    in_tasks = tokenize_dataset(source, PRESET, sequence_length=128, masking=masking, mask_seed=seed,
                                num_actors=0, batch_size=50)
    for key, value in _in_row_order(in_tasks).items():
        np.testing.assert_array_equal(value, batch[key])
    tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(preset_dir)
    original = tokenizer.pack(texts, sequence_length=128)["token_ids"]
    rows = np.arange(len(texts))[:, None]
    selected = batch["mask_weights"] > 0
    # Labels are the original ids at the masked positions; weights mark the real selections.
    np.testing.assert_array_equal(np.where(selected, original[rows, batch["mask_positions"]], 0),
                                  np.where(selected, batch["mask_ids"], 0))
    special = np.isin(original[rows, batch["mask_positions"]],
                      [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id])
    assert not (special & selected).any()
    assert selected.sum(axis=1).max() == 20  # long reviews hit max_selections
    changed = batch["token_ids"] != original
    assert changed.sum() <= selected.sum() and changed.sum() > 0.7 * selected.sum()


def _slower_first(batch):
    import time

    time.sleep(0.5 if batch["row"][0] < 50 else 0.0)  # the first blocks finish last
    return batch


def test_written_shards_keep_the_input_order_whatever_the_timing(ray_cluster, tmp_path):
    import ray.data

    texts = datasets.read_split("rotten_tomatoes", "test")["text"].to_pylist()[:200]
    source = ray.data.from_items([{"text": t, "row": i} for i, t in enumerate(texts)], override_num_blocks=8)
    # A stage of its own (its own CPU ask keeps Ray from fusing it with packing), whose first blocks finish last.
    slowed = source.map_batches(_slower_first, batch_size=None, num_cpus=0.5)
    packed = tokenize_dataset(slowed, PRESET, sequence_length=32, num_actors=0, batch_size=100)
    manifest = write_tokenized(packed, str(tmp_path / "out"), preset=PRESET, sequence_length=32)
    # Trainers read the folder as Ray Data lists it: file names sorted.
    rows = np.concatenate([pq.read_table(f)["row"].to_numpy() for f in sorted((tmp_path / "out").glob("*.parquet"))])
    assert manifest["rows"] == 200
    np.testing.assert_array_equal(rows, np.arange(200))


def test_tokenize_cli_writes_shards_and_manifest(ray_cluster, tmp_path, capsys):
    out = tmp_path / "rt"
    assert main(["tokenize", "--preset", PRESET, "--dataset", "rotten_tomatoes", "--split", "test",
                 "--output", str(out), "--sequence-length", "32", "--mlm", "--max-selections", "5"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["rows"] == 800 and manifest["masking"]["max_selections"] == 5
    # The folder is a plain Parquet data set: any Parquet reader takes it whole, raynlp's manifest beside the shards.
    table = pq.read_table(out)
    assert table.num_rows == 800
    assert set(table.column_names) == {"token_ids", "padding_mask", "label", "mask_positions", "mask_ids",
                                       "mask_weights"}
    stored = {f.name: f.type.storage_type.value_type for f in table.schema if isinstance(f.type, pa.ExtensionType)}
    assert stored == {"token_ids": pa.int16(), "padding_mask": pa.bool_(), "mask_positions": pa.int16(),
                      "mask_ids": pa.int16(), "mask_weights": pa.float32()}
    assert "800 rows" in capsys.readouterr().out
    # The same folder again is refused: it holds another run's shards.
    assert main(["tokenize", "--preset", PRESET, "--dataset", "rotten_tomatoes", "--output", str(out)]) == 2


def test_tokenize_cli_packs_sentence_pairs_from_each_table_format(ray_cluster, preset_dir, tmp_path, capsys):
    """`--pair-column` reads a second text a row from csv, jsonl and parquet (named columns, string labels) and
    writes the pairs as keras-hub packs them, segment ids included; where rows have one text, it is refused."""
    from raynlp._internal.ray_data import read_parquet

    texts = datasets.read_split("rotten_tomatoes", "test")["text"].to_pylist()[:120]
    rows = {"premise": texts, "hypothesis": texts[::-1],
            "label": ["neutral" if i % 3 else "entailment" for i in range(len(texts))]}
    table = pa.table(rows)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(dict(zip(rows, r))) + "\n" for r in zip(*rows.values())))
    arrow_csv.write_csv(table, tmp_path / "pairs.csv")
    pq.write_table(table, tmp_path / "pairs.parquet")
    expected = FastWordPieceTokenizer.from_keras_hub_preset_dir(preset_dir).pack(texts, texts[::-1],
                                                                                 sequence_length=48)
    assert expected["segment_ids"].any()
    for suffix in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"tokens_{suffix}"
        assert main(["tokenize", "--preset", PRESET, "--input", str(tmp_path / f"pairs.{suffix}"),
                     "--text-column", "premise", "--pair-column", "hypothesis", "--num-actors", "0",
                     "--sequence-length", "48", "--output", str(out)]) == 0, suffix
        assert "labels 0 entailment, 1 neutral" in capsys.readouterr().out
        batch = read_parquet(str(out)).take_batch(len(texts), batch_format="numpy")
        assert batch["segment_ids"].dtype == np.int8, suffix
        for key, value in expected.items():
            np.testing.assert_array_equal(batch[key], value, err_msg=f"{suffix} {key}")
        np.testing.assert_array_equal(batch["label"], [int(label == "neutral") for label in rows["label"]])
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(texts))
    for source in (["--input", str(lines)], ["--dataset", "rotten_tomatoes"]):
        assert main(["tokenize", "--preset", PRESET, *source, "--pair-column", "hypothesis",
                     "--output", str(tmp_path / "refused")]) == 2
        assert "second text column ('hypothesis')" in capsys.readouterr().err.strip().splitlines()[-1]
    # A file without the column: named, with the columns it has and this command's way to go on.
    assert main(["tokenize", "--preset", PRESET, "--input", str(tmp_path / "pairs.csv"), "--text-column",
                 "premise", "--pair-column", "second", "--output", str(tmp_path / "refused")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"raynlp: error: corpus file {tmp_path / 'pairs.csv'} has no column 'second' in its header (columns: premise, "
        "hypothesis, label) (--skip-bad-files to leave such files out)")
    assert main(["tokenize", "--preset", PRESET, "--input", str(tmp_path / "pairs.jsonl"), "--text-column",
                 "premise", "--pair-column", "label", "--output", str(tmp_path / "refused")]) == 2
    assert "another column than the text and the label" in capsys.readouterr().err


def test_bad_input_is_refused_with_one_line(ray_cluster, tmp_path, capsys):
    import ray.data

    source = ray.data.from_items([{"body": "x"}])
    with pytest.raises(RaynlpError, match="no column 'text'"):
        tokenize_dataset(source, PRESET)
    with pytest.raises(RaynlpError, match="sequence_length 1024 is outside 3..512"):
        tokenize_dataset(ray.data.from_items([{"text": "x"}]), PRESET, sequence_length=1024)
    assert main(["tokenize", "--preset", "nope", "--dataset", "rotten_tomatoes", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("raynlp: error: unknown preset 'nope'")


@pytest.mark.parametrize("flags, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--sequence-length", "1024"], f"sequence_length 1024 is outside 3..512 for preset {PRESET}"),
    (["--output", "{used}"], "output folder {used} is not empty; choose a new folder or delete it"),
], ids=["preset", "sequence length", "output"])
def test_tokenize_refuses_its_preset_and_output_before_ray_starts(tmp_path, flags, message):
    import subprocess
    import sys

    (tmp_path / "reviews.txt").write_text("a gem of a film\n")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    argv = ["--preset", PRESET, "--input", str(tmp_path / "reviews.txt"), "--output", str(tmp_path / "out"),
            *[flag.format(used=tmp_path / "used") for flag in flags]]
    done = subprocess.run([sys.executable, "-m", "raynlp.cli", "tokenize", *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"raynlp: error: {message.format(used=tmp_path / 'used')}")
    assert "Ray" not in done.stderr and not (tmp_path / "out").exists()
