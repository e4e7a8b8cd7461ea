"""Training outputs on object storage, end to end, against a real S3-compatible server (moto) on 127.0.0.1.

A run whose `run.output` is `s3://…` must leave there what a local run leaves in its folder (tokenized data, Ray
Train's checkpoints, the exported preset, metrics, config); the preset must load from its URI in any process;
the same command run again must resume from the checkpoint in the bucket; and a URI that cannot be used must be
refused before Ray starts. pyarrow, and so Ray Data and Ray Train, reach the server through `AWS_ENDPOINT_URL`.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raynlp._internal import storage
from raynlp.errors import RaynlpError
from raynlp.train import load_config, train

REPO = Path(__file__).resolve().parents[1]
BUCKET = "raynlp-test"
TINY = ["preset=bert_tiny_en_uncased_scratch", "data.max_train_rows=64", "data.max_test_rows=32",
        "data.sequence_length=32", "data.tokenizer_actors=1", "train.batch_size=16", "scaling.num_workers=1"]
REVIEWS = [("a gem of a film, warm and funny", 1), ("dull, long and pointless", 0),
           ("the best thing i have seen all year", 1), ("a mess from start to finish", 0)]


@pytest.fixture(scope="module")
def s3(s3_server):
    """The session's S3 server (conftest.py) holding an empty bucket, and the environment that reaches it."""
    import pyarrow.fs

    pyarrow.fs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(BUCKET)
    return s3_server


