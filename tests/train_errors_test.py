"""Bad training input is refused with one line that names the problem, before any training starts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raynlp.errors import RaynlpError, raynlp_error_behind
from raynlp.train import load_config, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["preset=bert_tiny_en_uncased_scratch", "data.max_train_rows=64", "data.sequence_length=32"]


def finetune(out: Path, *overrides: str):
    return load_config(CONFIGS / "finetune.yaml", [f"run.output={out}", *TINY, *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["task=distill"], "config field task: no recipe 'distill'; recipes: finetune, fit, pretrain, scratch"),
    (["train.batch_size=-1"], "config field train.batch_size: Input should be greater than or equal to 1"),
    (["scaling.use_gpus=true"], "config field scaling.use_gpus: Extra inputs are not permitted"),
    (["data.dataset=null"], "give exactly one of data.dataset and data.train"),
    (["task=fit"], "task fit needs model.builder"),
    (["data.validation_fraction=0.1", "data.dataset=null", "data.train=x", "data.validation=y"],
     "give at most one of data.validation and data.validation_fraction"),
    (["data.validation_fraction=1.5"], "config field data.validation_fraction: Input should be less than 1"),
    (["data.packing=documents"], "data.packing=documents joins documents into windows for masked-LM pretraining; "
                                 "task finetune trains on labelled rows"),
    (["model.document_attention=true"], "model.document_attention keeps attention within the documents of packed "
                                        "windows for masked-LM pretraining; task finetune trains on labelled rows"),
    (["task=pretrain", "data.packing=none", "model.document_attention=true"],
     "data.packing=none gives a document a row: leave it out or pack the documents"),
    (["task=pretrain", "model.masking.dynamic=false", "model.document_attention=true"],
     "model.masking.dynamic=false does not keep: leave one of them out"),
    (["task=pretrain", "model.masking.selection_rate=1"],
     "config field model.masking.selection_rate: Input should be less than 1"),
    (["data.dataset=imdb"], "config field data.dataset: unknown data set 'imdb'; available: rotten_tomatoes, "
                            "movie_reviews, shakespeare (got 'imdb')"),
    (["data.dataset=[]"], "config field data.dataset: a list of data sets names at least one, each once"),
    (["data.dataset=[rotten_tomatoes,rotten_tomatoes]"], "a list of data sets names at least one, each once"),
    (["data.dataset=[rotten_tomatoes,shakespeare]"], "data.dataset: task finetune joins labelled sets whose labels "
                                                     "agree; rotten_tomatoes: negative, positive, shakespeare: unlabelled"),
    (["task=pretrain", "model.masking.selection_rate=0"],
     "config field model.masking.selection_rate: Input should be greater than 0"),
    (["train.checkpoint_every_steps=0"],
     "config field train.checkpoint_every_steps: Input should be greater than or equal to 1"),
    (["train.checkpoint_every_minutes=0"], "config field train.checkpoint_every_minutes: Input should be greater than 0"),
    (["train.monitor=val_f1"], "train.monitor: task finetune reports loss, accuracy, val_loss, val_accuracy; got "
                               "'val_f1'"),
    (["data.dataset=null", "data.train=x", "train.export=best"],
     "train.export: train.monitor val_loss needs validation data; give data.validation, "
     "data.validation_fraction or data.test, or monitor loss"),
    (["data.dataset=null", "data.train=x", "train.early_stopping_patience=2"],
     "train.early_stopping_patience: train.monitor val_loss needs validation data"),
    (["train.gradient_accumulation_steps=0"],
     "config field train.gradient_accumulation_steps: Input should be greater than or equal to 1"),
    (["scaling.gpus_per_worker=2"], "config field scaling: scaling.gpus_per_worker=2 needs scaling.use_gpu=true"),
    (["scaling.use_gpu=true", "scaling.gpus_per_worker=3", "train.batch_size=16"],
     "train.batch_size=16 is split across a worker's scaling.gpus_per_worker=3 GPUs: give a multiple of it"),
    (["data.max_document_tokens=126"], "data.max_document_tokens cuts documents before they are packed; "
                                        "data.packing=none cuts each row at data.sequence_length already"),
    (["task=pretrain", "data.max_document_tokens=0"],
     "config field data.max_document_tokens: Input should be greater than or equal to 1"),
    (["train.precision=float8"], "config field train.precision: Input should be 'float32', 'bfloat16' or 'float16'"),
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


@pytest.mark.parametrize("field", ["data.train", "data.test"])
def test_a_data_path_that_does_not_exist_is_refused_naming_the_field_before_ray_starts(tmp_path, field):
    missing, out = tmp_path / "reviws", tmp_path / "run"
    paths = {"data.train": CONFIGS.parent / "tests", "data.test": CONFIGS.parent / "tests", field: missing}
    done = subprocess.run(
        [sys.executable, "-m", "raynlp.cli", "finetune", "--config", str(CONFIGS / "finetune.yaml"),
         "--set", "data.dataset=null", *[f"--set={key}={path}" for key, path in paths.items()],
         "--set", f"run.output={out}"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (f"raynlp: error: {field}: corpus path {missing} does not exist; "
                                                     "give a file, a folder, a glob or an s3:// / gs:// URI")
    assert "Ray" not in done.stderr and not out.exists()


def test_a_new_run_refused_for_its_data_gives_its_output_folder_back(ray_cluster, tmp_path):
    """Refused after the folder was claimed, in the driver (a file's head) or in a Ray task reading past it: the
    fixed config must not meet the refused one's claim as "another run"."""
    from raynlp.data.corpus import CorpusFileError

    corpus = tmp_path / "reviews.csv"
    corpus.write_text("review,label\n" + "".join(f"review number {i},{i % 2}\n" for i in range(64)))
    with pytest.raises(RaynlpError, match="has no column 'text'"):
        train(finetune(tmp_path / "run", "data.dataset=null", f"data.train={corpus}"))
    assert not (tmp_path / "run").exists()
    late = tmp_path / "late.csv"  # UTF-8 for longer than the head the driver checks, then a latin-1 byte
    late.write_bytes(("text,label\n" + "".join(f"review number {i},{i % 2}\n" for i in range(8000))).encode()
                     + "café,1\n".encode("latin-1"))
    with pytest.raises(Exception) as refused:
        train(finetune(tmp_path / "run", "data.dataset=null", f"data.train={late}"))
    assert isinstance(raynlp_error_behind(refused.value), CorpusFileError), refused.value
    assert not (tmp_path / "run").exists()
    (tmp_path / "made").mkdir()  # a folder the user made for it stays, as it was
    with pytest.raises(RaynlpError, match="has no column 'text'"):
        train(finetune(tmp_path / "made", "data.dataset=null", f"data.train={corpus}"))
    assert (tmp_path / "made").is_dir() and not any((tmp_path / "made").iterdir())


def test_a_new_run_that_fails_for_another_reason_keeps_its_output_folder(ray_cluster, tmp_path, monkeypatch):
    """Only bad input gives the folder back: what a run wrote before, say, a full disk is kept."""
    from raynlp.train._internal import prepare
    from raynlp.train._internal.run_folder import RUN_FILE

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare, "prepare", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        train(finetune(tmp_path / "run"))
    assert (tmp_path / "run" / RUN_FILE).exists()


def test_unknown_preset_and_too_long_sequences_are_refused_before_the_output_is_claimed(tmp_path):
    with pytest.raises(RaynlpError, match="unknown preset 'bert_huge'.*offline presets: minilm_l6_en_uncased"):
        train(finetune(tmp_path / "a", "preset=bert_huge"))
    with pytest.raises(RaynlpError, match="data.sequence_length 1024 is above the maximum 512"):
        train(finetune(tmp_path / "b", "data.sequence_length=1024"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_whole_word_masking_needs_a_vocabulary_of_word_pieces(tmp_path):
    """A tokenizer whose vocabulary has no ## pieces has no words to mask whole: refused before Ray starts."""
    import keras_hub

    preset = tmp_path / "no_pieces"
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "is", "good"]
    keras_hub.models.BertTokenizer(vocabulary=vocabulary).save_to_preset(str(preset))
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), num_layers=1, num_heads=1,
                                             hidden_dim=8, intermediate_dim=8, max_sequence_length=32)
    backbone.save_to_preset(str(preset))
    config = finetune(tmp_path / "run", "task=pretrain", f"preset={preset}", "model.masking.whole_word=true")
    with pytest.raises(RaynlpError, match=r"^model.masking.whole_word: this tokenizer's vocabulary has no "
                                          r"word-continuation pieces \(##...\)"):
        train(config)
    assert not (tmp_path / "run").exists()
    train_config = finetune(tmp_path / "run", "task=pretrain", "model.masking.whole_word=true")
    assert train_config.data.packing == "documents"  # pretraining's default


