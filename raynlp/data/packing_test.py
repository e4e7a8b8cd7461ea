"""Tests for raynlp.data.packing: no token lost or duplicated, every window full but the last (or, packing whole
documents, no document split that fits in a window), on Ray Data too."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raynlp import datasets
from raynlp.data.packing import DocumentPacker, WholeDocumentPacker, tokenize_documents, write_packed

CLS, SEP, PAD = 101, 102, 0
SPECIAL = [CLS, SEP, PAD]


def _documents(count: int, seed: int = 0) -> list[np.ndarray]:
    """Token ids of `count` documents: empty ones, short ones and a few longer than three windows of 16."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice([0, 1, 3, 9, 14, 15, 40, 60], size=count)
    return [rng.integers(1000, 30000, size=n).astype(np.int32) for n in lengths]


def _stream(documents: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.append(d, SEP) for d in documents if d.size]).astype(np.int32)


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The windows and first positions of a packer's calls, in order."""
    return np.concatenate([w for w, _ in parts]), np.concatenate([f for _, f in parts])


def _check_first_positions(windows: np.ndarray, firsts: np.ndarray, documents: list[np.ndarray]) -> None:
    """Read each document by itself (`document_positions` with the packer's first positions), every document
    token sits where it does in the document's own row: its k-th token at position k, in whichever window."""
    from raynlp.data.packing import document_positions

    assert firsts.dtype == np.int32 and firsts.shape == (len(windows),)
    positions = document_positions(windows, sep_id=SEP, pad_id=PAD, first_positions=firsts)["position_ids"]
    np.testing.assert_array_equal(positions[~np.isin(windows, SPECIAL)],
                                  np.concatenate([np.arange(1, d.size + 1) for d in documents]))
    assert (firsts > 1).any()  # some window goes on with a document


def _check_windows(windows: np.ndarray, documents: list[np.ndarray], length: int) -> None:
    assert windows.dtype == np.int32 and windows.shape[1] == length
    assert (windows[:, 0] == CLS).all()
    # Every window but the last is full: no padding, closed by [SEP].
    assert not (windows[:-1] == PAD).any() and (windows[:-1, -1] == SEP).all()
    last = windows[-1]
    real = np.flatnonzero(last != PAD)
    assert (last[real[-1] + 1:] == PAD).all() and last[real[-1]] == SEP
    # The documents' tokens, joined, in order: none lost, none twice, a long document going on in the next window.
    tokens = windows[~np.isin(windows, SPECIAL)]
    np.testing.assert_array_equal(tokens, np.concatenate(documents))
    # Each non-empty document closed by its [SEP] (besides each window's own closing one).
    # Each non-empty document closed by its [SEP], besides each window's closing one (the frame closes the last
    # document itself when its [SEP] alone would be left for a window of its own).
    assert (windows == SEP).sum() - len(windows) in {closed := sum(1 for d in documents if d.size), closed - 1}


@pytest.mark.parametrize("batch", [1, 7, 1000], ids=["a document a call", "seven a call", "all at once"])
def test_windows_hold_every_token_in_order_and_all_are_full_but_the_last(batch):
    documents, length = _documents(300), 16
    packer = DocumentPacker(length, CLS, SEP, PAD)
    parts = [packer.add(_stream(documents[i : i + batch])) if any(d.size for d in documents[i : i + batch])
             else (np.zeros((0, length), np.int32), np.zeros(0, np.int32)) for i in range(0, len(documents), batch)]
    windows, firsts = _joined([*parts, packer.finish()])
    _check_windows(windows, documents, length)
    _check_first_positions(windows, firsts, documents)
    assert packer.finish()[0].shape == (0, length)  # nothing is left, nothing comes twice
    # However the documents come in batches, the windows are the same.
    whole = DocumentPacker(length, CLS, SEP, PAD)
    again = _joined([whole.add(_stream(documents)), whole.finish()])
    np.testing.assert_array_equal(windows, again[0])
    np.testing.assert_array_equal(firsts, again[1])


