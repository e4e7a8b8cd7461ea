import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raynlp.data.corpus import CorpusFileError, _FileReader, class_names, read_corpus
from raynlp.errors import RaynlpError


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def _rows(dataset):
    return sorted(dataset.take_all(), key=lambda r: (r.get("label", -1), r["text"]))


def test_class_folders_label_rows_with_the_folder_name(ray_cluster, tmp_path):
    for label, name, text in [("pos", "a.txt", "great film\n"), ("pos", "b.txt", "loved it"), ("neg", "c.txt", "awful")]:
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / name).write_text(text)
    rows = _rows(read_corpus(tmp_path))
    assert rows == [{"text": "awful", "label": "neg"}, {"text": "great film", "label": "pos"},
                    {"text": "loved it", "label": "pos"}]
    assert class_names(tmp_path) == ["neg", "pos"] and class_names(tmp_path / "pos" / "a.txt") is None


def _class_folders(root, per_class: int):
    for label in ("neg", "pos"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            (root / label / f"{i:04d}.txt").write_text(f"{label} document {i}")
    return root


def test_a_shuffle_seed_mixes_sorted_class_folders_the_same_way_every_run(ray_cluster, tmp_path):
    root = _class_folders(tmp_path / "corpus", 300)

    def order(seed):
        dataset = read_corpus(root, shuffle_seed=seed)
        dataset.context.execution_options.preserve_order = True
        return [r["text"] for r in dataset.take_all()]

    listed, first, again, other = order(None), order(0), order(0), order(1)
    assert [t.split()[0] for t in listed] == ["neg"] * 300 + ["pos"] * 300  # as listed: class by class
    assert first == again and first != other and sorted(first) == sorted(listed)
    labels = [t.split()[0] for t in first]
    changes = sum(a != b for a, b in zip(labels, labels[1:]))
    assert changes > 200, changes  # about 300 for a random order, 1 for the listing
    assert {"neg", "pos"} == set(labels[:16])


def test_one_sorted_file_is_mixed_too(ray_cluster, tmp_path):
    path = tmp_path / "sorted.csv"
    path.write_text("label,text\n" + "".join(f"{label},{label} row {i}\n" for label in ("a", "b") for i in range(2000)))
    labels = [r["label"] for r in read_corpus(path, shuffle_seed=3).take_all()]
    assert len(labels) == 4000 and sum(a != b for a, b in zip(labels, labels[1:])) > 1000


def test_small_files_are_read_a_group_per_task(ray_cluster, tmp_path):
    root = _class_folders(tmp_path / "corpus", 300)
    # 600 one-line files: a few read tasks, not one per file (each costs Ray scheduling).
    assert read_corpus(root).materialize().num_blocks() <= 4


@pytest.mark.parametrize(
    "name, content, format, expected",
    [
        ("c.txt", "one\n\ntwo\n three \n", None, ["one", "three", "two"]),
        ("c.txt", "one\nstill one\n\ntwo\n", "paragraphs", ["one still one", "two"]),
        ("c.jsonl", '{"text": "a, b"}\n\n{"text": "c", "x": 1}\n', None, ["a, b", "c"]),
        ("c.csv", 'text\n"multi\nline, quoted"\nplain\n', None, ["multi\nline, quoted", "plain"]),
    ],
)
def test_text_formats(ray_cluster, tmp_path, name, content, format, expected):
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert [r["text"] for r in _rows(read_corpus(tmp_path / name, format=format))] == expected


def test_labelled_csv_parquet_and_globs(ray_cluster, tmp_path):
    (tmp_path / "a.csv").write_text("label,text\n1,good\n0,bad\n")
    pq.write_table(pa.table({"body": ["x", "y"], "label": [0, 1]}), tmp_path / "p.parquet")
    for i in range(3):
        (tmp_path / f"part-{i}.jsonl").write_text(json.dumps({"text": f"doc {i}"}) + "\n")
    assert _rows(read_corpus(tmp_path / "a.csv")) == [{"text": "bad", "label": "0"}, {"text": "good", "label": "1"}]
    assert _rows(read_corpus(tmp_path / "p.parquet", text_column="body")) == [
        {"text": "x", "label": 0}, {"text": "y", "label": 1}]
    assert [r["text"] for r in _rows(read_corpus(str(tmp_path / "part-*.jsonl")))] == ["doc 0", "doc 1", "doc 2"]


def test_large_file_streams_in_batches(ray_cluster, tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert read_corpus(path).count() == 5000
    # The reader inside the Ray task yields bounded batches: a file is never held as one list of rows.
    reader = _FileReader("lines", "text", "label", labelled=False, on_bad_file="raise")
    sizes = [len(b) for b in reader(pa.table({"path": [[str(path)]], "label": [[None]]}))]
    assert sum(sizes) == 5000 and max(sizes) <= 1024 and len(sizes) == 5


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no files"),
        (lambda d: _write(d / "e.txt", b""), "e.txt is empty"),
        (lambda d: _write(d / "n.csv", b"id,body\n1,hi\n"), "n.csv has no column 'text'"),
        (lambda d: _write(d / "b.txt", b"ok\n\xff\xfebad\n"), "b.txt is not UTF-8 .*give its encoding"),
        (lambda d: _write(d / "j.jsonl", b"[1, 2]\n"), "line 1 has no field 'text'"),
        (lambda d: _write(d / "x.docx", b"hi"), "cannot tell the format of"),
    ],
)
def test_bad_input_is_named(tmp_path, make, message):
    with pytest.raises(RaynlpError, match=message):
        read_corpus(make(tmp_path))


