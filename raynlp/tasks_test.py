"""Every config in configs/ is valid for the task it names; flags and --set layer over files as documented."""

import re
from pathlib import Path

import pytest

from raynlp.errors import RaynlpError
from raynlp.tasks import TASKS, load_task_config, task_of

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


def test_a_job_runs_the_task_its_config_names():
    from raynlp.tasks import job_command

    assert job_command(["--config", "configs/finetune.yaml", "--set", "train.epochs=1"]) == [
        "finetune", "--config", "configs/finetune.yaml", "--set", "train.epochs=1"]
    assert job_command(["--config", "configs/serve.yaml"]) == ["serve", "--config", "configs/serve.yaml", "--detach"]
    assert job_command(["vocab", "--config", "configs/vocab.yaml"])[0] == "vocab"
    with pytest.raises(RaynlpError, match="a job needs --config FILE"):
        job_command(["--set", "x=1"])


def test_a_new_recipe_is_one_class_and_one_registry_row():
    """Registered before raynlp reads the table, a toy recipe is a config task, a CLI command with its help, a
    workflow and a job: nothing else names the training tasks."""
    import subprocess
    import sys

    script = """
import raynlp.train.recipes as recipes
from raynlp.train.recipes.finetune import FinetuneRecipe

class Toy(FinetuneRecipe):
    summary = "a toy recipe for the registry test"

recipes.RECIPES["toy"] = Toy()
from raynlp import cli, workflows
from raynlp.tasks import TASKS, job_command, load_task_config

config = load_task_config("toy", None, ["preset=bert_tiny_en_uncased_scratch", "data.dataset=rotten_tomatoes"])
assert config.task == "toy" and TASKS["toy"].help == Toy.summary
assert "toy" in cli.build_parser().format_help() and Toy.summary in cli.build_parser().format_help()
assert workflows._config("toy", None, [], {"preset": "p", "dataset": "rotten_tomatoes"}).task == "toy"
assert job_command(["toy", "--config", "x.yaml"])[0] == "toy"
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.stdout.strip() == "ok", run.stderr[-2000:]


@pytest.mark.parametrize("name", ["evaluate", "predict"])
def test_inference_actors_that_ask_for_gpus_on_a_cluster_without_any_are_refused(ray_cluster, keras_hub_classifier,
                                                                                 name, tmp_path):
    from raynlp.tasks import task

    config = load_task_config(name, f"configs/{name}.yaml", ["num_gpus=1", f"output={tmp_path / 'out'}",
                                                             f"preset={keras_hub_classifier[0]}"])
    with pytest.raises(RaynlpError, match=r"^num_gpus=1, but no node of this cluster has a GPU \(4 CPUs\): leave "
                                          r"num_gpus out or join a cluster with GPUs \(address\)$"):
        task(name).run(config)
    assert not (tmp_path / "out").exists()


def _refused_before_ray_starts(argv: list[str]) -> str:
    """`raynlp *argv` in a process of its own: the one-line error it exits with, once it is sure Ray never started."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "raynlp.cli", *argv], capture_output=True, text=True)
    assert done.returncode == 2 and "Ray" not in done.stderr, done.stderr[-2000:]
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command, given, field", [
    (["tokenize", "--preset", "bert_tiny_en_uncased_scratch", "--output", "{out}"], "--input", "--input"),
    (["evaluate", "--preset", "bert_tiny_en_uncased_scratch", "--output", "{out}/report.json"], "--input", "--input"),
    (["predict", "--preset", "bert_tiny_en_uncased_scratch", "--output", "{out}"], "--input", "--input"),
    (["vocab", "--size", "100", "--output", "{out}/vocab.txt"], "--input", "--input"),
    (["evaluate", "--preset", "bert_tiny_en_uncased_scratch"], "--set=data.input", "data.input"),
], ids=["tokenize", "evaluate", "predict", "vocab", "evaluate --set"])
def test_a_corpus_that_does_not_exist_is_refused_naming_how_it_was_given_before_ray_starts(tmp_path, command, given,
                                                                                           field):
    missing, out = tmp_path / "reviws", tmp_path / "out"
    argv = [part.format(out=out) for part in command] + [f"{given}={missing}"]
    assert _refused_before_ray_starts(argv) == (f"raynlp: error: {field}: corpus path {missing} does not exist; "
                                                "give a file, a folder, a glob or an s3:// / gs:// URI")
    assert not out.exists()


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "--output", "{out}"]], ids=["evaluate", "predict"])
@pytest.mark.parametrize("preset, message", [
    ("{missing}", "preset folder '{missing}' does not exist"),
    ("bert_tiny_en_uncased_scratch", "holds no classifier (no task.json with num_classes, no raynlp_model.json)"),
], ids=["missing", "a backbone"])
def test_a_preset_that_is_not_a_classifier_is_refused_before_ray_starts(tmp_path, command, preset, message):
    (tmp_path / "reviews.csv").write_text("text,label\na gem of a film,1\n")
    missing, out = tmp_path / "run" / "preset", tmp_path / "out"
    argv = [part.format(out=out) for part in command] + ["--preset", preset.format(missing=missing), "--input",
                                                         str(tmp_path / "reviews.csv")]
    assert message.format(missing=missing) in _refused_before_ray_starts(argv)
    assert not out.exists()


def test_a_vocabulary_file_that_exists_is_refused_before_ray_starts_and_kept(tmp_path):
    from raynlp import workflows

    (tmp_path / "reviews.txt").write_text("a gem of a film\n")
    mine = tmp_path / "vocab.txt"
    mine.write_text("[PAD]\nmine\n")
    refused = f"vocabulary file {mine} exists; choose a new path or delete it"
    argv = ["vocab", "--size", "100", "--input", str(tmp_path / "reviews.txt"), "--output", str(mine)]
    assert _refused_before_ray_starts(argv) == f"raynlp: error: {refused}"
    with pytest.raises(RaynlpError, match=f"^{re.escape(refused)}$"):
        workflows.vocab(100, str(mine), input=str(tmp_path / "reviews.txt"))
    assert mine.read_text() == "[PAD]\nmine\n"


def test_the_python_workflows_name_a_missing_corpus_by_their_own_argument(tmp_path):
    from raynlp import workflows

    with pytest.raises(RaynlpError, match=r"^input: corpus path \S+reviws does not exist"):
        workflows.vocab(100, str(tmp_path / "vocab.txt"), input=str(tmp_path / "reviws"))
