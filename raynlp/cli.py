"""The `raynlp` command: a thin shell over the Python API.

Each sub-command parses its flags, calls one function of the package and prints where its results went.
Bad input ends with one line, `raynlp: error: ...`, and exit status 2.
"""

import argparse
import json
import logging
import os
import sys

from raynlp._internal.cluster import ADDRESS_HELP, WORKER_ENV
from raynlp.bench import BENCHMARKS
from raynlp.errors import RaynlpError, raynlp_error_behind

for _name, _value in WORKER_ENV.items():  # this process too: it may import Keras
    os.environ.setdefault(_name, _value)

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
    from raynlp.tasks import load_task_config

    return load_task_config(task, args.config, args.set, _flag_values(args, {**_CORPUS_FLAGS, **flags}))


def _tokenize(args) -> None:
    from raynlp._internal import config_file
    from raynlp._internal.cluster import ensure_ray
    from raynlp.data import tokenize_dataset, write_tokenized
    from raynlp.data.config import CorpusSettings, MaskingSettings
    from raynlp.data.labels import as_label_ids
    from raynlp.data.tokenize import check_tokenize_job, packing_actors, packing_batch_rows

    given = _flag_values(args, _CORPUS_FLAGS)
    corpus = config_file.load(CorpusSettings, None, values={k.removeprefix("data."): v for k, v in given.items()})
    masking = config_file.load(MaskingSettings, None, values=_flag_values(
        args, {"mask_rate": "selection_rate", "max_selections": "max_selections"})) if args.mlm else None
    corpus.check_input()  # refused before Ray starts
    check_tokenize_job(args.preset, args.sequence_length, args.output)
    ensure_ray(args.address)
    source, names = as_label_ids(corpus.open(shuffle_seed=args.shuffle_seed, pair_column=args.pair_column),
                                 corpus.class_names())
    rows = corpus.known_rows()
    actors = args.num_actors if args.num_actors is not None else packing_actors(rows)
    packed = tokenize_dataset(source, args.preset, sequence_length=args.sequence_length,
                              text_column="text", pair_column="text_pair" if args.pair_column else None,
                              masking=masking, mask_seed=args.seed,
                              num_actors=actors, batch_size=packing_batch_rows(rows, actors))
    manifest = write_tokenized(packed, args.output, preset=args.preset, sequence_length=args.sequence_length,
                               masking=masking, mask_seed=args.seed, label_names=names)
    print(f"tokenized {manifest['rows']} rows into {manifest['shards']} Parquet shards in {args.output}"
          + (f" (labels {', '.join(f'{i} {n}' for i, n in enumerate(names))})" if names else ""))


def _run_task(args) -> None:
    """A task of `raynlp.tasks`: its config from the flags, run, and its summary printed."""
    from raynlp.tasks import TASKS

    task = TASKS[args.command]
    config = _job_config(args.command, args, args.flags)
    print(task.summary(config, task.run(config)))


def _serve(args) -> None:
    import time

    from raynlp.serve import export, stop
    from raynlp.tasks import TASKS

    config = _job_config("serve", args, args.flags)
    if args.export:
        path = export(config, args.export)
        print(f"wrote the Serve config to {path}\n  deploy it with: serve deploy {path}")
        return
    if args.detach and not (config.address or os.environ.get("RAY_ADDRESS")):
        raise RaynlpError("--detach leaves the app on a running cluster: give --address or RAY_ADDRESS")
    serve = TASKS["serve"]
    print(serve.summary(config, serve.run(config)))
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
    predictions = Client(args.url, timeout=args.timeout, token=args.token).classify(texts, model=args.model)
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

    if args.name != "gpu" and (args.smoke or args.peak_tflops):
        raise RaynlpError(f"--{'smoke' if args.smoke else 'peak-tflops'} is for raynlp bench gpu only")
    result_path = bench.run(args.name, output_dir=args.output, rows=args.rows, preset=args.preset,
                            smoke=args.smoke, peak_tflops=args.peak_tflops, nodes=args.nodes)
    print(f"benchmark results in {result_path}")


# --- parser ----------------------------------------------------------------------------------------------