def test_a_stream_that_fills_its_last_window_leaves_no_padded_window():
    packer = DocumentPacker(6, CLS, SEP, PAD)
    windows, firsts = packer.add(np.array([5, 6, 7, SEP, 8, 9, 10, SEP], np.int32))
    assert windows.tolist() == [[CLS, 5, 6, 7, SEP, SEP], [CLS, 8, 9, 10, SEP, SEP]]
    assert firsts.tolist() == [1, 1]
    assert packer.finish()[0].shape == (0, 6)
    # A last document that ends a window leaves only its [SEP]: no window of [CLS] [SEP] [SEP] for it.
    assert packer.add(np.array([5, 6, 7, 8, SEP], np.int32))[0].tolist() == [[CLS, 5, 6, 7, 8, SEP]]
    assert packer.finish()[0].shape == (0, 6)
    assert packer.add(np.array([5, SEP], np.int32))[0].shape == (0, 6)
    assert packer.finish()[0].tolist() == [[CLS, 5, SEP, SEP, PAD, PAD]]
    # A document that goes on in the next window goes on at its own place.
    windows, firsts = packer.add(np.array([1, 2, 3, 4, 5, 6, SEP, 7, 8, SEP, 9, 10, 11, 12, 13], np.int32))
    assert windows.tolist() == [[CLS, 1, 2, 3, 4, SEP], [CLS, 5, 6, SEP, 7, SEP], [CLS, 8, SEP, 9, 10, SEP]]
    assert firsts.tolist() == [1, 5, 2]
    windows, firsts = packer.finish()
    assert windows.tolist() == [[CLS, 11, 12, 13, SEP, PAD]] and firsts.tolist() == [3]


def _check_whole_document_windows(windows: np.ndarray, documents: list[np.ndarray], length: int) -> None:
    """`data.packing: whole_documents`: every token once, in order; a document that fits in a window lies whole in
    one, right after [CLS] or a [SEP]; a longer one starts a window; a window is padded only where the document
    after it would not fit in the rest."""
    assert windows.dtype == np.int32 and windows.shape[1] == length and (windows[:, 0] == CLS).all()
    real = windows != PAD
    used = real.sum(axis=1)
    assert (real == (np.arange(length) < used[:, None])).all()  # padding only at the end
    assert (windows[np.arange(len(windows)), used - 1] == SEP).all()  # after a [SEP]
    at = np.argwhere(~np.isin(windows, SPECIAL))  # (window, position) of every document token, in order
    np.testing.assert_array_equal(windows[~np.isin(windows, SPECIAL)], np.concatenate(documents))
    firsts, start = [], 0
    for document in (d for d in documents if d.size):
        where = at[start : start + document.size]
        window, first = where[0]
        firsts.append((window, first, document.size))
        if document.size <= length - 2:
            assert (where[:, 0] == window).all() and (np.diff(where[:, 1]) == 1).all()
            assert windows[window, first - 1] in (CLS, SEP) and windows[window, where[-1, 1] + 1] == SEP
        else:
            assert first == 1
        start += document.size
    # Greedy: a padded window's next window starts with a document longer than its padding (with its [SEP]).
    starting = {window: size for window, first, size in firsts if first == 1}
    for window in np.flatnonzero(used[:-1] < length):
        assert window + 1 in starting and starting[window + 1] + 1 > length - used[window]


@pytest.mark.parametrize("batch", [1, 7, 1000], ids=["a document a call", "seven a call", "all at once"])
def test_whole_document_windows_split_only_the_documents_longer_than_a_window(batch):
    documents, length = _documents(300, seed=1), 16
    kept = [d for d in documents if d.size]
    packer = WholeDocumentPacker(length, CLS, SEP, PAD)
    parts = [packer.add(_stream(kept[i : i + batch]), np.array([d.size for d in kept[i : i + batch]]))
             for i in range(0, len(kept), batch)]
    windows, firsts = _joined([*parts, packer.finish()])
    _check_whole_document_windows(windows, documents, length)
    _check_first_positions(windows, firsts, documents)
    assert packer.finish()[0].shape == (0, length)
    whole = WholeDocumentPacker(length, CLS, SEP, PAD)
    again = _joined([whole.add(_stream(kept), np.array([d.size for d in kept])), whole.finish()])
    np.testing.assert_array_equal(windows, again[0])
    np.testing.assert_array_equal(firsts, again[1])
    # Some padding, where a document would have been split.
    assert 0 < (windows == PAD).mean() < 0.5


def test_whole_documents_start_the_next_window_when_the_rest_is_too_short():
    packer = WholeDocumentPacker(6, CLS, SEP, PAD)
    documents = [np.array(d, np.int32) for d in ([5, 6], [7, 8, 9], [1, 2, 3, 4, 5, 6], [8])]
    windows, firsts = _joined([packer.add(_stream(documents), np.array([d.size for d in documents])),
                               packer.finish()])
    assert windows.tolist() == [[CLS, 5, 6, SEP, PAD, PAD], [CLS, 7, 8, 9, SEP, PAD], [CLS, 1, 2, 3, 4, SEP],
                                [CLS, 5, 6, SEP, 8, SEP]]
    assert firsts.tolist() == [1, 1, 1, 5]  # the long document's last part goes on at its fifth token


