"""Bad training input is refused with one line that names the problem, before any training starts."""

import subprocess
import sys
from pathlib import Path

import pytest

from raynlp.errors import RaynlpError
from raynlp.train import load_config, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["preset=bert_tiny_en_uncased_scratch", "data.max_train_rows=64", "data.sequence_length=32"]


def finetune(out: Path, *overrides: str):
    return load_config(CONFIGS / "finetune.yaml", [f"run.output={out}", *TINY, *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["task=distill"], "config field task: Input should be 'finetune', 'fit', 'pretrain' or 'scratch'"),
    (["train.batch_size=-1"], "config field train.batch_size: Input should be greater than or equal to 1"),
    (["scaling.use_gpus=true"], "config field scaling.use_gpus: Extra inputs are not permitted"),
    (["data.dataset=null"], "give exactly one of data.dataset and data.train"),
    (["task=fit"], "task fit needs model.builder"),
])
def test_wrong_configs_name_the_field(overrides, message, tmp_path):
    with pytest.raises(RaynlpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        finetune(tmp_path, *overrides)


def test_cli_refuses_a_wrong_config_before_ray_starts(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "raynlp.cli", "finetune", "--config", str(CONFIGS / "finetune.yaml"),
         "--set", "train.epochs=0", "--set", f"run.output={tmp_path}"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("raynlp: error: config field train.epochs: Input should be "
                                                     "greater than or equal to 1 (got 0)")
    assert "Ray" not in done.stderr and not any(tmp_path.iterdir())


def test_unknown_preset_and_too_long_sequences_are_refused_before_the_output_is_claimed(tmp_path):
    with pytest.raises(RaynlpError, match="unknown preset 'bert_huge'.*offline presets: minilm_l6_en_uncased"):
        train(finetune(tmp_path / "a", "preset=bert_huge"))
    with pytest.raises(RaynlpError, match="data.sequence_length 1024 is above the maximum 512"):
        train(finetune(tmp_path / "b", "data.sequence_length=1024"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_output_folder_holding_another_run_is_refused(tmp_path):
    from raynlp.train.trainer import _claim_output

    _claim_output(finetune(tmp_path / "run"))
    with pytest.raises(RaynlpError, match="holds another run"):
        train(finetune(tmp_path / "run", "optimizer.learning_rate=0.1"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RaynlpError, match="not empty and holds no raynlp run"):
        train(finetune(tmp_path / "other"))


def test_labelled_task_on_unlabelled_data_is_refused(ray_cluster, tmp_path):
    with pytest.raises(RaynlpError, match="task finetune needs labelled data.*task pretrain"):
        train(finetune(tmp_path / "run", "data.dataset=shakespeare"))


def test_more_labels_than_num_classes_is_refused(ray_cluster, tmp_path):
    corpus = tmp_path / "three.csv"
    corpus.write_text("text,label\n" + "".join(f"review number {i},{i % 3}\n" for i in range(60)))
    with pytest.raises(RaynlpError, match="model.num_classes is 2, but the training data holds label 2"):
        train(finetune(tmp_path / "run", "data.dataset=null", f"data.train={corpus}", "model.num_classes=2"))