def _add_config_flags(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", help="a YAML config (see configs/); flags below override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field, e.g. --set {example}")


def _add_input_flags(p: argparse.ArgumentParser, split: str = "train") -> None:
    from raynlp.data.corpus import FORMATS

    src = p.add_argument_group("input (one of; or data.input / data.dataset in --config)")
    src.add_argument("--input", help="a corpus: file, folder (class folders or text files), glob, s3:// or gs:// URI")
    src.add_argument("--dataset", help="a raynlp data set name (see `raynlp datasets list`)")
    p.add_argument("--split", choices=["train", "test"], help=f"split of --dataset (default {split})")
    p.add_argument("--format", choices=FORMATS,
                   help="corpus format; inferred from the suffix or layout when left out")
    p.add_argument("--text-column", help="column holding the text in csv/jsonl/parquet input (default text)")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="leave out empty or unreadable files (named and counted in a warning) instead of stopping")
    p.add_argument("--encoding", help="text encoding of the corpus files (default utf-8), e.g. latin-1")
    p.add_argument("--address", help=ADDRESS_HELP)


# The flags of each task beyond --config/--set, as dest → config field; a training task takes only those two.

def _add_training_flags(p: argparse.ArgumentParser) -> dict[str, str]:
    _add_config_flags(p, "train.epochs=3 --set scaling.num_workers=2")
    return {}


def _add_vocab_flags(p: argparse.ArgumentParser) -> dict[str, str]:
    _add_input_flags(p)
    _add_config_flags(p, "size=8000")
    p.add_argument("--size", type=int, help="vocabulary size, reserved tokens included")
    p.add_argument("--output", help="vocabulary file to write, one token per line")
    p.add_argument("--cased", dest="lowercase", action="store_false", default=None,
                   help="keep case (default: lowercase)")
    p.add_argument("--strip-accents", action="store_true", default=None, help="strip accents before learning")
    return {"size": "size", "output": "output", "lowercase": "lowercase", "strip_accents": "strip_accents",
            "address": "address"}


def _add_inference_flags(p: argparse.ArgumentParser, *, split: str, output: str) -> dict[str, str]:
    _add_input_flags(p, split=split)
    p.add_argument("--output", help=output)
    _add_config_flags(p, "num_actors=2")
    p.add_argument("--preset", help="classifier folder, e.g. runs/finetune/preset")
    p.add_argument("--num-actors", type=int, help="inference actors (default 1)")
    p.add_argument("--batch-size", type=int, help="rows per predict call (default 32)")
    return {"preset": "preset", "num_actors": "num_actors", "batch_size": "batch_size", "output": "output",
            "address": "address"}


def _add_serve_flags(p: argparse.ArgumentParser) -> dict[str, str]:
    p.add_argument("--preset", help="classifier folder to serve (or preset: in the config)")
    _add_config_flags(p, "batching.max_batch_size=16")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 accepts calls from outside)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--export", metavar="FILE", help="write the Serve config file and exit")
    p.add_argument("--detach", action="store_true",
                   help="deploy onto a running cluster and exit, leaving the app up (needs --address or RAY_ADDRESS)")
    return {"preset": "preset", "host": "http.host", "port": "http.port", "address": "address"}


