import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raynlp.data.corpus import _FileReader, read_corpus
from raynlp.errors import RaynlpError


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def _rows(dataset):
    return sorted(dataset.take_all(), key=lambda r: (r.get("label", -1), r["text"]))


def test_class_folders_get_sorted_label_ids(ray_cluster, tmp_path):
    for label, name, text in [("pos", "a.txt", "great film\n"), ("pos", "b.txt", "loved it"), ("neg", "c.txt", "awful")]:
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / name).write_text(text)
    rows = _rows(read_corpus(tmp_path))
    assert rows == [{"text": "awful", "label": 0}, {"text": "great film", "label": 1}, {"text": "loved it", "label": 1}]


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
    assert _rows(read_corpus(tmp_path / "a.csv")) == [{"text": "bad", "label": 0}, {"text": "good", "label": 1}]
    assert _rows(read_corpus(tmp_path / "p.parquet", text_column="body")) == [
        {"text": "x", "label": 0}, {"text": "y", "label": 1}]
    assert [r["text"] for r in _rows(read_corpus(str(tmp_path / "part-*.jsonl")))] == ["doc 0", "doc 1", "doc 2"]


def test_large_file_streams_in_batches(ray_cluster, tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert read_corpus(path).count() == 5000
    # The reader inside the Ray task yields bounded batches: a file is never held as one list of rows.
    reader = _FileReader("lines", "text", "label", labelled=False, on_bad_file="raise")
    sizes = [len(b) for b in reader(pa.table({"path": [str(path)], "label": [None]}))]
    assert sum(sizes) == 5000 and max(sizes) <= 1024 and len(sizes) == 5


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no files"),
        (lambda d: _write(d / "e.txt", b""), "e.txt is empty"),
        (lambda d: _write(d / "n.csv", b"id,body\n1,hi\n"), "n.csv has no column 'text'"),
        (lambda d: _write(d / "b.txt", b"ok\n\xff\xfebad\n"), "b.txt is not UTF-8"),
        (lambda d: _write(d / "j.jsonl", b"[1, 2]\n"), "line 1 has no field 'text'"),
        (lambda d: _write(d / "x.docx", b"hi"), "cannot tell the format of"),
    ],
)
def test_bad_input_is_named(tmp_path, make, message):
    with pytest.raises(RaynlpError, match=message):
        read_corpus(make(tmp_path))


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
