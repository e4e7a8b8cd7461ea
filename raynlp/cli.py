"""The `raynlp` command: a thin shell over the Python API.

Each sub-command parses its flags, calls one function of the package and prints where its results went.
Bad input ends with one line, `raynlp: error: ...`, and exit status 2.
"""

import argparse
import json
import logging
import os
import sys

from raynlp.errors import RaynlpError

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

logger = logging.getLogger("raynlp")


# --- presets and data sets -------------------------------------------------------------------------------

def _presets(args) -> None:
    from raynlp import presets

    if args.action == "list":
        for spec in presets.list_presets():
            print(f"{spec.name:34s} {'pretrained' if spec.pretrained else 'random-init':11s} {spec.description}")
        print("\nAny keras-hub handle (kaggle://..., hf://..., a keras-hub preset name, a local folder) also works "
              "where the network allows.")
    elif args.action == "fetch":
        print(presets.fetch(_need_name(args)))
    else:
        print(json.dumps(presets.show(_need_name(args)), indent=2))


def _datasets(args) -> None:
    from raynlp import datasets

    if args.action == "list":
        for spec in datasets.list_datasets():
            kind = "labelled" if spec.labelled else "unlabelled"
            print(f"{spec.name:16s} {kind:10s} {spec.description}")
    else:
        folder = datasets.fetch(_need_name(args))
        print(json.dumps(json.loads((folder / "raynlp.json").read_text())["rows"]), folder)


def _need_name(args) -> str:
    if not args.name:
        raise RaynlpError(f"`raynlp {args.command} {args.action}` needs a NAME; see `raynlp {args.command} list`")
    return args.name


# --- data ------------------------------------------------------------------------------------------------

_CORPUS_FLAGS = {"dataset": "data.dataset", "split": "data.split", "input": "data.input", "format": "data.format",
                 "text_column": "data.text_column", "skip_bad_files": "data.skip_bad_files",
                 "encoding": "data.encoding"}


def _flag_values(args, flags: dict[str, str]) -> dict:
    """The config values the command line gave: flag `dest` → dotted config key, for flags that were given."""
    return {key: getattr(args, dest) for dest, key in flags.items() if getattr(args, dest, None) is not None}


def _job_config(task: str, args, flags: dict[str, str]):
    """`--config FILE`, then `--set` overrides, then the dedicated flags: validated before anything starts."""
    from raynlp.jobs.tasks import load_task_config

    return load_task_config(task, args.config, args.set, _flag_values(args, {**_CORPUS_FLAGS, **flags}))


def _tokenize(args) -> None:
    from raynlp._internal.cluster import ensure_ray
    from raynlp.data import MaskingConfig, tokenize_dataset, write_tokenized
    from raynlp.data.labels import as_label_ids

    masking = MaskingConfig(selection_rate=args.mask_rate, max_selections=args.max_selections,
                            seed=args.seed) if args.mlm else None
    from raynlp._internal import config_file
    from raynlp.data.config import CorpusSettings

    given = _flag_values(args, _CORPUS_FLAGS)
    corpus = config_file.load(CorpusSettings, None, values={k.removeprefix("data."): v for k, v in given.items()})
    ensure_ray(args.address)
    source, names = as_label_ids(corpus.open(shuffle_seed=args.shuffle_seed), corpus.class_names())
    packed = tokenize_dataset(source, args.preset, sequence_length=args.sequence_length,
                              text_column="text", pair_column=args.pair_column, masking=masking,
                              num_actors=args.num_actors)
    manifest = write_tokenized(packed, args.output, preset=args.preset, sequence_length=args.sequence_length,
                               masking=masking, label_names=names)
    print(f"tokenized {manifest['rows']} rows into {manifest['shards']} Parquet shards in {args.output}"
          + (f" (labels {', '.join(f'{i} {n}' for i, n in enumerate(names))})" if names else ""))


def _vocab(args) -> None:
    from raynlp._internal.cluster import ensure_ray
    from raynlp.data import learn_vocabulary, save_vocabulary

    config = _job_config("vocab", args, {"size": "size", "output": "output", "lowercase": "lowercase",
                                         "strip_accents": "strip_accents", "address": "address"})
    ensure_ray(config.address)
    vocabulary = learn_vocabulary(config.data.open(), config.size, lowercase=config.lowercase,
                                  strip_accents=config.strip_accents)
    path = save_vocabulary(vocabulary, config.output)
    print(f"learned {len(vocabulary)} WordPiece tokens into {path}")


