"""`make demo`'s pipeline at its tiny size: every level runs and beats chance, is evaluated, the best is served, the
report adds up."""

import json

import pytest

from raynlp.demo import run_demo
from raynlp.errors import RaynlpError

KEYS = ["pretrain", "finetune_domain", "finetune", "finetune_cached", "fit_frozen_backbone", "scratch"]


# What each level reaches at the tiny budget, on 256 test sentences (chance: 0.5; one standard error about 0.03).
# Measured: MiniLM fine-tuned on 640 rows for one epoch 0.63-0.66, two TransformerEncoders on the frozen MiniLM
# 0.63, the transformer from scratch after five epochs of the whole split 0.72 (two seeds, validation).
BARS = {"finetune_domain": 0.56, "finetune": 0.56, "finetune_cached": 0.56, "fit_frozen_backbone": 0.56,
        "scratch": 0.62}


@pytest.mark.slow
def test_tiny_demo_runs_every_level_each_beats_chance_and_the_report_adds_up(serve_port, tmp_path, monkeypatch):
    """The guide's six levels as `make demo` runs them, at the tiny size; this is also the suite's run of levels 4
    (a custom model on a frozen backbone) and 6 (a vocabulary and a transformer from scratch)."""
    from raynlp.inference import TextClassifier

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
            assert row["test_rows"] == 256
            assert row["accuracy"] >= BARS[key], (key, row["accuracy"])
    # Level 5: eight steps of masked LM on a new (random) head: the loss falls within the epoch.
    pretraining = json.loads((folder / "pretrain" / "metrics.json").read_text())
    assert pretraining[-1]["loss"] < pretraining[0]["progress"][0]["loss"] and "val_loss" in pretraining[-1]
    # Level 4: the frozen backbone trains only the new layers, and the classifier keeps the data set's names.
    assert rows["fit_frozen_backbone"]["trainable_parameters"] < rows["fit_frozen_backbone"]["parameters"] / 4
    assert TextClassifier.load(rows["fit_frozen_backbone"]["preset"]).labels == ["negative", "positive"]
    # Level 6: a vocabulary learned from the corpus (the learner stops short of the size asked on small text),
    # and a model that learned over its epochs.
    vocabulary = (folder / "scratch" / "vocabulary.txt").read_text().splitlines()
    assert 1000 <= len(vocabulary) <= 3000 and "[MASK]" in vocabulary
    scratch = json.loads((folder / "scratch" / "metrics.json").read_text())
    assert len(scratch) == 5 and scratch[-1]["accuracy"] > scratch[0]["accuracy"]
    # The domain run starts from the pretraining export.
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
