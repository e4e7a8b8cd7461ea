"""raynlp's data-parallel fine-tuning against a plain keras-hub `fit` in one process: same model, data, global batch.

The work: fine-tune a `BertTextClassifier` (`PRESET`, BERT-Mini from random initial weights, or the BERT
`--preset` names) on the Rotten Tomatoes training sentences (no validation), for a few epochs, at the same global
batch size everywhere:

- `keras_hub_fit_1_process`: the notebook way: tokenize in the process, `fit` on numpy arrays;
- `keras_hub_fit_in_ray_task`: the same function run as a Ray task (1 CPU) on the local Ray cluster: what running
  inside Ray costs by itself (Ray's own processes share the machine, and Ray runs its workers at a lower priority),
  with no raynlp code on the path;
- `keras_hub_fit_in_ray_train_worker`: the same function as the one worker of a Ray Train run (`JaxTrainer`):
  what Ray Train's worker costs by itself, still with no raynlp code;
- `raynlp_1_worker`, `raynlp_2_workers`: `raynlp.train.train` on the local Ray cluster, per-worker batch
  `global_batch / workers`.

The plain fit and raynlp's ways also run with a checkpoint every `checkpoint_every` optimizer steps
(`…_checkpointing`): the plain fit with Keras' `ModelCheckpoint(save_freq=N)` writing the whole model and its optimizer (a `.keras`
file), raynlp with `train.checkpoint_every_steps=N` (weights and optimizer state through Ray Train's report).
`checkpoint_cost` gives, for each, the examples/s against the same way without, and the seconds a checkpoint
adds to the step that writes it: from the checkpointing run's own step clock (`raynlp.bench._clock`), the median
time of the steps that checkpoint less the median of the others in the steady epochs (separate runs' epoch times
differ by more than their checkpoints cost on this machine). Checkpoints do not change the training, so both end
at the same losses.

`raynlp bench train --nodes N` asks what crossing a node costs instead, on Ray clusters of several raylet nodes on
this machine (`ray.cluster_utils.Cluster`), every worker of 1.5 CPUs, the same global batch: `raynlp_1_worker` and
`raynlp_N_workers_1_node` on one node of 2N CPUs, `raynlp_N_workers_N_nodes` one worker on each of N nodes of 2
CPUs. The nodes share this machine and talk over loopback, so the gap between the last two is an upper bound on
what the software adds to a crossing (a real network adds its own time on top); each run's `nodes` counts the
nodes its workers ran on. Each way runs once here, its figures in the same shape as above (over its one run).

Ratios are given to both baselines: to the plain process (the issue's measure) and to the fit inside a Ray task,
which isolates what raynlp adds on top of Ray.

Each way reports its training loss per epoch: with one worker raynlp trains on the same rows in the same order
from the same initial weights as the plain `fit`, so the two agree; with 2 workers each global batch is made
of both workers' shards (other rows together), so its losses differ a little.

The three ways the goals compare (the plain process, the Ray task, raynlp on 1 worker) run twice, first in
order and at the end in reverse order, the other ways once between (a b c … c b a): the machine's speed drifts over
the minutes a bench takes by more than the gaps between ways, and a linear drift then reaches each of the three
alike, while the ways between sit within their span (`rounds=1` runs each way once, for a quick look). A way's
figures are over its runs (each run's own under `runs`; the per-step ratio of each of the raynlp runs to the Ray
task's in the same round in `median_step_ratio_to_keras_hub_fit_in_ray_task_by_run`); `order` lists the runs as
they ran.

Throughput is examples per second over the epochs after the first (the first one includes compilation, and
for raynlp reading the shard), so each way is measured in its steady state. Every way carries a step clock, so
every way waits for each step's loss alike (Keras then runs batch-end callbacks in the training loop, not
asynchronously); `median_step_*` gives the median step of those epochs, the cost of a training step, which an
epoch that stalls once does not move. Wall time from call to result is in each run's figures (for raynlp it
includes tokenizing on Ray Data, starting workers and exporting the preset; raynlp's workers also load what
this machine compiled before from JAX's compilation cache, where the plain ways compile afresh: compare wall
times with `JAX_ENABLE_COMPILATION_CACHE=false`).
"""

import functools
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from raynlp.bench._clock import step_clock
from raynlp.bench._report import machine, ratio_bars, write_report

logger = logging.getLogger(__name__)

PRESET = "bert_mini_en_uncased_scratch"
SEQUENCE_LENGTH = 64
GLOBAL_BATCH = 32
EPOCHS = 3
DEFAULT_ROWS = 3200
CHECKPOINT_EVERY = 10  # optimizer steps