def _train(args) -> None:
    from raynlp._internal import storage
    from raynlp.train.trainer import train

    config = _job_config(args.command, args, {})
    result = train(config)
    final = result.final
    shown = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
    print(f"{config.task} finished: {shown}\npreset: {result.preset}\n"
          f"metrics: {storage.join(result.output, 'metrics.json')}")


_INFERENCE_FLAGS = {"preset": "preset", "num_actors": "num_actors", "batch_size": "batch_size", "output": "output",
                    "address": "address"}


def _evaluate(args) -> None:
    from raynlp._internal.cluster import ensure_ray
    from raynlp.inference import evaluate

    config = _job_config("evaluate", args, _INFERENCE_FLAGS)
    ensure_ray(config.address)
    report = evaluate(config.data.open(), config.preset, num_actors=config.num_actors, batch_size=config.batch_size)
    text = json.dumps(report, indent=2)
    if config.output:
        os.makedirs(os.path.dirname(os.path.abspath(config.output)), exist_ok=True)
        with open(config.output, "w") as f:
            f.write(text)
        logger.info("evaluation written to %s", config.output)
    print(text)


def _predict(args) -> None:
    import pyarrow.parquet as pq

    from raynlp._internal import storage
    from raynlp._internal.cluster import ensure_ray
    from raynlp.inference import predict_dataset

    config = _job_config("predict", args, _INFERENCE_FLAGS)
    if not storage.is_empty(config.output):
        raise RaynlpError(f"output folder {config.output} is not empty; choose a new folder or delete it")
    ensure_ray(config.address)
    predictions = predict_dataset(config.data.open(), config.preset, num_actors=config.num_actors,
                                  batch_size=config.batch_size)
    output = str(storage.location(config.output))  # absolute: Ray Data's write tasks run elsewhere
    predictions.write_parquet(output)
    rows = pq.ParquetDataset(output).read(columns=[]).num_rows
    print(f"predicted {rows} rows into Parquet shards in {output} "
          "(columns: text, predicted_label, predicted_name, probabilities, and any input columns)")


