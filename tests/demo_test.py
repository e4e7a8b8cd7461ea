"""`make demo`'s pipeline at a tiny size: every workflow runs, is evaluated, the best is served, the report adds up."""

import json

import pytest

from raynlp.demo import run_demo
from raynlp.errors import RaynlpError

KEYS = ["pretrain", "finetune_domain", "finetune", "finetune_cached", "fit_frozen_backbone", "scratch"]


@pytest.mark.slow
def test_tiny_demo_runs_every_workflow_and_reports_numbers_from_the_run(ray_cluster, tmp_path, monkeypatch):
    # A relative output folder, as `make demo` gives (runs/demo): Ray's workers, actors and replicas do not share
    # the driver's working directory, so every path handed to them must have been made absolute.
    monkeypatch.chdir(tmp_path)
    report_path = run_demo("demo", size="tiny")
    folder = tmp_path / "demo"
    assert report_path.resolve() == folder / "report.md"
    report = json.loads((folder / "report.json").read_text())
    rows = {r["key"]: r for r in report["workflows"]}
    assert list(rows) == KEYS

    for key, row in rows.items():
        metrics = json.loads((folder / key / "metrics.json").read_text())
        steady = metrics[1:] or metrics
        assert row["examples_per_second"] == round(sum(m["examples_per_second"] for m in steady) / len(steady), 1)
        assert (folder / key / "preset").is_dir() and (folder / row["figure"]).is_file()
        assert 0 < row["trainable_parameters"] <= row["parameters"]
        if row["classifier"]:
            assert 0.0 <= row["accuracy"] <= 1.0 and row["test_rows"] == 32
    # The frozen backbone trains only the new layers; the domain run starts from the pretraining export.
    assert rows["fit_frozen_backbone"]["trainable_parameters"] < rows["fit_frozen_backbone"]["parameters"] / 4
    card = json.loads((folder / "finetune_domain" / "preset" / "raynlp_model.json").read_text())
    assert card["source_preset"] == str(folder / "pretrain" / "preset")

    best = max((r for r in rows.values() if r["classifier"]), key=lambda r: r["accuracy"])
    assert report["best"] == best["preset"]
    assert len(report["served_answers"]) == 3
    assert all(a["label"] in ("negative", "positive") for a in report["served_answers"])

    markdown = report_path.read_text()
    assert markdown.count("| Level ") == 6 and "Domain pretraining then fine-tuning" in markdown
    assert f"{rows['finetune']['accuracy']:.3f}" in markdown
    assert markdown.count("<img") == 0 and (folder / "report.html").read_text().count("<img") == 6


def test_demo_refuses_an_object_storage_output_before_anything_runs():
    with pytest.raises(RaynlpError, match="local folder, not s3://bucket/demo"):
        run_demo("s3://bucket/demo", size="tiny")