_TASK_FLAGS = {
    "vocab": _add_vocab_flags,
    "evaluate": lambda p: _add_inference_flags(p, split="test", output="also write the JSON report to this file"),
    "predict": lambda p: _add_inference_flags(p, split="train", output="new folder for the Parquet shards"),
    "serve": _add_serve_flags,
}


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
                    "holding token_ids and padding_mask (and label; with --mlm also mask_positions, mask_ids, "
                    "mask_weights), ids as int16 where the vocabulary allows; a trainer deals the segment ids of "
                    "single texts as zeros.")
    p.add_argument("--preset", required=True, help="preset whose tokenizer to use (name or folder)")
    _add_input_flags(p)
    p.add_argument("--output", required=True, help="new folder for the Parquet shards")
    p.add_argument("--sequence-length", type=int, default=128, help="packed length (default 128)")
    p.add_argument("--pair-column", help="column holding each row's second text, for sentence pairs (csv, jsonl or "
                                         "parquet input; written with segment_ids)")
    p.add_argument("--mlm", action="store_true", help="also draw masked-LM masks, once (static masking: train on "
                                                      "them with model.masking.dynamic=false; without --mlm, "
                                                      "pretraining masks each batch anew)")
    from raynlp.data.config import MaskingSettings

    masking = MaskingSettings.model_fields
    p.add_argument("--mask-rate", type=float,
                   help=f"masked-LM selection rate (default {masking['selection_rate'].default})")
    p.add_argument("--max-selections", type=int,
                   help=f"masked-LM selections per row (default {masking['max_selections'].default})")
    p.add_argument("--seed", type=int, default=0, help="masking seed (default 0)")
    p.add_argument("--shuffle-seed", type=int, help="write the rows in a random order seeded by this (for a "
                                                     "training split read in a sorted order, as class folders are)")
    from raynlp.data.config import PACKING_ACTORS
    from raynlp.data.tokenize import SMALL_SPLIT_ROWS

    p.add_argument("--num-actors", type=int, help=f"tokenizer actors (default {PACKING_ACTORS}; a named data set's "
                                                  f"split of at most {SMALL_SPLIT_ROWS:,} rows is packed in Ray tasks)")
    p.set_defaults(run=_tokenize)

    from raynlp.tasks import TASKS

    for task in TASKS.values():
        p = commands.add_parser(task.name, help=task.help, description=task.description)
        flags = _TASK_FLAGS.get(task.name, _add_training_flags)(p)
        p.set_defaults(run=_serve if task.name == "serve" else _run_task, flags=flags)

    p = commands.add_parser(
        "classify", help="classify texts with a running raynlp server",
        description="Send texts to a raynlp server's /v1/classify and print label, probability and text per line.")
    p.add_argument("texts", nargs="*", help="texts to classify (default: one per line from standard input)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server URL (default http://127.0.0.1:8000)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for the answer (default 60)")
    p.add_argument("--model", default=None,
                   help="which of the server's models (GET /v1/models lists them; default: its default model)")
    p.add_argument("--token", default=None,
                   help="the server's bearer token, where it requires one (default: RAYNLP_TOKEN, which keeps it "
                        "out of the process list and shell history)")
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
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--size", choices=["full", "tiny"], default="full",
                   help="full: real sizes, the figures README quotes (default); tiny: a small budget at "
                        "which every classifier still beats chance (what the test suite runs)")
    p.set_defaults(run=_demo)

    p = commands.add_parser("bench", help="run a benchmark; writes JSON (and a PNG) with ratios to plain keras-hub")
    p.add_argument("name", choices=BENCHMARKS,
                   help="tokenize: raynlp's tokenizer against keras-hub's preprocessor; train: data-parallel "
                        "fine-tuning against a plain keras-hub fit, each also with a checkpoint every 10 steps; "
                        "pretrain: masked-LM pretraining on packed "
                        "documents against the guide's row-per-document recipe, in real tokens; serve: the batched "
                        "Serve deployment against batching off and the bare predict, under closed-loop load on "
                        "127.0.0.1; gpu: the device check (a 1-GPU fine-tune, a BERT-base-sized masked-LM step "
                        "loop with its model FLOPs utilisation, and bench serve on the GPU), as scripts/gpu_check.sh "
                        "runs it")
    p.add_argument("--output", default="runs/bench", help="folder for results (default runs/bench)")
    p.add_argument("--rows", type=int, default=None,
                   help="rows to use (default: the benchmark's own); pretrain: documents of each corpus")
    p.add_argument("--nodes", type=int, default=None,
                   help="train: what crossing a node costs: 1 worker and N workers on one node against one worker "
                        "on each of N nodes (raylet nodes on this machine, talking over loopback), same global batch; "
                        "writes train_nodes.json")
    p.add_argument("--preset", help="train: the BERT to fine-tune (default bert_mini_en_uncased_scratch); serve: the "
                                    "backbone to serve with a 2-class head (default minilm_l6_en_uncased)")
    p.add_argument("--smoke", action="store_true",
                   help="gpu: every step at toy size on whatever device there is (checks the check, not the GPU)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="gpu: the GPU's dense bfloat16 peak, for a GPU raynlp does not know (H100, H200, A100, L40S "
                        "and L4 it does)")
    p.set_defaults(run=_bench)
    return parser


def _in_this_commands_terms(error: RaynlpError, args) -> RaynlpError:
    """A corpus error in this command's terms: a missing input named by its flag, an unreadable file's error with
    the way to go on that this command takes."""
    from raynlp.data.corpus import CorpusFileError, CorpusPathError
    from raynlp.train.recipes import RECIPES

    error = getattr(error, "cause", error)  # Ray's wrapper of an error raised in a Ray task keeps the original
    if isinstance(error, CorpusPathError) and error.field == "data.input" and getattr(args, "input", None):
        return error.named("--input")
    if not isinstance(error, CorpusFileError):
        return error
    if hasattr(args, "skip_bad_files"):  # a command with the corpus flags
        return error.suggesting(skip="--skip-bad-files", encoding="--encoding latin-1")
    if args.command in RECIPES:
        return error.suggesting(skip="--set data.skip_bad_files=true", encoding="--set data.encoding=latin-1")
    return error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        status = args.run(args)
    except Exception as e:
        found = raynlp_error_behind(e)
        if found is None:
            raise
        found = _in_this_commands_terms(found, args)
        message = str(found).splitlines()[0] if str(found) else type(found).__name__
        print(f"raynlp: error: {message}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
