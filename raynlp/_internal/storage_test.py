from raynlp._internal import storage


def test_a_folder_is_empty_when_missing_or_bare_and_a_file_in_its_place_is_not(tmp_path):
    folder = tmp_path / "out"
    assert storage.is_empty(folder)
    folder.mkdir()
    assert storage.is_empty(folder)
    (folder / "part-0.parquet").write_text("rows")
    assert not storage.is_empty(folder)
    assert not storage.is_empty(folder / "part-0.parquet")  # e.g. `predict --output` naming an existing file


def test_delete_contents_keeps_the_folder_locally_and_on_object_storage(s3_server, tmp_path):
    import pyarrow.fs

    folder = tmp_path / "run"
    (folder / "data" / "train").mkdir(parents=True)
    (folder / "data" / "train" / "part-0.parquet").write_text("rows")
    (folder / "raynlp_run.json").write_text("{}")
    storage.delete_contents(folder)
    assert folder.is_dir() and not any(folder.iterdir())
    s3 = pyarrow.fs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    s3.create_dir("runs")
    for name in ("keep.txt", "run/raynlp_run.json", "run/data/train/part-0.parquet"):
        with s3.open_output_stream(f"runs/{name}") as f:
            f.write(b"x")
    storage.delete_contents("s3://runs/run")
    assert storage.is_empty("s3://runs/run") and storage.exists("s3://runs/keep.txt")
    storage.delete_contents(tmp_path / "missing")  # nothing to do