def raynlp(env: dict, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process with the storage settings in its environment."""
    return subprocess.run([sys.executable, "-m", "raynlp.cli", *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=420)


def finetune(env: dict, output: str, *overrides: str) -> subprocess.CompletedProcess:
    sets = [item for o in [*TINY, *overrides, f"run.output={output}"] for item in ("--set", o)]
    return raynlp(env, "finetune", "--config", "configs/finetune.yaml", *sets)


def listing(uri: str) -> list[str]:
    """Every file under `uri`, relative to it."""
    import pyarrow.fs

    fs, root = storage.filesystem(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(os.path.relpath(i.path, root) for i in infos if i.is_file)


def failure(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("where", ["bucket", "local"])
def test_files_and_folders_behave_alike_in_a_bucket_and_on_disk(s3, tmp_path, where):
    base = f"s3://{BUCKET}/unit/out" if where == "bucket" else tmp_path / "out"
    run_file, shard = storage.join(base, "run.json"), storage.join(base, "data", "train", "0.parquet")
    assert storage.is_empty(base) and not storage.exists(run_file)

    storage.write_text(run_file, '{"task": "finetune"}')
    storage.write_text(shard, "rows")
    assert json.loads(storage.read_text(run_file)) == {"task": "finetune"}
    assert not storage.is_empty(base) and storage.exists(storage.join(base, "data"))
    assert storage.files(base) == [str(run_file)]  # files directly in the folder, not sub-folders
    assert storage.files(storage.join(base, "data", "train"), ".parquet") == [str(shard)]
    assert storage.files(storage.join(base, "data", "train"), ".json") == []

    storage.delete(storage.join(base, "data"))
    storage.delete(storage.join(base, "data"))  # already gone: nothing happens
    assert not storage.exists(shard) and storage.files(base) == [str(run_file)]


def test_a_folder_in_a_bucket_resolves_to_a_local_copy_that_follows_changes(s3, tmp_path, monkeypatch):
    from raynlp.presets import resolve

    monkeypatch.setenv("RAYNLP_HOME", str(tmp_path / "home"))
    folder = tmp_path / "preset"
    (folder / "assets" / "tokenizer").mkdir(parents=True)
    (folder / "config.json").write_text('{"version": 1}')
    (folder / "assets" / "tokenizer" / "vocabulary.txt").write_text("[PAD]\n[UNK]\n")
    uri = f"s3://{BUCKET}/copies/run/preset"
    storage.upload(folder, uri)
    assert listing(uri) == ["assets/tokenizer/vocabulary.txt", "config.json"]

    local = Path(resolve(uri))
    assert local.is_relative_to(tmp_path / "home") and local.parts[-2:] == ("run", "preset")  # named as a run's
    assert (local / "assets" / "tokenizer" / "vocabulary.txt").read_text() == "[PAD]\n[UNK]\n"
    made = (local / "config.json").stat().st_mtime_ns
    assert resolve(uri + "/") == str(local) and (local / "config.json").stat().st_mtime_ns == made  # not again

    (folder / "config.json").write_text('{"version": 2}')
    (folder / "assets" / "tokenizer" / "vocabulary.txt").unlink()
    storage.upload(folder, uri)  # replaces the folder: the vocabulary is gone there too
    assert listing(uri) == ["config.json"]
    assert json.loads((Path(resolve(uri)) / "config.json").read_text()) == {"version": 2}
    assert not (local / "assets" / "tokenizer" / "vocabulary.txt").exists()

    back = tmp_path / "back"
    storage.download(uri, back)
    assert json.loads((back / "config.json").read_text()) == {"version": 2}
    with pytest.raises(RaynlpError, match=f"cannot download preset s3://{BUCKET}/copies/missing: no files under"):
        resolve(f"s3://{BUCKET}/copies/missing")


@pytest.mark.slow
def test_a_run_on_object_storage_exports_there_loads_from_there_and_resumes_there(s3, ray_cluster, tmp_path, caplog):
    from raynlp.tasks import TASKS

    caplog.set_level(logging.INFO, logger="raynlp")
    out = f"s3://{BUCKET}/run"
    first_config = load_config(REPO / "configs" / "finetune.yaml", [*TINY, "train.epochs=1", f"run.output={out}"])
    first = train(first_config)  # on the session's cluster, whose workers reach the bucket
    assert f"preset: {out}/preset\nmetrics: {out}/metrics.json" in TASKS["finetune"].summary(first_config, first)
    files = listing(out)
    for name in ["raynlp_run.json", "config.yaml", "metrics.json", "curves.png", "preset/config.json",
                 "preset/task.json", "preset/model.weights.h5", "preset/task.weights.h5", "preset/tokenizer.json",
                 "preset/assets/tokenizer/vocabulary.txt", "preset/raynlp_model.json",
                 "data/train/_raynlp_tokenized.json", "data/test/_raynlp_tokenized.json"]:
        assert name in files, name
    assert any(f.startswith("data/train/") and f.endswith(".parquet") for f in files)
    checkpoints = {f.split("/")[1] for f in files if f.startswith("ray_train/checkpoint_") and f.count("/") > 1}
    assert len(checkpoints) == 1 and f"ray_train/{checkpoints.pop()}/optimizer_variables.npz" in files
    (epoch_1,) = json.loads(storage.read_text(f"{out}/metrics.json"))
    assert epoch_1["epoch"] == 1 and epoch_1["global_step"] == 64 // 16
    assert not storage.local_dir("staging", out, tail=0).exists()  # staged, uploaded, cleaned up

    # Any process loads the export from its URI: `raynlp evaluate` in a process of its own, its actors included
    # (on the session's cluster, which a new driver joins faster than it starts one).
    preset, reviews = f"{out}/preset", tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in REVIEWS))
    try:
        evaluated = raynlp(s3, "evaluate", "--preset", preset, "--input", str(reviews),
                           "--address", ray_cluster.get_runtime_context().gcs_address,
                           "--output", str(tmp_path / "report.json"))
        assert evaluated.returncode == 0, failure(evaluated)
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["rows"] == len(REVIEWS) and report["labels"] == ["negative", "positive"]
        assert Path(report["preset"]) == storage.local_dir("remote", preset)
    finally:
        shutil.rmtree(storage.local_dir("remote", preset, tail=0), ignore_errors=True)

    # The same config, one more epoch: it resumes from the checkpoint in the bucket and keeps the tokenized data.
    train(load_config(REPO / "configs" / "finetune.yaml", [*TINY, "train.epochs=2", f"run.output={out}"]))
    assert "train split already tokenized in s3://" in caplog.text
    history = json.loads(storage.read_text(f"{out}/metrics.json"))
    assert [e["epoch"] for e in history] == [1, 2]
    assert history[0] == epoch_1 and history[1]["global_step"] == 2 * epoch_1["global_step"]

    # Another run into the same URI is refused (before Ray starts).
    other = load_config(REPO / "configs" / "finetune.yaml",
                        [*TINY, "train.epochs=2", "optimizer.learning_rate=0.1", f"run.output={out}"])
    with pytest.raises(RaynlpError, match=f"output folder {out} holds another run"):
        train(other)


def test_output_uris_that_cannot_be_used_are_refused_before_ray_starts(s3):
    started = time.monotonic()
    done = finetune(s3, "nosuch://bucket/run", "train.epochs=1")
    assert done.returncode == 2, failure(done)
    assert done.stderr.strip().splitlines()[-1] == ("raynlp: error: run.output nosuch://bucket/run cannot be used: "
                                                    "Unrecognized filesystem type in URI: nosuch://bucket/run")
    assert "Ray" not in done.stderr

    missing = load_config(REPO / "configs" / "finetune.yaml", [*TINY, "run.output=s3://no-such-bucket/run"])
    with pytest.raises(RaynlpError, match=r"^run.output s3://no-such-bucket/run cannot be used: .*NO_SUCH_BUCKET"):
        train(missing)
    assert time.monotonic() - started < 60
