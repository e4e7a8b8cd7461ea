"""Feed a Ray Data shard into `model.fit` (JAX backend), the same number of steps on every rank.

Under data parallelism every train step is a collective: if one rank runs one step more than another, that rank
waits forever for the others. So the number of steps per epoch is fixed up front from the *global* row count
(`steps_per_epoch`) and every rank yields exactly that many batches per epoch, whatever its shard holds.

`fit` takes the generator itself (Keras' own `fit`, also for keras-hub tasks: see `loop.py`), so batches go from
the shard to the compiled step as numpy arrays, with no `tf.data` in between.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from raynlp.data.columns import derived
from raynlp.errors import RaynlpError


def steps_per_epoch(rows: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps in one epoch over `rows` rows at `batch_size` rows per worker and step.

    Every worker gets an equal share of the rows (`ParquetShard`, or Ray Data's `streaming_split(equal=True)` for
    a streamed split) and drops its last partial batch, so each worker can fill `rows // (batch_size * world_size)`
    local batches.
    """
    steps = rows // (batch_size * world_size)
    if steps < 1:
        raise RaynlpError(
            f"{rows} training rows are fewer than one global batch of {batch_size} x {world_size} workers: "
            "use more data, a smaller batch_size or fewer workers"
        )
    return steps


def shard_batches(
    shard: Any,
    *,
    batch_size: int,
    feature_columns: Sequence[str],
    label_column: str | None,
    weight_column: str | None = None,
    steps: int,
    cache: ShardCache | None = None,
    shuffle_seed: int | None = None,
    rank: int = 0,
    first_epoch: int = 0,
    first_step: int = 0,
    passes: int | None = None,
    transform: Callable[..., dict] | None = None,
    timeout_s: float | None = None,
) -> Iterator[Any]:
    """An endless generator of training batches over `shard`, for `fit(generator, steps_per_epoch=steps)`.

    Args:
        shard: what `ray.train.get_dataset_shard(name)` returns (anything with Ray Data's `iter_batches`).
        batch_size: rows per batch on this worker (the local batch).
        feature_columns: the columns that make the model's inputs, yielded as a dict keyed by column name
            (keras-hub backbones take dicts such as `token_ids`, `segment_ids`, `padding_mask`).
        label_column: the target column, or None for a model that takes features only.
        weight_column: an optional per-row sample weight column (for example masked-LM `mask_weights`).
        steps: batches per epoch, the same on every rank: `steps_per_epoch(rows, batch_size, world_size)`.
        cache: a `ShardCache` to keep the shard in this worker's memory: the first pass anyone asks for reads
            the whole shard into it, and every pass after that (of this or any later generator given the same
            cache) is dealt from memory. Without one, each pass over a streaming shard starts a new Ray Data
            execution, a fixed cost of seconds: worth paying only for a shard larger than memory.
        shuffle_seed: for a streamed shard (no cache), deal every epoch after the first through a shuffle
            buffer of `STREAM_SHUFFLE_BATCHES` batches, seeded by (shuffle_seed, epoch, rank): memory stays
            bounded, and the same epoch deals the same batches whether the run went straight or resumed there.
            (A cache shuffles its own rows: `ShardCache`.)
        rank: this worker's rank, for the shuffle seed.
        first_epoch: the epoch the first pass deals (a resumed run starts later).
        first_step: batches of the first pass to leave out (a run resumed mid-epoch): the pass deals the rest,
            each batch as it was dealt the first time (same rows, same `step` handed to `transform`). A
            streamed shard reads the batches left out and drops them; a cache skips them.
        passes: end after this many passes (None: never). A finite generator ends its last pass reading what
            is left of it, once the consumer asks past the last batch (`collections.deque(gen, maxlen=0)`).
        transform: applied to each batch (a dict of columns) as it is dealt, as
            `transform(batch, epoch=, step=, rank=)`, before the columns are picked: dynamic masked-LM masking
            (`raynlp.data.masked_lm.BatchMasker`). A cache keeps the batches as read, untransformed.
        timeout_s: end the run when the shard gives no batch for this long (`run.feed_timeout_s`): its
            reading tasks wait for resources no node has left, say, and would otherwise wait forever.

    Yields:
        `features`, `(features, labels)` or `(features, labels, weights)`, with numpy arrays.

    Each epoch starts a fresh pass over the shard (Ray Data shards are re-iterable), yields exactly `steps`
    batches, then reads the rest of that pass without yielding it, so the next epoch starts from the top.
    The generator never ends by itself: Keras keeps one iterator across epochs when `steps_per_epoch` is set
    and stops taking batches after `epochs * steps`.

    Raises:
        RaynlpError: when the shard holds fewer than `steps` full batches in a pass (the other ranks would
            otherwise wait for this one forever), or gives none for `timeout_s`.
    """
    if steps < 1:
        raise RaynlpError(f"steps must be at least 1, got {steps}")

    columns = list(feature_columns)

    def deal(batches: Iterator[dict], epoch: int, skip: int) -> Iterator[Any]:
        for step, batch in enumerate(batches):
            if step < skip:
                continue
            if transform is not None:
                batch = transform(batch, epoch=epoch, step=step, rank=rank)
            yield _to_fit_inputs(batch, columns, label_column, weight_column)

    epoch, skip = first_epoch, first_step
    for _ in itertools.count() if passes is None else range(passes):
        if cache is None:
            yield from deal(_one_pass(shard, batch_size, steps, stream_shuffle(shuffle_seed, epoch, rank, batch_size),
                                      timeout_s), epoch, skip)
            epoch += 1  # a pass abandoned midway never gets here
        else:
            cache.read(shard, batch_size=batch_size, steps=steps, timeout_s=timeout_s)
            yield from deal(cache.replay(), cache.epoch, skip)
        skip = 0