@pytest.fixture(scope="module")
def reviews():
    """Real documents of very different lengths: full movie reviews and one-sentence reviews, interleaved."""
    long = datasets.read_split("movie_reviews", "train")["text"].to_pylist()[:60]
    short = datasets.read_split("rotten_tomatoes", "train")["text"].to_pylist()[:240]
    return [text for pair in zip(short[::4], short[1::4], short[2::4], short[3::4], long) for text in pair]


def test_packing_on_ray_data_loses_no_token_and_reports_its_padding(ray_cluster, reviews, tmp_path):
    """Tokenized in Ray tasks a batch of 32 documents at a time, packed in order across the batches into shards
    of 64 windows: the shards, read by plain pyarrow, hold every token of the documents in order."""
    import ray.data

    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
    from raynlp.presets import resolve

    preset = "bert_tiny_en_uncased_scratch"
    tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(resolve(preset))
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (CLS, SEP, PAD)
    dataset = ray.data.from_items([{"text": t} for t in reviews], override_num_blocks=6)
    streams = tokenize_documents(dataset, preset, batch_size=32)
    folder = tmp_path / "packed"
    manifest = write_packed(streams, str(folder), preset=preset, sequence_length=128, shard_windows=64)

    table = pq.read_table(folder)  # a Parquet data set any tool reads; the manifest starts with "_"
    windows = np.stack(table["token_ids"].to_numpy(zero_copy_only=False)).astype(np.int32)
    documents = [np.asarray(ids, np.int32) for ids in tokenizer.tokenize(reviews)]
    _check_windows(windows, documents, 128)
    firsts = table["first_position"].to_numpy()
    _check_first_positions(windows, firsts, documents)
    assert manifest["rows"] == len(windows) and manifest["shards"] == -(-len(windows) // 64) > 1
    assert json.loads((folder / "_raynlp_tokenized.json").read_text()) == manifest
    np.testing.assert_array_equal(np.stack(table["padding_mask"].to_numpy(zero_copy_only=False)), windows != PAD)
    packing = manifest["packing"]
    assert packing["documents"] == len(reviews) and packing["tokens"] == sum(d.size for d in documents)
    assert packing["windows"] == len(windows)
    assert packing["padding_after"] == round(float((windows == PAD).mean()), 4) < 1 / len(windows)
    # One row a document: the short reviews mostly padding, the long ones cut.
    one_row_each = tokenizer.pack(reviews, sequence_length=128)["token_ids"]
    assert packing["padding_before"] == round(float((one_row_each == PAD).mean()), 4) > 0.3
    assert packing["tokens_lost_unpacked"] == sum(max(d.size - 126, 0) for d in documents) > 0
    # A training split's windows are written shuffled within each shard (seeded): the same windows.
    shuffled = write_packed(streams, str(tmp_path / "shuffled"), preset=preset, sequence_length=128, shard_windows=64,
                            shuffle_seed=3)
    table = pq.read_table(tmp_path / "shuffled")
    again = np.stack(table["token_ids"].to_numpy(zero_copy_only=False)).astype(np.int32)
    assert shuffled["rows"] == len(windows) and not np.array_equal(again, windows)
    # Each window keeps its first position.
    rows, rows_again = np.column_stack([windows, firsts]), np.column_stack([again, table["first_position"].to_numpy()])
    np.testing.assert_array_equal(np.sort(rows_again.view([("", rows_again.dtype)] * 129), axis=0),
                                  np.sort(rows.view([("", rows.dtype)] * 129), axis=0))


def test_documents_cut_to_their_first_tokens_pack_those_tokens_and_count_the_rest(ray_cluster, reviews, tmp_path):
    """`data.max_document_tokens`: each review's first 20 tokens, in order, and the manifest counts what was cut."""
    import ray.data

    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
    from raynlp.presets import resolve

    preset = "bert_tiny_en_uncased_scratch"
    tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(resolve(preset))
    texts = ["", *reviews[:40]]  # an empty document too
    dataset = ray.data.from_items([{"text": t} for t in texts], override_num_blocks=3)
    manifest = write_packed(tokenize_documents(dataset, preset, max_tokens=20, batch_size=16), str(tmp_path / "cut"),
                            preset=preset, sequence_length=64, mode="whole_documents")
    windows = np.stack(pq.read_table(tmp_path / "cut")["token_ids"].to_numpy(zero_copy_only=False))
    documents = [np.asarray(ids, np.int32) for ids in tokenizer.tokenize(texts)]
    np.testing.assert_array_equal(windows[~np.isin(windows, SPECIAL)], np.concatenate([d[:20] for d in documents]))
    assert (windows == SEP).sum() == len(reviews[:40])  # each document closed once: none split across windows
    packing = manifest["packing"]
    assert packing["tokens"] == sum(min(d.size, 20) for d in documents)
    assert packing["tokens_cut"] == sum(max(d.size - 20, 0) for d in documents) > 0


def test_static_masking_masks_the_packed_windows_once(ray_cluster, reviews, tmp_path):
    """`model.masking.dynamic: false`: the shards carry the masks, the labels being the windows' own tokens."""
    import ray.data

    from raynlp.data.config import MaskingSettings

    preset, masking = "bert_tiny_en_uncased_scratch", MaskingSettings(dynamic=False, max_selections=24)
    dataset = ray.data.from_items([{"text": t} for t in reviews[:100]])
    plain = write_packed(tokenize_documents(dataset, preset), str(tmp_path / "plain"), preset=preset,
                         sequence_length=64)
    masked = write_packed(tokenize_documents(dataset, preset), str(tmp_path / "masked"), preset=preset,
                          sequence_length=64, masking=masking, mask_seed=5)
    assert plain["masking"] is None and masked["masking"]["seed"] == 5 and masked["rows"] == plain["rows"]
    windows = np.stack(pq.read_table(tmp_path / "plain")["token_ids"].to_numpy(zero_copy_only=False))
    table = pq.read_table(tmp_path / "masked")
    columns = {name: np.stack(table[name].to_numpy(zero_copy_only=False)) for name in table.column_names}
    positions, weights = columns["mask_positions"], columns["mask_weights"] == 1
    assert columns["mask_ids"].shape == (len(windows), 24)
    assert abs(weights.sum() / (62 * len(windows)) - 0.15) < 0.02  # of the 62 tokens a full window holds
    np.testing.assert_array_equal(np.take_along_axis(windows, positions, axis=1)[weights], columns["mask_ids"][weights])
    assert (columns["token_ids"] != windows).any() and columns["padding_mask"].tolist() == (windows != PAD).tolist()


def test_a_users_folder_of_latin_1_files_with_an_empty_one_packs_every_token(ray_cluster, reviews, tmp_path):
    """A user's pretraining corpus: text files in sorted order, paragraphs as documents, Latin-1, one empty file
    left out; the windows hold every token of the documents as the corpus reads them, in order."""
    from raynlp.data.corpus import read_corpus
    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
    from raynlp.presets import resolve

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "01_reviews.txt").write_bytes("\n\n".join(reviews[:40]).replace("the", "thé").encode("latin-1", "replace"))
    (folder / "02_more.txt").write_bytes("\n\n".join(reviews[40:80]).encode("latin-1", "replace"))
    (folder / "03_empty.txt").write_bytes(b"")
    corpus = read_corpus(folder, format="paragraphs", encoding="latin-1", on_bad_file="skip")
    texts = [row["text"] for row in corpus.take_all()]
    assert len(texts) == 80 and "thé" in texts[0]
    preset = "bert_tiny_en_uncased_scratch"
    write_packed(tokenize_documents(corpus, preset, batch_size=16), str(tmp_path / "packed"), preset=preset,
                 sequence_length=64, shard_windows=32)
    table = pq.read_table(tmp_path / "packed")
    windows = np.stack(table["token_ids"].to_numpy(zero_copy_only=False)).astype(np.int32)
    tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(resolve(preset))
    documents = [np.asarray(t, np.int32) for t in tokenizer.tokenize(texts)]
    _check_windows(windows, documents, 64)
    _check_first_positions(windows, table["first_position"].to_numpy(), documents)