def test_an_encoding_reads_a_latin_1_file_that_utf_8_refuses(ray_cluster, tmp_path):
    path = _write(tmp_path / "old.txt", "café crème\nnaïve\n".encode("latin-1"))
    with pytest.raises(CorpusFileError, match="old.txt is not UTF-8"):
        read_corpus(path)
    assert [r["text"] for r in read_corpus(path, encoding="latin-1").take_all()] == ["café crème", "naïve"]
    with pytest.raises(RaynlpError, match="unknown text encoding 'latin-9000'"):
        read_corpus(path, encoding="latin-9000")


def test_non_utf8_past_the_head_is_named_by_the_reader(ray_cluster, tmp_path):
    path = tmp_path / "late.txt"
    path.write_bytes(b"fine line\n" * 10000 + b"\xff broken\n")
    with pytest.raises(Exception, match="late.txt is not UTF-8"):
        read_corpus(path).take_all()


def test_bad_files_can_be_skipped_and_counted(ray_cluster, tmp_path, caplog):
    (tmp_path / "good.txt").write_text("kept\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\n")
    rows = read_corpus(tmp_path, on_bad_file="skip").take_all()
    assert rows == [{"text": "kept"}]
    assert "skipped 2 bad corpus file(s) of 3" in caplog.text


def test_string_and_integer_labels_become_ids_and_names(ray_cluster, tmp_path):
    from raynlp.data.labels import encode_labels, label_names

    (tmp_path / "named.jsonl").write_text("".join(json.dumps({"text": t, "label": label}) + "\n"
                                                  for t, label in [("a", "sports"), ("b", "arts"), ("c", "sports")]))
    (tmp_path / "ids.csv").write_text("label,text\n2,x\n0,y\n")
    named = read_corpus(tmp_path / "named.jsonl")
    assert label_names(named) == ["arts", "sports"]
    assert sorted((r["text"], r["label"]) for r in encode_labels(named, ["arts", "sports"]).take_all()) == [
        ("a", 1), ("b", 0), ("c", 1)]
    ids = read_corpus(tmp_path / "ids.csv")
    assert label_names(ids) is None  # integer ids written as text stay ids
    assert sorted(r["label"] for r in encode_labels(ids, None).take_all()) == [0, 2]
    with pytest.raises(Exception, match="label 'sports' is not one of the labels the model knows \\(arts, news\\)"):
        encode_labels(named, ["arts", "news"]).take_all()


def test_a_corpus_path_that_does_not_exist_is_refused_naming_its_field_and_any_other_passes(
        s3_server, tmp_path, monkeypatch):
    """The check a command makes before it starts Ray: one call on the path's filesystem."""
    import pyarrow.fs

    from raynlp.data.corpus import CorpusPathError, check_corpus_path

    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "a.txt").write_text("a gem of a film\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    s3 = pyarrow.fs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    s3.create_dir("corpora")
    with s3.open_output_stream("corpora/reviews/a.txt") as f:
        f.write(b"a gem of a film\n")
    # A glob matching nothing is left to the read, which names it.
    for path in ["reviews", "~/reviews", str(tmp_path / "reviews" / "a.txt"), "s3://corpora/reviews",
                 "s3://corpora/reviews/a.txt", "nothing/*.txt"]:
        check_corpus_path(path, field="data.train")
    for path in ["reviws", "~/reviws", "s3://corpora/reviws"]:
        with pytest.raises(CorpusPathError, match=rf"^data.train: corpus path {path} does not exist"):
            check_corpus_path(path, field="data.train")