STREAM_SHUFFLE_BATCHES = 64


def stream_shuffle(seed: int | None, epoch: int, rank: int, batch_size: int) -> dict:
    """`iter_batches` options that shuffle a streamed epoch: none for the first epoch (the shards were
    shuffled when written) or without a seed; else a buffer of STREAM_SHUFFLE_BATCHES batches of rows."""
    if seed is None or epoch == 0:
        return {}
    return {"local_shuffle_buffer_size": STREAM_SHUFFLE_BATCHES * batch_size,
            "local_shuffle_seed": int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])}


# What a feed that gives no batch for run.feed_timeout_s likely waits for: a Ray Data shard's reading tasks, for a
# CPU beside the workers. A shard that runs no task says what else it waits for (`ParquetShard.stall_advice`).
NO_CPU_TO_READ = "the workers may leave no CPU for reading their data: lower scaling.cpus_per_worker or add nodes"


def _one_pass(shard: Any, batch_size: int, steps: int, shuffle: dict, timeout_s: float | None = None) -> Iterator[dict]:
    """One pass over `shard`: its first `steps` batches; then the rest of the pass, read and dropped."""
    taken = 0
    batches = shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True, **shuffle)
    advice = getattr(shard, "stall_advice", NO_CPU_TO_READ)
    for batch in batches if timeout_s is None else within(batches, timeout_s, advice):
        if taken == steps:
            # Keep reading to the end of the pass: a streaming split moves on to its next epoch only
            # when every consumer has finished the current one.
            continue
        taken += 1
        yield batch
    if taken < steps:
        raise RaynlpError(
            f"this worker's data shard ran out after {taken} of {steps} batches of {batch_size} rows in a pass: "
            "compute steps with steps_per_epoch() from the global row count"
        )


def within(batches: Iterator[dict], timeout_s: float, advice: str = NO_CPU_TO_READ) -> Iterator[dict]:
    """`batches`, read in a thread of their own, ending the run when the next one takes longer than `timeout_s`
    to come, with what Ray says is waiting for resources and `advice`."""
    import queue
    import threading

    box: queue.Queue = queue.Queue(maxsize=1)
    end = object()

    def pull() -> None:
        try:
            for batch in batches:
                box.put(batch)
            box.put(end)
        except BaseException as error:  # handed to the reader
            box.put(error)

    threading.Thread(target=pull, name="raynlp-feed", daemon=True).start()
    while True:
        try:
            item = box.get(timeout=timeout_s)
        except queue.Empty:
            raise RaynlpError(f"this worker's data feed gave no batch for {timeout_s:g} s (run.feed_timeout_s)"
                              f"{_waiting_tasks()}: {advice}") from None
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _waiting_tasks() -> str:
    """Ray's tasks that wait for a node with the resources they ask for, by name ("" if none or unknown)."""
    try:
        from collections import Counter

        from ray.util.state import list_tasks

        waiting = Counter(t.name for t in list_tasks(filters=[("state", "=", "PENDING_NODE_ASSIGNMENT")], limit=100))
    except Exception:  # the state API needs the dashboard; the message stands without it
        return ""
    return ("; waiting for resources: " + ", ".join(f"{name} ×{n}" for name, n in waiting.most_common(3))
            if waiting else "")