def test_document_positions_count_from_each_documents_start():
    from raynlp.data.packing import document_positions

    cls, sep, pad = 2, 3, 0
    windows = np.array([[cls, 7, 8, sep, 9, sep, 5, 6],  # ends within a document, which the next window goes on
                        [cls, 6, sep, 4, 4, sep, pad, pad]])
    found = document_positions(windows, sep_id=sep, pad_id=pad)
    assert found["document_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, -1, -1]]
    assert found["position_ids"].tolist() == [[0, 1, 2, 3, 1, 2, 1, 2], [0, 1, 2, 1, 2, 3, 1, 2]]
    assert found["document_ids"].dtype == found["position_ids"].dtype == np.int32
    # With the packer's first positions the second window goes on with the first one's last document; one that
    # would pass the position table (here 10 places) ends at its last place.
    on = document_positions(windows, sep_id=sep, pad_id=pad, first_positions=np.array([1, 3]))
    assert on["position_ids"].tolist() == [[0, 1, 2, 3, 1, 2, 1, 2], [0, 3, 4, 1, 2, 3, 1, 2]]
    assert on["document_ids"].tolist() == found["document_ids"].tolist()
    far = document_positions(windows, sep_id=sep, pad_id=pad, first_positions=np.array([1, 30]), max_position=10)
    assert far["position_ids"].tolist() == [[0, 1, 2, 3, 1, 2, 1, 2], [0, 8, 9, 1, 2, 3, 1, 2]]