# `--nodes`: each node holds one worker of WORKER_CPUS beside the tasks that read its data.
NODE_CPUS = 2
WORKER_CPUS = 1.5


def _config(out: Path, rows: int, workers: int, preset: str, checkpoint_every: int | None = None,
            settings: tuple[str, ...] = ()):
    from raynlp import datasets
    from raynlp.train import load_config

    train_file = datasets.fetch("rotten_tomatoes") / "train.parquet"
    return load_config(None, [
        "task=finetune", f"preset={preset}", f"data.train={train_file}", f"data.max_train_rows={rows}",
        f"data.sequence_length={SEQUENCE_LENGTH}", f"train.epochs={EPOCHS}", f"train.batch_size={GLOBAL_BATCH // workers}",
        f"scaling.num_workers={workers}", "optimizer.learning_rate=1e-4", "optimizer.schedule=constant",
        "train.shuffle=false", "model.dropout=0.1", f"run.output={out}",
        *([f"train.checkpoint_every_steps={checkpoint_every}"] if checkpoint_every else []), *settings,
    ])


def _plain_fit(folder: Path, rows: int, preset: str, checkpoint_every: int | None = None) -> dict:
    import keras
    import keras_hub

    from raynlp import datasets
    from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
    from raynlp.presets import resolve

    start = time.perf_counter()
    table = datasets.read_split("rotten_tomatoes", "train").slice(0, rows)
    preset_dir = resolve(preset)
    features = FastWordPieceTokenizer.from_keras_hub_preset_dir(preset_dir).pack(
        table["text"].to_pylist(), sequence_length=SEQUENCE_LENGTH)
    labels = np.asarray(table["label"].to_pylist())
    keras.utils.set_random_seed(0)
    model = keras_hub.models.BertTextClassifier.from_preset(preset_dir, num_classes=2, preprocessor=None,
                                                            dropout=0.1)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    steps = rows // GLOBAL_BATCH
    x = {k: v[: steps * GLOBAL_BATCH] for k, v in features.items()}
    y = labels[: steps * GLOBAL_BATCH]

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    timer = Timer()
    Path(folder).mkdir(parents=True, exist_ok=True)
    callbacks = [timer]
    if checkpoint_every:
        callbacks.append(keras.callbacks.ModelCheckpoint(f"{folder}/checkpoint.keras", save_freq=checkpoint_every))
    callbacks.append(step_clock(f"{folder}/clock.json"))
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, callbacks=callbacks, verbose=0)
    steady = timer.seconds[1:]
    return {"examples_per_second": round(steps * GLOBAL_BATCH * len(steady) / sum(steady), 1),
            **_step_figures(f"{folder}/clock.json"),
            "epoch_seconds": [round(s, 2) for s in timer.seconds], "wall_seconds": round(time.perf_counter() - start, 1),
            "epoch_losses": [round(float(v), 4) for v in history.history["loss"]], "clock": f"{folder}/clock.json"}


