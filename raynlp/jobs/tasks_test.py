"""Every config in configs/ is valid for the task it names; flags and --set layer over files as documented."""

from pathlib import Path

import pytest

from raynlp.errors import RaynlpError
from raynlp.jobs.tasks import TASKS, load_task_config, task_of

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_valid_for_its_task(path):
    task = task_of(path)
    assert load_task_config(task, path).task == task


def test_every_task_ships_a_config():
    assert set(TASKS) <= {task_of(p) for p in CONFIGS}


def test_a_config_for_another_task_is_refused_with_the_command_that_runs_it(tmp_path):
    with pytest.raises(RaynlpError, match=r"configs/serve.yaml is a serve config; run `raynlp serve"):
        load_task_config("finetune", "configs/serve.yaml")
    (tmp_path / "x.yaml").write_text("preset: p\n")
    with pytest.raises(RaynlpError, match="names no task"):
        task_of(tmp_path / "x.yaml")


def test_flags_override_set_which_overrides_the_file():
    config = load_task_config("evaluate", "configs/evaluate.yaml", ["num_actors=3", "batch_size=8"],
                              {"num_actors": 5})
    assert (config.num_actors, config.batch_size, config.data.split) == (5, 8, "test")
    assert load_task_config("evaluate", None, [], {"preset": "p", "data.dataset": "x"}).data.split == "test"
    assert load_task_config("predict", None, [], {"preset": "p", "data.dataset": "x",
                                                  "output": "o"}).data.split == "train"
    with pytest.raises(RaynlpError, match="config field data: .*exactly one of data.dataset and data.input"):
        load_task_config("vocab", "configs/vocab.yaml", ["data.input=corpus.txt"])
    with pytest.raises(RaynlpError, match="config field size: Field required"):
        load_task_config("vocab", None, [], {"data.dataset": "x", "output": "v.txt"})


def test_run_outputs_may_be_storage_uris():
    # Opening the bucket is the trainer's job (tests/object_storage_test.py): the config only carries the URI.
    config = load_task_config("finetune", "configs/finetune.yaml", ["run.output=s3://bucket/runs/x"])
    assert config.run.output == "s3://bucket/runs/x"