def _serve(args) -> None:
    import time

    from raynlp.serve import export, start, stop

    config = _job_config("serve", args, {"preset": "preset", "host": "http.host", "port": "http.port",
                                         "address": "address"})
    if args.export:
        path = export(config, args.export)
        print(f"wrote the Serve config to {path}\n  deploy it with: serve deploy {path}")
        return
    if args.detach and not (config.address or os.environ.get("RAY_ADDRESS")):
        raise RaynlpError("--detach leaves the app on a running cluster: give --address or RAY_ADDRESS")
    url = start(config)
    print(f"serving {config.preset} at {url}  (POST /v1/classify, GET /v1/model, GET /healthz)\n"
          f"  try: raynlp classify --url {url} \"a gem of a film\"")
    if args.detach:
        return
    print("Ctrl-C stops the server", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop(config)


def _classify(args) -> None:
    from raynlp.serve import Client

    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise RaynlpError("no texts: give them as arguments, or one per line on standard input")
    predictions = Client(args.url, timeout=args.timeout).classify(texts)
    if args.json:
        print(json.dumps([p.__dict__ for p in predictions], indent=2))
        return
    for text, p in zip(texts, predictions):
        shown = text if len(text) <= 70 else text[:67] + "..."
        print(f"{p.label_name:>12s}  {max(p.probabilities):.3f}  {shown}")


def _submit(args) -> int:
    from raynlp.jobs.submit import follow, submit

    env = dict(item.split("=", 1) for item in args.env) if args.env else {}
    if any("=" not in item for item in args.env):
        raise RaynlpError("--env takes NAME=VALUE")
    job = submit(args.config, address=args.address, overrides=args.set, working_dir=args.working_dir, env=env,
                 job_id=args.job_id)
    print(f"submitted {job.task} job {job.job_id} to {job.address}", flush=True)
    if not args.wait:
        print(f"  follow it:  raynlp jobs logs {job.job_id} --follow --address {job.address}\n"
              f"  status:     raynlp jobs status {job.job_id} --address {job.address}")
        return 0
    status = follow(job)
    print(f"job {job.job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def _jobs(args) -> int:
    from raynlp.jobs.submit import Job, client, follow

    jobs = client(args.address)
    if args.action == "list":
        for info in sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0):
            ident = info.submission_id or info.job_id
            print(f"{ident:28s} {str(info.status.value):10s} {info.entrypoint}")
        return 0
    if not args.job_id:
        raise RaynlpError(f"`raynlp jobs {args.action}` needs a JOB_ID; see `raynlp jobs list`")
    if args.action == "status":
        info = jobs.get_job_info(args.job_id)
        print(f"{args.job_id} {info.status.value}" + (f": {info.message}" if info.message else ""))
        return 0 if str(info.status.value) != "FAILED" else 1
    if args.action == "logs":
        if args.follow:
            follow(Job(address=jobs.get_address(), job_id=args.job_id, task=""))
        else:
            print(jobs.get_job_logs(args.job_id), end="")
        return 0
    stopped = jobs.stop_job(args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def _demo(args) -> None:
    from raynlp.demo import run_demo

    run_demo(args.output, address=args.address, size=args.size)


def _bench(args) -> None:
    from raynlp import bench

    result_path = bench.run(args.name, output_dir=args.output, rows=args.rows, preset=args.preset)
    print(f"benchmark results in {result_path}")


# --- parser ----------------------------------------------------------------------------------------------

def _add_config_flags(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", help="a YAML config (see configs/); flags below override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field, e.g. --set {example}")


def _add_input_flags(p: argparse.ArgumentParser, split: str = "train") -> None:
    src = p.add_argument_group("input (one of; or data.input / data.dataset in --config)")
    src.add_argument("--input", help="a corpus: file, folder (class folders or text files), glob, s3:// or gs:// URI")
    src.add_argument("--dataset", help="a raynlp data set name (see `raynlp datasets list`)")
    p.add_argument("--split", choices=["train", "test"], help=f"split of --dataset (default {split})")
    p.add_argument("--format", choices=["lines", "paragraphs", "jsonl", "csv", "parquet", "folders"],
                   help="corpus format; inferred from the suffix or layout when left out")
    p.add_argument("--text-column", help="column holding the text in csv/jsonl/parquet input (default text)")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="leave out empty or unreadable files (named and counted in a warning) instead of stopping")
    p.add_argument("--encoding", help="text encoding of the corpus files (default utf-8), e.g. latin-1")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local cluster)")


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    _add_config_flags(p, "num_actors=2")
    p.add_argument("--preset", help="classifier folder, e.g. runs/finetune/preset")
    p.add_argument("--num-actors", type=int, help="inference actors (default 1)")
    p.add_argument("--batch-size", type=int, help="rows per predict call (default 32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raynlp",
        description="KerasNLP workflows (keras-hub) on a Ray cluster: data, training, serving.",
        epilog="Caches live in RAYNLP_HOME (default ~/.cache/raynlp). Docs: README.md.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("presets", help="list, fetch or show presets that load offline")
    p.add_argument("action", choices=["list", "fetch", "show"])
    p.add_argument("name", nargs="?", help="preset name (fetch, show)")
    p.set_defaults(run=_presets)

    p = commands.add_parser("datasets", help="list or fetch the data sets raynlp names")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?", help="data set name (fetch)")
    p.set_defaults(run=_datasets)

    p = commands.add_parser(
        "tokenize", help="tokenize a corpus on Ray Data into Parquet shards a trainer streams",
        description="Tokenize text with a preset's vocabulary on a pool of Ray actors and write Parquet shards "
                    "holding token_ids, segment_ids, padding_mask (and label; with --mlm also mask_positions, "
                    "mask_ids, mask_weights).")
    p.add_argument("--preset", required=True, help="preset whose tokenizer to use (name or folder)")
    _add_input_flags(p)
    p.add_argument("--output", required=True, help="new folder for the Parquet shards")
    p.add_argument("--sequence-length", type=int, default=128, help="packed length (default 128)")
    p.add_argument("--pair-column", help="second text column, for sentence pairs")
    p.add_argument("--mlm", action="store_true", help="also apply masked-LM masking (for pretraining)")
    p.add_argument("--mask-rate", type=float, default=0.15, help="masked-LM selection rate (default 0.15)")
    p.add_argument("--max-selections", type=int, default=96, help="masked-LM selections per row (default 96)")
    p.add_argument("--seed", type=int, default=0, help="masking seed (default 0)")
    p.add_argument("--shuffle-seed", type=int, help="write the rows in a random order seeded by this (for a "
                                                     "training split read in a sorted order, as class folders are)")
    p.add_argument("--num-actors", type=int, default=2, help="tokenizer actors (default 2)")
    p.set_defaults(run=_tokenize)

    p = commands.add_parser(
        "vocab", help="learn a WordPiece vocabulary from a corpus, counting words on Ray Data",
        description="Words are counted per block on Ray Data, the counts merged, then keras-hub's WordPiece "
                    "learner builds the vocabulary (equal to keras_hub.tokenizers.compute_word_piece_vocabulary).")
    _add_input_flags(p)
    _add_config_flags(p, "size=8000")
    p.add_argument("--size", type=int, help="vocabulary size, reserved tokens included")
    p.add_argument("--output", help="vocabulary file to write, one token per line")
    p.add_argument("--cased", dest="lowercase", action="store_false", default=None,
                   help="keep case (default: lowercase)")
    p.add_argument("--strip-accents", action="store_true", default=None, help="strip accents before learning")
    p.set_defaults(run=_vocab)

    for task, what in [
        ("finetune", "fine-tune a preset's backbone as a text classifier (guide levels 2 and 3)"),
        ("fit", "train a user model built around a preset's backbone (guide level 4)"),
        ("pretrain", "masked-LM pretraining of a backbone, from scratch or continued (guide level 5)"),
        ("scratch", "learn a vocabulary and train a small transformer from scratch (guide level 6)"),
    ]:
        p = commands.add_parser(
            task, help=what,
            description=f"{what[0].upper()}{what[1:]}, data-parallel on Ray Train. The config is validated before "
                        "Ray starts; the output folder gets preset/, metrics.json, curves.png and checkpoints. "
                        "Running the same config into the same output folder again resumes it.")
        _add_config_flags(p, "train.epochs=3 --set scaling.num_workers=4")
        p.set_defaults(run=_train)

    p = commands.add_parser(
        "evaluate", help="accuracy, loss and confusion matrix of a trained classifier over a labelled corpus",
        description="Run a classifier folder (a training run's preset/) over labelled text on a Ray Data actor "
                    "pool and report accuracy, mean cross-entropy, per-class precision/recall and the confusion "
                    "matrix as JSON.")
    _add_input_flags(p, split="test")
    p.add_argument("--output", help="also write the JSON report to this file")
    _add_inference_flags(p)
    p.set_defaults(run=_evaluate)

    p = commands.add_parser(
        "predict", help="classify a corpus with a trained classifier into Parquet (batch inference)",
        description="Run a classifier folder over a corpus of any size on a Ray Data actor pool and write Parquet "
                    "shards with the predicted label, its name and the class probabilities of every row.")
    _add_input_flags(p)
    p.add_argument("--output", help="new folder for the Parquet shards")
    _add_inference_flags(p)
    p.set_defaults(run=_predict)

    p = commands.add_parser(
        "serve", help="serve a classifier over HTTP on Ray Serve: batched, autoscaled",
        description="Run a classifier folder (a training run's preset/) as a Ray Serve app with a FastAPI ingress: "
                    "POST /v1/classify {\"texts\": [...]}, GET /v1/model, GET /healthz. Texts from concurrent "
                    "requests are batched; replicas scale with the load. Binds 127.0.0.1 unless --host says "
                    "otherwise. With --export, writes the app as a Serve config file (for `serve deploy` and a "
                    "KubeRay RayService) and starts nothing.")
    p.add_argument("--preset", help="classifier folder to serve (or preset: in the config)")
    _add_config_flags(p, "batching.max_batch_size=16")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 accepts calls from outside)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local cluster)")
    p.add_argument("--export", metavar="FILE", help="write the Serve config file and exit")
    p.add_argument("--detach", action="store_true",
                   help="deploy onto a running cluster and exit, leaving the app up (needs --address or RAY_ADDRESS)")
    p.set_defaults(run=_serve)

    p = commands.add_parser(
        "classify", help="classify texts with a running raynlp server",
        description="Send texts to a raynlp server's /v1/classify and print label, probability and text per line.")
    p.add_argument("texts", nargs="*", help="texts to classify (default: one per line from standard input)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server URL (default http://127.0.0.1:8000)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for the answer (default 60)")
    p.set_defaults(run=_classify)

    p = commands.add_parser(
        "submit", help="submit a job for a config to a Ray cluster (Ray Job API) and optionally wait for it",
        description="Check a config here, then submit `python jobs/<task>.py --config FILE` to the cluster with the "
                    "working directory (this repository) and KERAS_BACKEND in its runtime environment. With --wait, "
                    "stream its logs and exit 0 if it SUCCEEDED, 1 otherwise.")
    p.add_argument("--config", required=True, help="a config under the working directory; its `task:` picks the job")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, passed along")
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="stream the logs until the job ends; exit with its status")
    p.add_argument("--working-dir", default=".", help="folder uploaded as the job's working directory (default .)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable for the job")
    p.add_argument("--job-id", help="submission id to use (default: one Ray makes up)")
    p.set_defaults(run=_submit)

    p = commands.add_parser("jobs", help="list jobs on a cluster, or show one's status or logs, or stop it",
                            description="The Ray Job API, for jobs `raynlp submit` (or anyone) submitted.")
    p.add_argument("action", choices=["list", "status", "logs", "stop"])
    p.add_argument("job_id", nargs="?", help="submission id (status, logs, stop)")
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    p.set_defaults(run=_jobs)

    p = commands.add_parser(
        "demo", help="run the six workflows of the guide end to end on a local Ray cluster (what `make demo` runs)",
        description="Domain pretraining, fine-tuning (plain, pretrained, from cached tokens), a custom model on the "
                    "frozen backbone, a vocabulary + transformer from scratch, batch evaluation of each, and the "
                    "best served on Ray Serve; writes report.md / report.html with the figures of this run.")
    p.add_argument("--output", default="runs/demo", help="folder for the demo's results (default runs/demo)")
    p.add_argument("--address", help="Ray cluster to join (default: a new local cluster)")
    p.add_argument("--size", choices=["full", "tiny"], default="full",
                   help="full: real sizes, about 17 minutes on 2 cores (default); tiny: a few dozen rows")
    p.set_defaults(run=_demo)

    p = commands.add_parser("bench", help="run a benchmark; writes JSON (and a PNG) with ratios to plain keras-hub")
    p.add_argument("name", choices=["tokenize", "train", "serve"],
                   help="tokenize: raynlp's tokenizer against keras-hub's preprocessor; train: data-parallel "
                        "fine-tuning against a plain keras-hub fit; serve: the batched Serve deployment against "
                        "batching off and the bare predict, under closed-loop load on 127.0.0.1")
    p.add_argument("--output", default="runs/bench", help="folder for results (default runs/bench)")
    p.add_argument("--rows", type=int, default=None, help="rows to use (default: the benchmark's own)")
    p.add_argument("--preset", help="serve: the backbone to serve with a 2-class head (default minilm_l6_en_uncased)")
    p.set_defaults(run=_bench)
    return parser