class ShardCache:
    """One worker's shard, read once (a `ParquetShard` in a run, or any shard with `iter_batches`) and then dealt
    from memory, one epoch at a time.

    Every pass over a streaming shard is a new Ray Data execution, a fixed cost of seconds, paid again each
    epoch: with a cache, the first pass reads the whole shard and every later one, of this or any later
    generator given the same cache, is served from memory.

    With `shuffle_seed`, epoch e > 0 deals this worker's rows into batches in an order seeded by the seed and e
    (epoch 0 as read): the same order whether the run went straight through or resumed at e. An epoch moves
    the order on only once all its batches were taken; a pass abandoned midway does not.
    """

    def __init__(self, shuffle_seed: int | None = None, first_epoch: int = 0):
        self.batches: list = []
        self.shuffle_seed = shuffle_seed
        self.epoch = first_epoch  # the epoch the next complete pass deals
        self._reading: concurrent.futures.Future | None = None
        self.shard: Any = None  # the shard `start_reading` reads

    def start_reading(self, shard: Any, *, batch_size: int, steps: int, timeout_s: float | None = None) -> None:
        """Read the shard's one pass in a thread from now on, so that the read overlaps what the worker does
        meanwhile (importing Keras, building the model), which the first batch would otherwise wait for. `read`
        waits for it, and raises what it raised."""
        self.shard = shard
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raynlp-shard-cache")
        self._reading = pool.submit(lambda: list(_one_pass(shard, batch_size, steps, {}, timeout_s)))
        pool.shutdown(wait=False)

    def read(self, shard: Any, *, batch_size: int, steps: int, timeout_s: float | None = None) -> None:
        """Hold the shard's first `steps` batches, read once: the read `start_reading` began, else a pass now. A
        no-op once they are held."""
        if self.batches:
            return
        if self._reading is not None:
            self.batches, self._reading = self._reading.result(), None
        else:
            self.batches = list(_one_pass(shard, batch_size, steps, {}, timeout_s))  # the only pass from Ray Data

    def replay(self) -> Iterator[Any]:
        """This epoch's batches; the epoch counts as done once the last one was taken."""
        epoch = self.epoch
        yield from self.dealt(epoch)
        self.epoch = epoch + 1

    def dealt(self, epoch: int) -> Iterator[dict]:
        if self.shuffle_seed is None or epoch == 0:
            yield from self.batches
            return
        whole = {name: np.concatenate([b[name] for b in self.batches]) for name in self.batches[0]}
        size = len(next(iter(self.batches[0].values())))
        order = np.random.default_rng([self.shuffle_seed, epoch]).permutation(size * len(self.batches))
        for step in range(len(self.batches)):
            rows = order[step * size : (step + 1) * size]
            yield {name: column[rows] for name, column in whole.items()}


class ParquetShard:
    """One worker's share of a split kept in memory, read by the worker itself from the split's Parquet shards.

    Rank r of w takes the r-th of w equal runs of the split's first `rows` rows, in the shards' order (files
    sorted by name, as Ray Data lists them; the rows left over are left out, as Ray Data's equal split leaves
    them), and reads only the row groups that hold its run. Read here rather than through
    `ray.train.get_dataset_shard`, a split that is read once and then dealt from memory (`ShardCache`) costs no Ray
    Data split coordinator, a process of its own a split, nor its execution's start; a split streamed every epoch
    still comes through Ray Data.
    """

    # It runs no Ray task: a read that stalls waits on the storage.
    stall_advice = ("reading this worker's share of the shards stalled: check that their storage answers, or raise "
                    "run.feed_timeout_s where it is slow")

    def __init__(self, folder: str, rows: int, rank: int = 0, world_size: int = 1):
        share = rows // world_size
        self.folder, self.start, self.stop = folder, rank * share, (rank + 1) * share

    def iter_batches(self, *, batch_size: int, batch_format: str = "numpy", drop_last: bool = True) -> Iterator[dict]:
        """This share's rows in batches of `batch_size` numpy arrays, the last partial batch left out."""
        assert batch_format == "numpy" and drop_last, "a ParquetShard deals whole batches of numpy arrays"
        rows = self._read()
        for start in range(0, len(next(iter(rows.values()))) - batch_size + 1, batch_size):
            yield {name: column[start : start + batch_size] for name, column in rows.items()}

    def _read(self) -> dict[str, np.ndarray]:
        """This share's rows, reading only the row groups that hold them."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from ray.data.block import BlockAccessor  # reads Ray's tensor columns as numpy arrays

        from raynlp._internal import storage

        tables, offset = [], 0
        for path in storage.files(self.folder, ".parquet"):
            fs, inner = storage.filesystem(path) if storage.is_uri(path) else (None, path)
            shard = pq.ParquetFile(inner, filesystem=fs)
            for group in range(shard.num_row_groups):
                count = shard.metadata.row_group(group).num_rows
                if offset < self.stop and offset + count > self.start:
                    first, end = max(self.start - offset, 0), min(self.stop - offset, count)
                    tables.append(shard.read_row_group(group).slice(first, end - first))
                offset += count
            if offset >= self.stop:
                break
        return BlockAccessor.for_block(pa.concat_tables(tables)).to_numpy()


def fits_in_memory(total_bytes: int, world_size: int, limit_bytes: int = 1 << 30) -> bool:
    """Whether one worker's share of shards taking `total_bytes` as numpy arrays (`PreparedData.row_bytes`) takes
    at most `limit_bytes` (1 GiB)."""
    return total_bytes / max(world_size, 1) <= limit_bytes


def _to_fit_inputs(
    batch: dict[str, np.ndarray], columns: list[str], label_column: str | None, weight_column: str | None
) -> Any:
    """One Ray Data numpy batch as the tuple Keras `fit` unpacks into x, y and sample_weight."""
    features = {name: batch[name] if name in batch else derived(name, batch) for name in columns}
    missing = [c for c in [label_column, weight_column] if c is not None and c not in batch]
    missing = [name for name, value in features.items() if value is None] + missing
    if missing:
        raise RaynlpError(f"the training data has no column(s) {missing}; it has {sorted(batch)}")
    if label_column is None:
        return features
    if weight_column is None:
        return features, batch[label_column]
    return features, batch[label_column], batch[weight_column]
