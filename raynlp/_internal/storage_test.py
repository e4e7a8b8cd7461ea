from raynlp._internal import storage


def test_a_folder_is_empty_when_missing_or_bare_and_a_file_in_its_place_is_not(tmp_path):
    folder = tmp_path / "out"
    assert storage.is_empty(folder)
    folder.mkdir()
    assert storage.is_empty(folder)
    (folder / "part-0.parquet").write_text("rows")
    assert not storage.is_empty(folder)
    assert not storage.is_empty(folder / "part-0.parquet")  # e.g. `predict --output` naming an existing file