def _raynlp_error(error: BaseException) -> RaynlpError | None:
    """The RaynlpError behind `error`, also when Ray wrapped it in a task or actor error."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, RaynlpError):
            return error
        error = error.__cause__ or error.__context__
    return None


_CORPUS_COMMANDS = ("tokenize", "vocab", "evaluate", "predict")


def _in_this_commands_terms(error: RaynlpError, args) -> RaynlpError:
    """An unreadable corpus file's error, with the way to go on that this command takes."""
    from typing import get_args

    from raynlp.data.corpus import CorpusFileError
    from raynlp.train.config import Task

    error = getattr(error, "cause", error)  # Ray's wrapper of an error raised in a Ray task keeps the original
    if not isinstance(error, CorpusFileError):
        return error
    if args.command in _CORPUS_COMMANDS:
        return error.suggesting(skip="--skip-bad-files", encoding="--encoding latin-1")
    if args.command in get_args(Task):
        return error.suggesting(skip="--set data.skip_bad_files=true", encoding="--set data.encoding=latin-1")
    return error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        status = args.run(args)
    except Exception as e:
        found = _raynlp_error(e)
        if found is None:
            raise
        found = _in_this_commands_terms(found, args)
        message = str(found).splitlines()[0] if str(found) else type(found).__name__
        print(f"raynlp: error: {message}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