def _plain_fit_in_ray_task(folder: Path, rows: int, preset: str) -> dict:
    """The plain fit as a Ray task of 1 CPU: Ray around it, no raynlp code."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(_plain_fit).remote(folder, rows, preset))


def _plain_fit_in_train_worker(folder: Path, rows: int, preset: str) -> dict:
    """The plain fit as the one worker of a Ray Train run (`JaxTrainer`, 1 CPU): Ray Train's worker around it,
    no raynlp code."""
    import json

    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxTrainer

    shutil.rmtree(folder, ignore_errors=True)
    figures = Path(folder) / "figures.json"

    def loop() -> None:
        figures.write_text(json.dumps(_plain_fit(folder, rows, preset)))

    JaxTrainer(loop, scaling_config=ScalingConfig(num_workers=1),
               run_config=RunConfig(storage_path=str(folder), name="ray_train")).fit()
    return json.loads(figures.read_text())


def _step_figures(*clocks: str) -> dict:
    """The median step of the epochs after the first (each epoch's last step left out: an epoch's own end work
    lands there), from the step clocks of one way's runs, and the examples/s it makes: a stalled epoch does not
    move it."""
    import json

    seconds = [np.diff([epoch["started"], *epoch["step_ends"]])[:-1]
               for clock in clocks for epoch in json.loads(Path(clock).read_text())[1:]]
    median = float(np.median(np.concatenate(seconds)))
    # Both to 4 significant digits, so that either one read back gives the other to 1e-3.
    return {"median_step_seconds": float(f"{median:.4g}"),
            "median_step_examples_per_second": float(f"{GLOBAL_BATCH / median:.4g}")}


def _raynlp_fit(out: Path, rows: int, workers: int, preset: str, checkpoint_every: int | None = None,
                settings: tuple[str, ...] = ()) -> dict:
    from raynlp.train import train

    out = out.resolve()  # the workers run in their own working folders
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    clock = out.parent / f"{out.name}_clock.json"
    placement = out.parent / f"{out.name}_nodes"
    shutil.rmtree(placement, ignore_errors=True)
    placement.mkdir(parents=True)
    callbacks = [functools.partial(_node_record, str(placement)), functools.partial(step_clock, str(clock))]
    result = train(_config(out, rows, workers, preset, checkpoint_every, settings), callbacks=callbacks)
    steady = result.metrics[1:]
    examples = sum(m["examples_per_second"] * m["seconds"] for m in steady)
    return {"examples_per_second": round(examples / sum(m["seconds"] for m in steady), 1),
            **_step_figures(str(clock)),
            "epoch_seconds": [m["seconds"] for m in result.metrics],
            "wall_seconds": round(time.perf_counter() - start, 1),
            "epoch_losses": [round(m["loss"], 4) for m in result.metrics],
            "nodes": len({p.read_text() for p in placement.glob("rank*")}), "clock": str(clock)}


def _over_runs(runs: list[dict]) -> dict:
    """One way's figures over its runs (one or two): examples/s over all their steady epochs (each run trains the
    same examples, so the harmonic mean of theirs), the median step of all their steady steps, the losses (every
    run's are the same) and each run's own figures (`runs`)."""
    return {"examples_per_second": round(len(runs) / sum(1 / run["examples_per_second"] for run in runs), 1),
            **_step_figures(*[run["clock"] for run in runs]), "epoch_losses": runs[0]["epoch_losses"], "runs": runs}


def _node_record(folder: str):
    """A Keras callback that writes, a file a rank, the id of the Ray node the worker trains on."""
    import keras
    import ray

    class NodeRecord(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            rank = ray.train.get_context().get_world_rank()
            Path(folder, f"rank{rank}").write_text(ray.get_runtime_context().get_node_id())

    return NodeRecord()


def _checked_rows(rows: int | None) -> int:
    """`rows`, or the default; refused below two steps an epoch (an epoch's last step is left out of its timing)."""
    from raynlp.errors import RaynlpError

    if rows is not None and rows < 2 * GLOBAL_BATCH:
        raise RaynlpError(f"bench train needs --rows of at least {2 * GLOBAL_BATCH} (two steps of {GLOBAL_BATCH} "
                          f"an epoch), got {rows}")
    return rows or DEFAULT_ROWS


def _run_order(compared: list[str], between: list[str], rounds: int) -> list[str]:
    """The order the ways run in: the compared ones first, the others between, and with 2 rounds the compared
    ones again, last and in reverse (a b c … c b a)."""
    return [*compared, *between, *(reversed(compared) if rounds == 2 else ())]


def run_train_bench(output_dir: Path, rows: int | None = None, more_workers: tuple[int, ...] = (2,),
                    checkpoint_every: int = CHECKPOINT_EVERY, rounds: int = 2, preset: str = PRESET) -> Path:
    """Every way in the module's docstring but `--nodes`'s; `more_workers`: the worker counts raynlp also runs
    beside 1; `rounds`: how many times the compared ways run (1 or 2)."""
    from raynlp._internal.cluster import ensure_ray
    from raynlp.errors import RaynlpError

    if rounds not in (1, 2):
        raise RaynlpError(f"bench train runs the compared ways in 1 or 2 rounds, not {rounds}")
    rows = _checked_rows(rows)
    logger.info("train bench: %s, %d rows, sequence length %d, global batch %d, %d epochs, checkpoints every %d "
                "steps", preset, rows, SEQUENCE_LENGTH, GLOBAL_BATCH, EPOCHS, checkpoint_every)
    runs = (output_dir / "runs").resolve()  # the workers run in their own working folders
    ensure_ray()
    compared = {"keras_hub_fit_1_process": functools.partial(_plain_fit, rows=rows, preset=preset),
                "keras_hub_fit_in_ray_task": functools.partial(_plain_fit_in_ray_task, rows=rows, preset=preset),
                "raynlp_1_worker": functools.partial(_raynlp_fit, rows=rows, workers=1, preset=preset)}
    between = {"keras_hub_fit_1_process_checkpointing": functools.partial(
                   _plain_fit, rows=rows, preset=preset, checkpoint_every=checkpoint_every),
               "keras_hub_fit_in_ray_train_worker": functools.partial(_plain_fit_in_train_worker, rows=rows,
                                                                          preset=preset),
               "raynlp_1_worker_checkpointing": functools.partial(
                   _raynlp_fit, rows=rows, workers=1, preset=preset, checkpoint_every=checkpoint_every)}
    for count in more_workers:
        between[f"raynlp_{count}_workers"] = functools.partial(_raynlp_fit, rows=rows, workers=count, preset=preset)
        between[f"raynlp_{count}_workers_checkpointing"] = functools.partial(
            _raynlp_fit, rows=rows, workers=count, preset=preset, checkpoint_every=checkpoint_every)
    ways = {**compared, **between}
    order = _run_order(list(compared), list(between), rounds)
    runs_of: dict[str, list[dict]] = {name: [] for name in ways}
    for name in order:
        runs_of[name].append(ways[name](runs / (f"{name}_run{len(runs_of[name]) + 1}" if name in compared else name)))
    results = {name: _over_runs(way_runs) for name, way_runs in runs_of.items()}
    base = results["keras_hub_fit_1_process"]["examples_per_second"]
    in_ray = results["keras_hub_fit_in_ray_task"]["examples_per_second"]
    step_in_ray = results["keras_hub_fit_in_ray_task"]["median_step_examples_per_second"]
    step_in_train_worker = results["keras_hub_fit_in_ray_train_worker"]["median_step_examples_per_second"]
    report = {
        "benchmark": "train",
        "preset": preset, "rows": rows, "sequence_length": SEQUENCE_LENGTH, "global_batch": GLOBAL_BATCH,
        "epochs": EPOCHS, "checkpoint_every_steps": checkpoint_every,
        "machine": machine(),
        "results": results,
        "ratio_to_keras_hub_fit": {name: round(r["examples_per_second"] / base, 2) for name, r in results.items()},
        "ratio_to_keras_hub_fit_in_ray_task": {name: round(r["examples_per_second"] / in_ray, 2)
                                               for name, r in results.items() if name.startswith("raynlp")},
        "median_step_ratio_to_keras_hub_fit_in_ray_task": {
            name: round(r["median_step_examples_per_second"] / step_in_ray, 3)
            for name, r in results.items() if name.startswith("raynlp") or name.endswith("train_worker")},
        "median_step_ratio_to_keras_hub_fit_in_ray_task_by_run": [
            round(one["median_step_examples_per_second"] / task["median_step_examples_per_second"], 3)
            for one, task in zip(results["raynlp_1_worker"]["runs"], results["keras_hub_fit_in_ray_task"]["runs"])],
        "median_step_ratio_to_keras_hub_fit_in_ray_train_worker": {
            name: round(r["median_step_examples_per_second"] / step_in_train_worker, 3)
            for name, r in results.items() if name.startswith("raynlp")},
        "checkpoint_cost": {name: _checkpoint_cost(results[name], results[f"{name}_checkpointing"], checkpoint_every)
                            for name in results if f"{name}_checkpointing" in results},
        "order": order,
        "note": ("the plain process, the Ray task and raynlp on 1 worker run first and last, in reverse order the "
                 "second time, the other ways once between" if rounds == 2 else "every way runs once") +
                " (`order`); a way's figures are over its runs (each run's in `runs`); examples/s over the epochs "
                "after the first (steady state); the workers share this machine's cores, so 2 workers on one machine "
                "measure the cost of synchronisation, not a speed-up; the fit in a Ray task is the plain fit with Ray "
                "around it, no raynlp code. Wall times (each run's): raynlp's workers load programs compiled before "
                "from JAX's compilation cache (off: JAX_ENABLE_COMPILATION_CACHE=false). median_step_*: from the step "
                "clocks of a way's runs (every way waits for each step's loss alike), the median step of all their "
                "epochs after the first, which a stalled epoch does not move; the fit in a Ray Train worker is the "
                "plain fit as the one worker of a JaxTrainer run, no raynlp code. checkpoint_cost: examples/s with "
                "checkpoints against without (separate runs), and the seconds a checkpoint adds to the step that "
                "writes it (the checkpointing run's step clock: median of those steps less the median of the others, "
                "epochs after the first).",
    }
    path = write_report(output_dir, "train", report, _plot)
    logger.info("train bench: %s; checkpoints: %s", report["ratio_to_keras_hub_fit"], report["checkpoint_cost"])
    return path


def run_train_bench_across_nodes(output_dir: Path, rows: int | None = None, nodes: int = 2,
                                 preset: str = PRESET) -> Path:
    """1 worker, `nodes` workers on one node and one worker on each of `nodes` nodes, all on this machine, against
    the plain fit (see the module's docstring); writes `train_nodes.json`."""
    from raynlp._internal.cluster import nodes_on_this_machine

    rows = _checked_rows(rows)
    logger.info("train bench across nodes: %s, %d rows, global batch %d, workers of %g CPUs; 1 node of %g CPUs, "
                "then %d of %g", preset, rows, GLOBAL_BATCH, WORKER_CPUS, NODE_CPUS * nodes, nodes, NODE_CPUS)
    runs = output_dir / "runs_nodes"
    results = {"keras_hub_fit_1_process": _over_runs([_plain_fit(runs.resolve() / "keras_hub_fit_1_process", rows, preset)])}
    # Every node is on this machine, so each sees the output folder.
    settings = (f"scaling.cpus_per_worker={WORKER_CPUS}", "run.shared_filesystem=true")
    with nodes_on_this_machine(NODE_CPUS * nodes) as cluster:
        for count, name in ((1, "raynlp_1_worker"), (nodes, f"raynlp_{nodes}_workers_1_node")):
            results[name] = _over_runs([_raynlp_fit(runs / name, rows, count, preset,
                                                    settings=(*settings, f"run.address={cluster.address}"))])
    with nodes_on_this_machine(*[NODE_CPUS] * nodes) as cluster:
        name = f"raynlp_{nodes}_workers_{nodes}_nodes"
        results[name] = _over_runs([_raynlp_fit(runs / name, rows, nodes, preset,
                                                settings=(*settings, f"run.address={cluster.address}"))])
    base = results["keras_hub_fit_1_process"]["examples_per_second"]
    one_node = results[f"raynlp_{nodes}_workers_1_node"]["examples_per_second"]
    report = {
        "benchmark": "train_nodes",
        "preset": preset, "rows": rows, "sequence_length": SEQUENCE_LENGTH, "global_batch": GLOBAL_BATCH,
        "epochs": EPOCHS, "nodes": nodes, "node_cpus": NODE_CPUS, "worker_cpus": WORKER_CPUS,
        "machine": machine(),
        "results": results,
        "ratio_to_keras_hub_fit": {name: round(r["examples_per_second"] / base, 2) for name, r in results.items()},
        "crossing_nodes": round(results[f"raynlp_{nodes}_workers_{nodes}_nodes"]["examples_per_second"] / one_node, 3),
        "note": "examples/s over the epochs after the first; every node is a raylet on this one machine, so the "
                "workers share its cores whatever the layout, and crossing a node goes over loopback: "
                "crossing_nodes (N workers on N nodes against N on one node) is what the software adds to a "
                "crossing, at most; a real network adds its own time on top.",
    }
    path = write_report(output_dir, "train_nodes", report, _plot)
    logger.info("train bench across nodes: %s; crossing nodes: %sx", report["ratio_to_keras_hub_fit"],
                report["crossing_nodes"])
    return path


def _checkpoint_cost(without: dict, with_checkpoints: dict, every: int) -> dict:
    """What a checkpoint every `every` steps costs: examples/s against the same way without, and the seconds it adds
    to the step that writes it (median of those steps less the median of the others, epochs after the first; an
    epoch's last step is left out, where an epoch's own end work lands in the plain fit)."""
    import json

    epochs = [epoch for run in with_checkpoints["runs"] for epoch in json.loads(Path(run["clock"]).read_text())[1:]]
    writing, other = [], []
    for epoch in epochs:
        ends = np.asarray([epoch["started"], *epoch["step_ends"]])
        for step, seconds in enumerate(np.diff(ends)[:-1], start=1):
            (writing if step % every == 0 else other).append(seconds)
    return {"examples_per_second_ratio": round(with_checkpoints["examples_per_second"] / without["examples_per_second"], 3),
            "checkpoints_timed": len(writing),
            "seconds_per_checkpoint": round(float(np.median(writing) - np.median(other)), 3),
            "median_step_seconds": round(float(np.median(other)), 3)}


def _plot(report: dict, path: Path) -> None:
    ratio_bars(path, speeds={w: r["examples_per_second"] for w, r in report["results"].items()},
               ratios=report["ratio_to_keras_hub_fit"], xlabel="examples / s (steady state)",
               title=f"Fine-tune {report['preset']}, global batch {report['global_batch']} "
                     f"({report['machine']['cpus']} CPU cores)")
