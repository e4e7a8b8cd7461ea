"""Jobs on a real Ray cluster: a head started with `ray start --head` on 127.0.0.1, jobs submitted through
its dashboard's Job API with `raynlp submit`, followed with `raynlp jobs`, the head stopped at the end."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from raynlp._internal.cluster import free_port
from raynlp.cli import main

pytestmark = pytest.mark.slow  # a ray start head and Ray jobs

# Mixed precision rides on the job's run: bfloat16 compute on CPU (float16 with loss scaling on GPU), float32 weights.
TINY_FINETUNE = ["preset=bert_tiny_en_uncased_scratch", "data.max_train_rows=128", "data.max_test_rows=32",
                 "data.sequence_length=32", "data.tokenizer_actors=1", "train.epochs=2", "train.batch_size=16",
                 "scaling.num_workers=1", "optimizer.learning_rate=1e-3", "train.precision=bfloat16"]


def processes_under(folder: Path) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if str(folder) in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with its own temp dir (`<RAY_TMPDIR>/ray`, as Ray names it);
    yields its dashboard `url` and `temp` dir."""
    from raynlp.jobs.submit import client

    # Short, under /tmp: Ray's socket paths inside it must stay within the 107 bytes a Unix socket allows, which a
    # pytest-xdist worker's basetemp (…/popen-gw1/…) exceeds.
    temp = Path(tempfile.mkdtemp(prefix="raynlp-head-", dir="/tmp")) / "ray"
    temp.mkdir()
    dashboard = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "KERAS_BACKEND": "jax",
           # Single-machine mode keeps 127.0.0.1 instead of swapping in the routable IP (raynlp._internal.cluster).
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--temp-dir={temp}", "--num-cpus=4", "--object-store-memory=400000000", "--disable-usage-stats",
         # Ports of their own: the test session's cluster already holds Ray's defaults (e.g. the agent's 52365).
         *(f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                  "runtime-env-agent-port", "metrics-export-port",
                                                  "ray-client-server-port"))],
        env=env, stdout=open(temp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 180
    while True:
        try:
            client(url)
            # `ray start` writes its record (what a command without --address joins) after the dashboard is up.
            assert (temp / "ray_current_cluster").is_file()
            break
        except Exception:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not come up: {(temp / 'head.log').read_text()[-2000:]}") from None
            time.sleep(1)
    yield SimpleNamespace(url=url, temp=temp)
    # A graceful stop takes Ray about 30 s; what is still up 5 s after SIGTERM is killed: nothing of the head may
    # outlive the module.
    head.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while (head.poll() is None or processes_under(temp)) and time.monotonic() < deadline:
        time.sleep(0.5)
    head.kill()
    for line in processes_under(temp):
        os.kill(int(line.split()[0]), signal.SIGKILL)
    head.wait(timeout=30)
    shutil.rmtree(temp.parent, ignore_errors=True)


def test_submit_a_finetune_job_and_find_its_preset(ray_head, tmp_path, capsys):
    out = tmp_path / "finetune"
    code = main(["submit", "--address", ray_head.url, "--config", "configs/finetune.yaml", "--wait",
                 *sum((["--set", s] for s in [*TINY_FINETUNE, f"run.output={out}"]), []),
                 "--job-id", "raynlp-finetune-ok"])
    logs = capsys.readouterr().out
    assert code == 0, logs[-3000:]
    assert "job raynlp-finetune-ok SUCCEEDED" in logs and "finetune finished" in logs
    # The workers' progress reaches the job's log, each line once (a plain print on a Ray Train worker shows twice).
    assert logs.count("[raynlp] epoch 1/2:") == 1 and logs.count("[raynlp] epoch 1/2 step 1/8:") == 1, logs[-3000:]
    assert (out / "preset" / "task.json").is_file() and (out / "metrics.json").is_file()
    _trained_in_mixed_precision_and_exported_in_float32(out)

    assert main(["jobs", "status", "raynlp-finetune-ok", "--address", ray_head.url]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert main(["jobs", "logs", "raynlp-finetune-ok", "--address", ray_head.url]) == 0
    assert f"preset: {out / 'preset'}" in capsys.readouterr().out


def _trained_in_mixed_precision_and_exported_in_float32(out: Path) -> None:
    import json

    import keras
    import keras_hub
    import numpy as np

    metrics = json.loads((out / "metrics.json").read_text())
    assert all(np.isfinite(m["loss"]) for m in metrics) and metrics[-1]["loss"] < metrics[0]["loss"], metrics
    card = json.loads((out / "preset" / "raynlp_model.json").read_text())
    assert card["extra"]["trained_dtype_policy"] == "mixed_bfloat16"
    # Exported as a plain float32 preset: keras-hub cannot load a "mixed_*" policy from a preset.
    classifier = keras_hub.models.BertTextClassifier.from_preset(str(out / "preset"))
    assert classifier.dtype_policy.name == "float32" and {w.dtype for w in classifier.weights} == {"float32"}
    assert np.isfinite(np.asarray(classifier.predict(["a fine film .", "dull ."], verbose=0))).all()
    keras.backend.clear_session()


def test_a_failing_job_reports_failure_and_its_error(ray_head, tmp_path, capsys):
    code = main(["submit", "--address", ray_head.url, "--config", "configs/finetune.yaml", "--wait",
                 "--set", "preset=/nowhere/preset", "--set", f"run.output={tmp_path / 'x'}",
                 "--job-id", "raynlp-finetune-bad"])
    logs = capsys.readouterr().out
    assert code == 1
    assert "raynlp: error: preset folder '/nowhere/preset' does not exist" in logs
    assert "job raynlp-finetune-bad FAILED" in logs
    assert main(["jobs", "status", "raynlp-finetune-bad", "--address", ray_head.url]) == 1
    assert main(["jobs", "list", "--address", ray_head.url]) == 0
    listing = capsys.readouterr().out
    assert "raynlp-finetune-ok" in listing and "raynlp-finetune-bad" in listing and "FAILED" in listing


def test_a_wrong_config_is_refused_before_anything_is_submitted(ray_head, capsys):
    assert main(["submit", "--address", ray_head.url, "--config", "configs/finetune.yaml",
                 "--set", "train.batch_size=0"]) == 2
    assert "config field train.batch_size" in capsys.readouterr().err
    assert main(["jobs", "list", "--address", ray_head.url]) == 0
    assert "batch_size=0" not in capsys.readouterr().out


def test_commands_join_the_head_ray_start_runs_and_pass_over_a_stale_record(ray_head, tmp_path):
    """No --address, no RAY_ADDRESS: a command joins the head `ray start --head` runs on this machine (Ray's record
    of it under RAY_TMPDIR), and with a record of a head that is gone it starts a cluster of its own."""
    from raynlp._internal.cluster import running_local_head

    def tokenize(ray_tmpdir: str, output: str):
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return subprocess.run([str(Path(sys.executable).parent / "raynlp"), "tokenize", "--dataset", "rotten_tomatoes",
                               "--split", "test", "--preset", "bert_tiny_en_uncased_scratch", "--sequence-length", "32",
                               "--num-actors", "1", "--output", str(tmp_path / output)],
                              env={**env, "RAY_TMPDIR": ray_tmpdir}, capture_output=True, text=True, timeout=300)

    head = (ray_head.temp / "ray_current_cluster").read_text().strip()
    joined = tokenize(str(ray_head.temp.parent), "joined")
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert f"joined the Ray cluster at {head} (the local one `ray start` runs" in joined.stderr, joined.stderr[-3000:]

    stale = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths live under it
    (stale / "ray").mkdir()
    (stale / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    os.environ["RAY_TMPDIR"], saved = str(stale), os.environ.get("RAY_TMPDIR")
    try:
        assert running_local_head() is None
    finally:
        os.environ.pop("RAY_TMPDIR") if saved is None else os.environ.update(RAY_TMPDIR=saved)
    try:
        fresh = tokenize(str(stale), "fresh")  # its cluster, and Ray's logs of it, end up in `stale`
    finally:
        shutil.rmtree(stale, ignore_errors=True)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "that is gone: starting a new one" in fresh.stderr and "started a local Ray cluster" in fresh.stderr
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "joined").equals(pq.read_table(tmp_path / "fresh"))  # the same 800 rows