def test_an_output_folder_holding_another_run_is_refused(tmp_path):
    from raynlp.train._internal.run_folder import RunFolder

    RunFolder.open(finetune(tmp_path / "run")).claim(finetune(tmp_path / "run"))
    with pytest.raises(RaynlpError, match="holds another run"):
        train(finetune(tmp_path / "run", "optimizer.learning_rate=0.1"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RaynlpError, match="not empty and holds no raynlp run"):
        train(finetune(tmp_path / "other"))


@pytest.mark.parametrize("overrides, message", [
    (["scaling.use_gpu=true"], r"^scaling.use_gpu=true, but no node of this cluster has a GPU \(4 CPUs\)"),
    (["scaling.num_workers=5"], r"^scaling.num_workers=5 workers of scaling.cpus_per_worker=1 CPUs: this cluster's "
                                r"nodes \(4 CPUs\) hold 4 at most"),
    (["scaling.num_workers=2", "scaling.cpus_per_worker=2"], r"^scaling.cpus_per_worker=2 leaves no room beside the 2 "
                                                             r"workers .*: lower scaling.cpus_per_worker to 1.75 at most, "
                                                             r"or set data.shard_cache=memory where each "),
])
def test_workers_the_cluster_cannot_hold_are_refused_before_the_output_is_claimed(ray_cluster, tmp_path, overrides,
                                                                                  message):
    """On the suite's real cluster (one node, 4 CPUs), where Ray Train would wait for them forever."""
    with pytest.raises(RaynlpError, match=message):
        train(finetune(tmp_path / "run", *overrides))
    assert not (tmp_path / "run").exists()


def test_labelled_task_on_unlabelled_data_is_refused(ray_cluster, tmp_path):
    with pytest.raises(RaynlpError, match="task finetune needs labelled data.*task pretrain"):
        train(finetune(tmp_path / "run", "data.dataset=shakespeare"))


def test_more_labels_than_num_classes_is_refused(ray_cluster, tmp_path):
    """Found once the labels are tokenized: a new run gives its folder back (model.num_classes=3 then runs there);
    a resumed run keeps what it holds."""
    from raynlp.train._internal.run_folder import RUN_FILE, RunFolder

    corpus = tmp_path / "three.csv"
    corpus.write_text("text,label\n" + "".join(f"review number {i},{i % 3}\n" for i in range(60)))
    config = finetune(tmp_path / "run", "data.dataset=null", f"data.train={corpus}", "model.num_classes=2")
    with pytest.raises(RaynlpError, match="model.num_classes is 2, but the training data holds label 2"):
        train(config)
    assert not (tmp_path / "run").exists()
    RunFolder.open(config).claim(config)  # as a run that got this far before, then stopped
    with pytest.raises(RaynlpError, match="model.num_classes is 2, but the training data holds label 2"):
        train(config)
    assert (tmp_path / "run" / RUN_FILE).exists() and (tmp_path / "run" / "data" / "train").is_dir()


@pytest.mark.parametrize("command, suggested", [
    (["tokenize", "--preset", "bert_tiny_en_uncased_scratch", "--output", "{out}", "--input", "{file}"],
     "(give its encoding (--encoding latin-1) or --skip-bad-files to leave such files out)"),
    (["evaluate", "--preset", "{classifier}", "--input", "{file}"],
     "(give its encoding (--encoding latin-1) or --skip-bad-files to leave such files out)"),
    (["finetune", "--config", str(CONFIGS / "finetune.yaml"), "--set", "run.output={out}", "--set", "data.dataset=null",
      "--set", "data.train={file}"],
     "(give its encoding (--set data.encoding=latin-1) or --set data.skip_bad_files=true to leave such files out)"),
])
def test_an_unreadable_file_is_named_with_the_options_of_the_command_that_failed(
        ray_cluster, keras_hub_classifier, tmp_path, capsys, command, suggested):
    from raynlp.cli import main

    (tmp_path / "corpus").mkdir()
    bad = tmp_path / "corpus" / "old.csv"
    bad.write_bytes("text,label\ncafé,1\n".encode("latin-1"))
    status = main([part.format(out=tmp_path / "out", file=bad, classifier=keras_hub_classifier[0]) for part in command])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2 and error == f"raynlp: error: corpus file {bad} is not UTF-8 text (byte 0xe9 at offset 14) {suggested}"


PACKED, ROWS, MASKS = {"mode": "documents"}, None, {"seed": 0}


@pytest.mark.parametrize("packing, masking, overrides, message", [
    (PACKED, None, [], "holds documents packed into windows for masked-LM pretraining, without labels; task finetune"),
    (ROWS, None, ["task=pretrain"], "was tokenized with data.packing=none, the config says data.packing=documents: "
                                    "set data.packing=none to train on it"),
    (PACKED, None, ["task=pretrain", "data.packing=none"], "was tokenized with data.packing=documents, the config "
                                                           "says data.packing=none"),
    (PACKED, None, ["task=pretrain", "data.packing=whole_documents"], "was tokenized with data.packing=documents, "
                                                                      "the config says data.packing=whole_documents"),
    (PACKED, MASKS, ["task=pretrain"], "holds masks drawn when it was tokenized, and model.masking.dynamic=true masks "
                                       "every batch anew"),
    (PACKED, None, ["task=pretrain", "model.masking.dynamic=false"], "was tokenized without masks, and "
                                                                     "model.masking.dynamic=false"),
])
def test_a_tokenized_folder_the_task_cannot_use_is_refused(packing, masking, overrides, message, tmp_path):
    from raynlp.train._internal.prepare import check_manifest

    folder = tmp_path / "tokens"
    folder.mkdir()
    config = finetune(tmp_path / "run", *overrides)

    def check(packing, masking):
        (folder / "_raynlp_tokenized.json").write_text(
            json.dumps({"sequence_length": 32, "packing": packing, "masking": masking}))
        check_manifest(str(folder), config, masked_lm=config.task == "pretrain")

    with pytest.raises(RaynlpError, match=message):
        check(packing, masking)
    # The folder the config asks for passes.
    masking = config.task == "pretrain" and not config.model.masking.dynamic
    check({"mode": config.data.packing} if config.data.packing != "none" else ROWS, MASKS if masking else None)


def test_the_old_mixed_precision_flag_reads_as_bfloat16_with_a_deprecation_line(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="raynlp"):
        config = finetune(tmp_path, "train.mixed_precision=true")
    assert config.train.precision == "bfloat16" and config.train.mixed_precision is None
    assert "train.mixed_precision is deprecated: set train.precision (bfloat16 or float16)" in caplog.text
    assert finetune(tmp_path, "train.mixed_precision=false").train.precision == "float32"
