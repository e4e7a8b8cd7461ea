"""The data-parallel training core, proven on a real local Ray cluster with 2 CPU workers.

What the Ray runs prove:
- 2 workers x batch 8 give the same weights as 1 process x batch 16 over the same rows (parallel math),
- every rank ends with identical weights, and without the data-parallel setup the ranks diverge (control),
- ranks that build different initial weights are refused before training,
- Ray Data shards fed through `shard_batches` train, and leave every rank identical.
Without Ray: `fit` takes the batches in order, and checkpoints round-trip in one process.

Two Ray runs: "parallel" (BERT, then a dense model over Ray Data shards in the same workers) and "control"
(dense, no data-parallel setup). Resuming a run (within an epoch, through a killed worker, bit for bit) is
tests/long_runs_test.py's; resuming in one process, below. BERT is a tiny
keras-hub BertTextClassifier (6,050 parameters); the dense model stands in where any model would do, as it
builds and compiles faster.
Each Ray run costs mostly start-up: worker processes, imports, building and compiling the models.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time

import numpy as np
import pytest

from raynlp.errors import RaynlpError
from raynlp.train._internal.feeding import ShardCache, shard_batches, steps_per_epoch

SEED = 1234
VOCABULARY, SEQUENCE = 200, 16
LOCAL_BATCH = 8
STEPS = 4  # per epoch, in the runs fed from numpy
FEATURES = ["token_ids", "segment_ids", "padding_mask"]  # BERT's inputs
DENSE_FEATURES = ["token_ids", "padding_mask"]
PARALLEL_TOLERANCE = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# What every worker (and the single-process reference) runs.


def make_rows(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token sequences with a learnable label (is the second token in the lower half of the vocabulary)."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, VOCABULARY, size=(rows, SEQUENCE)).astype("int32")
    lengths = rng.integers(SEQUENCE // 2, SEQUENCE + 1, size=rows)
    padding_mask = np.arange(SEQUENCE)[None, :] < lengths[:, None]
    return {
        "token_ids": np.where(padding_mask, token_ids, 0).astype("int32"),
        "segment_ids": np.zeros((rows, SEQUENCE), "int32"),
        "padding_mask": padding_mask,
        "label": (token_ids[:, 1] < VOCABULARY // 2).astype("int32"),
    }


def build_classifier():
    """A tiny keras-hub BERT text classifier, compiled with Adam (whose moments the checkpoints must carry)."""
    import keras
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=SEQUENCE, dropout=0.0,
    )
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None, dropout=0.0)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
    )
    return model


def build_dense():
    """A tiny plain Keras model over two of the same columns: compiles in a second, for the tests without Ray."""
    import keras

    inputs = {name: keras.Input((SEQUENCE,), name=name, dtype="float32") for name in DENSE_FEATURES}
    hidden = keras.layers.Concatenate()([inputs["token_ids"] / VOCABULARY, inputs["padding_mask"]])
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(hidden)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class OrderedRows:
    """Stands in for a Ray Data shard with a known order: this rank's slice of every global batch.

    Global batch k holds rows [k*G, (k+1)*G) with G = batch_size * world_size; rank r takes the r-th run of
    batch_size rows in it, as data parallelism joins the local batches in rank order.
    """

    def __init__(self, data: dict[str, np.ndarray], rank: int, world_size: int):
        self.data, self.rank, self.world_size = data, rank, world_size

    def iter_batches(self, *, batch_size, batch_format, drop_last):
        assert batch_format == "numpy" and drop_last
        rows, global_batch = len(self.data["label"]), batch_size * self.world_size
        for start in range(0, rows - global_batch + 1, global_batch):
            first = start + self.rank * batch_size
            yield {name: column[first : first + batch_size] for name, column in self.data.items()}


def variables_of(model) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.variables]


def train_worker(config: dict) -> None:
    """The Ray Train loop: set up data parallelism, then train what `config` asks for.

    Phase 1 trains over `OrderedRows` from `config["rows"]`, reporting (and checkpointing) every epoch. Phase 2, when `config["ray_data_steps"]` is set, trains a
    second model over this worker's Ray Data shard, then (phase 3) builds differently seeded replicas, then
    (phase 4) the control. Only rank 0's reported metrics reach the driver, so every
    rank leaves its weights in files under `config["out"]` instead.
    """
    import keras
    import ray.train

    from raynlp.train._internal.checkpoint import ReportCallback, restore_from_ray
    from raynlp.train._internal.distributed import check_replicas_agree, setup_data_parallel

    info = setup_data_parallel(use_gpu=False, seed=SEED)
    out = config["out"]

    # Phase 1. BERT where the run checks the parallel math; the dense model where any model would do.
    model, features = (build_classifier(), FEATURES) if config["model"] == "bert" else (build_dense(), DENSE_FEATURES)
    initial = variables_of(model)
    metadata = restore_from_ray(model)  # None: a new run
    check_replicas_agree(model, info)
    shard = OrderedRows(config["rows"], info.rank, info.world_size)
    keras.Model.fit(  # as the loop does: Keras' own fit takes the generator, also for a keras-hub task
        model,
        shard_batches(shard, batch_size=LOCAL_BATCH, feature_columns=features, label_column="label", steps=STEPS),
        steps_per_epoch=STEPS,
        epochs=config["epochs"],
        initial_epoch=metadata["epoch"] if metadata else 0,
        callbacks=[
            ReportCallback(
                info, local_batch_size=LOCAL_BATCH, steps_per_epoch=STEPS, extra={"test": True},
                # A keras-hub preset beside the raw variables, saved by rank 0 alone with the distribution off.
                write_extra=(lambda folder, epoch_end: model.save_to_preset(os.path.join(folder, "preset")))
                if config["model"] == "bert" else None,
            )
        ],
        verbose=0,
    )
    np.savez(os.path.join(out, f"rank{info.rank}.npz"), *variables_of(model))
    if info.is_chief:
        np.savez(os.path.join(out, "initial.npz"), *initial)

    # Phase 2: the Ray Data path, in the same workers to spare a run's start-up.
    steps = config.get("ray_data_steps")
    if not steps:
        return
    keras.utils.set_random_seed(SEED)
    model = build_dense()
    initial = variables_of(model)
    shard = ray.train.get_dataset_shard("train")
    history = model.fit(
        shard_batches(shard, batch_size=LOCAL_BATCH, feature_columns=DENSE_FEATURES, label_column="label", steps=steps),
        steps_per_epoch=steps,
        epochs=3,
        verbose=0,
    )
    np.savez(os.path.join(out, f"ray_data_rank{info.rank}.npz"), *variables_of(model))
    if info.is_chief:
        np.savez(os.path.join(out, "ray_data_initial.npz"), *initial)
        with open(os.path.join(out, "ray_data_loss.json"), "w") as f:
            json.dump(history.history["loss"], f)

    # Phase 3: ranks that build different initial weights (another seed on rank 1) are caught before training.
    keras.utils.set_random_seed(SEED + info.rank)
    try:
        check_replicas_agree(build_dense(), info)
        caught = "agreed"
    except RaynlpError as e:
        caught = str(e)
    with open(os.path.join(out, f"seeds_rank{info.rank}.txt"), "w") as f:
        f.write(caught)

    # Phase 4, the control: the same model and rows with the distribution off, in the same workers. Each rank is
    # then a plain process training on its own slice alone, so the ranks must end apart (the checks above can fail).
    from raynlp.train._internal.distributed import distribution_off

    with distribution_off():
        keras.utils.set_random_seed(SEED)
        model = build_dense()
        shard = OrderedRows(config["rows"], info.rank, info.world_size)
        keras.Model.fit(model, shard_batches(shard, batch_size=LOCAL_BATCH, feature_columns=DENSE_FEATURES,
                                             label_column="label", steps=STEPS),
                        steps_per_epoch=STEPS, epochs=1, verbose=0)
        np.savez(os.path.join(out, f"control_rank{info.rank}.npz"), *variables_of(model))


def run_trainer(tmp_dir, name: str, *, workers: int = 2, datasets=None, **config):
    """One JaxTrainer run on CPU workers; returns (result, the folder the ranks wrote to, wall seconds)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxTrainer

    out = tmp_dir / f"{name}-out"
    out.mkdir()
    started = time.perf_counter()
    result = JaxTrainer(
        train_worker,
        train_loop_config={**config, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
        datasets=datasets,
        run_config=RunConfig(storage_path=str(tmp_dir / "storage"), name=name),
    ).fit()
    seconds = time.perf_counter() - started
    print(f"{name}: {workers} workers, {seconds:.1f} s")
    assert result.error is None, result.error
    return result, out, seconds


def load_arrays(path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    return max(float(np.max(np.abs(x.astype("float64") - y.astype("float64")), initial=0.0)) for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------------------------
# Without Ray: feeding and checkpoint files.


class ListShard:
    def __init__(self, rows: int):
        self.rows = make_rows(rows)
        self.passes = 0

    def iter_batches(self, *, batch_size, batch_format, drop_last, local_shuffle_buffer_size=None,
                     local_shuffle_seed=None):
        self.passes += 1
        rows = len(self.rows["label"])
        # Stands in for Ray Data's seeded local shuffle (a buffer as large as the shard).
        order = np.random.default_rng(local_shuffle_seed).permutation(rows) if local_shuffle_seed else np.arange(rows)
        for start in range(0, rows - batch_size + 1, batch_size):
            yield {name: column[order[start : start + batch_size]] for name, column in self.rows.items()}


def test_shard_batches_yields_exactly_steps_per_epoch_then_restarts():
    shard = ListShard(rows=50)  # 6 full batches of 8 per pass, 2 rows left over
    batches = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=4)
    first_epoch = [next(batches) for _ in range(4)]
    second_epoch_first = next(batches)
    assert shard.passes == 2  # the 2 unused batches were read (drained), then a new pass began
    features, labels = first_epoch[0]
    assert sorted(features) == sorted(FEATURES) and features["token_ids"].shape == (8, SEQUENCE)
    assert labels.shape == (8,)
    np.testing.assert_array_equal(second_epoch_first[0]["token_ids"], features["token_ids"])


def test_shard_cache_reads_the_shard_once_whoever_asks_first():
    shard = ListShard(rows=50)
    cache = ShardCache()
    probe = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=4, cache=cache)
    next(probe)
    probe.close()
    assert shard.passes == 1 and len(cache.batches) == 4  # a probe for one batch reads the whole pass into memory
    batches = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=4, cache=cache)
    epochs = [[next(batches) for _ in range(4)] for _ in range(3)]
    assert shard.passes == 1  # every epoch after that comes from memory
    for later in epochs[1:]:
        for a, b in zip(epochs[0], later):
            np.testing.assert_array_equal(a[0]["token_ids"], b[0]["token_ids"])
    again = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=4, cache=cache)
    next(again)
    assert shard.passes == 1  # a new generator over the same cache does not read the shard either


class CountedShard(ListShard):
    """A shard that notes each batch it gives, and whether a batch was asked for on the caller's thread."""

    def __init__(self, rows: int):
        super().__init__(rows)
        self.given, self.threads = 0, set()

    def iter_batches(self, **options):
        for batch in super().iter_batches(**options):
            self.given += 1
            self.threads.add(threading.current_thread().name)
            yield batch


def test_a_cache_that_started_reading_holds_the_pass_before_anyone_asks_and_raises_what_the_read_raised():
    """The worker starts its caches reading before it imports Keras and builds the model (`loop.py`)."""
    shard = CountedShard(rows=50)
    cache = ShardCache()
    cache.start_reading(shard, batch_size=8, steps=4)
    deadline = time.monotonic() + 10
    while shard.given < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert shard.passes == 1 and shard.given == 6  # the whole pass read (4 batches kept), nobody having asked
    assert threading.current_thread().name not in shard.threads
    batches = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=4, cache=cache)
    epochs = [[next(batches)[1] for _ in range(4)] for _ in range(2)]
    assert shard.passes == 1 and len(cache.batches) == 4  # dealt from that read, every epoch
    expected = [shard.rows["label"][i * 8 : (i + 1) * 8] for i in range(4)]
    for epoch in epochs:
        assert all(np.array_equal(a, b) for a, b in zip(epoch, expected))

    short = ShardCache()
    short.start_reading(ListShard(rows=20), batch_size=8, steps=4)
    with pytest.raises(RaynlpError, match="ran out after 2 of 4 batches"):
        next(shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=4, cache=short))


def test_shuffled_cache_deals_the_same_rows_in_a_new_order_each_epoch():
    shard = ListShard(rows=48)
    shard.rows["token_ids"][:, 0] = np.arange(48)  # a row id
    cache = ShardCache(shuffle_seed=7)

    def row_ids(batches, count):
        return np.concatenate([next(batches)[0]["token_ids"][:, 0] for _ in range(count)])

    # Probes that take a batch and stop (as `fit` does before its first step) do not move the order on.
    for _ in range(2):
        probe = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=5, cache=cache)
        next(probe)
        probe.close()
    batches = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=5, cache=cache)
    epochs = [[next(batches) for _ in range(5)] for _ in range(3)]
    ids = [np.concatenate([f["token_ids"][:, 0] for f, _ in epoch]) for epoch in epochs]
    labels = [np.concatenate([y for _, y in epoch]) for epoch in epochs]
    assert np.array_equal(ids[0], np.arange(40))  # the first epoch as read (the last batch is never used)
    assert sorted(ids[0]) == sorted(ids[1]) == sorted(ids[2])
    assert not np.array_equal(ids[0], ids[1]) and not np.array_equal(ids[1], ids[2])
    by_row = dict(zip(ids[0], labels[0]))
    assert all(by_row[i] == y for i, y in zip(ids[2], labels[2]))  # features and labels stay together
    # A run resumed at epoch 2 deals epoch 2 as the straight run did (a new cache, read afresh).
    resumed = ShardCache(shuffle_seed=7, first_epoch=2)
    again = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=5, cache=resumed)
    assert np.array_equal(row_ids(again, 5), ids[2])


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "stream"])
def test_transform_sees_each_batch_with_its_epoch_and_step_and_a_resumed_run_sees_the_same(cached):
    """Dynamic masking's seed: the (epoch, step) each batch is dealt at, the same straight or resumed at an epoch."""
    def run(first_epoch, epochs):
        seen = []

        def transform(batch, *, epoch, step, rank):
            seen.append((epoch, step, rank, int(batch["token_ids"][0, 0])))
            return {**batch, "label": batch["label"] + 100 * (epoch + 1)}

        shard = ListShard(rows=48)
        shard.rows["token_ids"][:, 0] = np.arange(48)
        batches = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=3,
                                cache=ShardCache(first_epoch=first_epoch) if cached else None, rank=1,
                                first_epoch=first_epoch, transform=transform)
        dealt = [next(batches) for _ in range(3 * (epochs - first_epoch))]
        return seen, dealt

    straight, dealt = run(0, 3)
    assert [(e, s, r) for e, s, r, _ in straight] == [(e, s, 1) for e in range(3) for s in range(3)]
    # Transformed as dealt, once (a cache keeps the batches as read).
    assert [labels.min() // 100 for _, labels in dealt] == [e + 1 for e in range(3) for _ in range(3)]
    resumed, _ = run(2, 3)
    assert resumed == straight[6:]


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "stream"])
def test_a_run_resumed_within_an_epoch_is_dealt_what_the_straight_run_was_after_the_checkpoint(cached):
    """The loop's resume after a checkpoint at batch 2 of epoch 1: the rest of that epoch (one pass from batch 2),
    then a new generator from epoch 2 (sharing the cache): the same rows at the same (epoch, step), shuffled."""
    shard = ListShard(rows=40)
    shard.rows["token_ids"][:, 0] = np.arange(40)

    def dealer(cache, **position):
        seen = []

        def transform(batch, *, epoch, step, rank):
            seen.append((epoch, step, tuple(batch["token_ids"][:, 0])))
            return batch

        batches = shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label", steps=4,
                                cache=cache, shuffle_seed=None if cached else 7, rank=0, transform=transform,
                                **position)
        return batches, seen

    straight, seen = dealer(ShardCache(shuffle_seed=7) if cached else None)
    [next(straight) for _ in range(12)]  # 3 epochs of 4 batches
    assert len({ids for _, _, ids in seen[4:8]} | {ids for _, _, ids in seen[8:]}) == 8  # epochs 1 and 2 differ

    cache = ShardCache(shuffle_seed=7, first_epoch=1) if cached else None
    passes = shard.passes
    rest, seen_rest = dealer(cache, first_epoch=1, first_step=2, passes=1)
    assert len(list(rest)) == 2 and seen_rest == seen[6:8]  # batches 2 and 3 of epoch 1, then it ends
    after, seen_after = dealer(cache, first_epoch=2)
    [next(after) for _ in range(4)]
    assert seen_after == seen[8:12]
    assert shard.passes - passes == (1 if cached else 2)  # the cache read the shard once; a stream once an epoch


def test_fit_trains_on_the_batches_in_order(tmp_path):
    """fit over the generator takes batches 0, 1, 2, ... of each pass, every epoch: the same weights as
    `train_on_batch` over that sequence by hand."""
    import keras

    rows, steps, epochs = make_rows(40), 4, 2  # 5 batches of 8 per pass: batch 4 is never used

    def dense_model():
        keras.utils.set_random_seed(SEED)
        return build_dense()

    def batches():
        return shard_batches(OrderedRows(rows, 0, 1), batch_size=8, feature_columns=DENSE_FEATURES,
                             label_column="label", steps=steps)

    by_hand = dense_model()
    passes = (batches() for _ in range(epochs))
    for features, labels in [batch for one_pass in passes for batch in itertools.islice(one_pass, steps)]:
        by_hand.train_on_batch(features, labels)

    through_generator = dense_model()
    through_generator.fit(batches(), steps_per_epoch=steps, epochs=epochs, verbose=0)
    assert max_abs_diff(variables_of(through_generator), variables_of(by_hand)) < 1e-6
    assert max_abs_diff(variables_of(by_hand), variables_of(dense_model())) > 1e-3


def test_shard_batches_forms_weights_and_feature_only_tuples():
    shard = ListShard(rows=16)
    shard.rows["weight"] = np.ones(16, "float32")
    weighted = next(shard_batches(shard, batch_size=8, feature_columns=FEATURES, label_column="label",
                                  weight_column="weight", steps=1))
    assert len(weighted) == 3 and weighted[2].shape == (8,)
    unlabelled = next(shard_batches(shard, batch_size=8, feature_columns=["token_ids"], label_column=None, steps=1))
    assert list(unlabelled) == ["token_ids"]


class StalledShard(ListShard):
    """A shard whose reading stops after `ready` batches, as Ray Data's does when its tasks wait for resources."""

    def __init__(self, rows: int, ready: int):
        super().__init__(rows)
        self.ready = ready

    def iter_batches(self, **options):
        for i, batch in enumerate(super().iter_batches(**options)):
            if i == self.ready:
                time.sleep(30)
            yield batch


def test_a_feed_that_stops_ends_the_run_naming_the_setting_instead_of_waiting_forever():
    batches = shard_batches(StalledShard(rows=64, ready=2), batch_size=8, feature_columns=FEATURES,
                            label_column="label", steps=6, timeout_s=1.0)
    assert len([next(batches), next(batches)]) == 2  # a working feed goes through the deadline untouched
    start = time.monotonic()
    with pytest.raises(RaynlpError, match=r"^this worker's data feed gave no batch for 1 s \(run.feed_timeout_s\).*"
                                          r"lower scaling.cpus_per_worker or add nodes$"):
        next(batches)
    assert time.monotonic() - start < 5
    # Within the deadline, every batch and the shard's own errors come through as without one.
    timed = shard_batches(ListShard(rows=50), batch_size=8, feature_columns=FEATURES, label_column="label",
                          steps=4, timeout_s=5.0)
    plain = shard_batches(ListShard(rows=50), batch_size=8, feature_columns=FEATURES, label_column="label", steps=4)
    for _ in range(10):
        np.testing.assert_array_equal(next(timed)[1], next(plain)[1])
    with pytest.raises(RaynlpError, match="ran out after 2 of 3 batches"):
        list(shard_batches(ListShard(rows=16), batch_size=8, feature_columns=FEATURES, label_column="label", steps=3,
                           timeout_s=5.0))


def test_shard_batches_fails_loudly_on_a_short_shard_and_missing_columns():
    with pytest.raises(RaynlpError, match="ran out after 2 of 3 batches"):
        list(shard_batches(ListShard(rows=16), batch_size=8, feature_columns=FEATURES, label_column="label", steps=3))
    with pytest.raises(RaynlpError, match="no column"):
        next(shard_batches(ListShard(rows=16), batch_size=8, feature_columns=["nope"], label_column="label", steps=1))
    assert steps_per_epoch(rows=100, batch_size=8, world_size=2) == 6
    with pytest.raises(RaynlpError, match="fewer than one global batch"):
        steps_per_epoch(rows=15, batch_size=8, world_size=2)


def test_checkpoint_round_trip_in_one_process(tmp_path):
    """2 epochs, save, restore into a fresh model, 1 more epoch == 3 straight epochs (plain process, no Ray);
    restoring the weights without the Adam state would not be."""
    import keras

    from raynlp.train._internal.checkpoint import restore_checkpoint, save_checkpoint

    rows = make_rows(LOCAL_BATCH * STEPS)
    def fit(model, epochs, initial_epoch=0):
        batches = shard_batches(OrderedRows(rows, 0, 1), batch_size=LOCAL_BATCH, feature_columns=DENSE_FEATURES,
                                label_column="label", steps=STEPS)
        model.fit(batches, steps_per_epoch=STEPS, epochs=epochs, initial_epoch=initial_epoch, verbose=0)

    keras.utils.set_random_seed(SEED)
    straight = build_dense()
    fit(straight, 3)

    keras.utils.set_random_seed(SEED)
    first = build_dense()
    fit(first, 2)
    save_checkpoint(str(tmp_path), first, epoch=2, step=int(first.optimizer.iterations.numpy()), extra={"a": 1})
    keras.utils.set_random_seed(SEED + 1)  # the fresh model starts elsewhere: everything must come from the files
    resumed = build_dense()
    metadata = restore_checkpoint(str(tmp_path), resumed)
    assert (metadata["epoch"], metadata["global_step"], metadata["extra"]) == (2, 2 * STEPS, {"a": 1})
    fit(resumed, 3, initial_epoch=metadata["epoch"])

    assert max_abs_diff(variables_of(resumed), variables_of(straight)) == 0.0
    assert max_abs_diff([v.numpy() for v in resumed.optimizer.variables],
                        [v.numpy() for v in straight.optimizer.variables]) == 0.0

    # Control: the same weights with a fresh optimizer end elsewhere.
    weights_only = build_dense()
    weights_only.set_weights(first.get_weights())
    fit(weights_only, 3, initial_epoch=2)
    assert max_abs_diff(variables_of(weights_only), variables_of(straight)) > 1e-3

    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.compile(optimizer="adam", loss="mse")
    with pytest.raises(RaynlpError, match="model variables"):
        restore_checkpoint(str(tmp_path), other)


def test_a_checkpoint_within_an_epoch_keeps_the_epochs_running_loss(tmp_path):
    """Checkpointed after 2 of an epoch's 4 batches, restored into a fresh model: the rest of the epoch, given the
    checkpoint's running metrics, reports the epoch's loss over all 4 batches, as the straight run does; without
    them, over the last 2."""
    import keras

    from raynlp.train._internal.checkpoint import RunningMetrics, restore_checkpoint, save_checkpoint

    rows = make_rows(LOCAL_BATCH * STEPS)

    def epoch_loss(model, *callbacks, first_step=0):
        batches = shard_batches(OrderedRows(rows, 0, 1), batch_size=LOCAL_BATCH, feature_columns=DENSE_FEATURES,
                                label_column="label", steps=STEPS, first_step=first_step, passes=1)
        fitted = model.fit(batches, steps_per_epoch=STEPS - first_step, epochs=1, callbacks=list(callbacks),
                           verbose=0)
        return fitted.history["loss"][0]

    keras.utils.set_random_seed(SEED)
    straight = epoch_loss(build_dense())
    keras.utils.set_random_seed(SEED)
    first = build_dense()
    half = shard_batches(OrderedRows(rows, 0, 1), batch_size=LOCAL_BATCH, feature_columns=DENSE_FEATURES,
                         label_column="label", steps=STEPS, passes=1)
    first.fit(half, steps_per_epoch=2, epochs=1, verbose=0)
    save_checkpoint(str(tmp_path), first, epoch=0, step=2, epoch_step=2)

    def resumed(callbacks):
        model = build_dense()
        metadata = restore_checkpoint(str(tmp_path), model)
        return epoch_loss(model, *callbacks(metadata), first_step=metadata["epoch_step"])

    assert resumed(lambda metadata: [RunningMetrics(metadata["running_metrics"])]) == straight
    assert resumed(lambda metadata: []) != pytest.approx(straight, rel=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# On Ray: 2 CPU workers.


@pytest.fixture(scope="module")
def parallel_run(ray_cluster, tmp_path_factory):
    """One run shared by the tests below: BERT for 3 epochs x 4 steps, 2 workers x batch 8 over rows in a known
    order, each epoch checkpointed; then a dense model for 3 epochs over the workers' Ray Data shards; then the
    control, the dense model with the distribution off."""
    import ray

    tmp = tmp_path_factory.mktemp("parallel")
    rows = make_rows(STEPS * LOCAL_BATCH * 2)
    ray_data_rows = make_rows(100, seed=1)
    dataset = ray.data.from_items([{name: column[i] for name, column in ray_data_rows.items()} for i in range(100)])
    ray_data_steps = steps_per_epoch(dataset.count(), LOCAL_BATCH, world_size=2)  # 100 // 16 = 6
    result, out, seconds = run_trainer(tmp, "parallel", model="bert", rows=rows, epochs=3,
                                       datasets={"train": dataset}, ray_data_steps=ray_data_steps)
    return {"tmp": tmp, "rows": rows, "result": result, "out": out, "seconds": seconds}


@pytest.mark.slow
def test_two_workers_match_one_process_and_end_identical(parallel_run):
    import keras
    import keras_hub

    from raynlp.train._internal.checkpoint import restore_checkpoint

    out = parallel_run["out"]
    rank0, rank1 = load_arrays(out / "rank0.npz"), load_arrays(out / "rank1.npz")
    initial = load_arrays(out / "initial.npz")

    # (b) one model: every rank holds the same weights, bit for bit.
    assert max_abs_diff(rank0, rank1) == 0.0

    # (a) the reference: one plain process, batch 16, the same rows in the same order, the same seed.
    keras.utils.set_random_seed(SEED)
    reference = build_classifier()
    assert max_abs_diff(variables_of(reference), initial) == 0.0  # same seed -> same initial weights
    batches = shard_batches(OrderedRows(parallel_run["rows"], 0, 1), batch_size=2 * LOCAL_BATCH,
                            feature_columns=FEATURES, label_column="label", steps=STEPS)
    history = keras.Model.fit(reference, batches, steps_per_epoch=STEPS, epochs=3, verbose=0)
    moved = max_abs_diff(rank0, initial)
    parallel_diff = max_abs_diff(rank0, variables_of(reference))
    print(f"parallel vs single process: max diff {parallel_diff:.2e}; training moved weights by up to {moved:.2e}")
    assert moved > 1000 * PARALLEL_TOLERANCE
    assert parallel_diff < PARALLEL_TOLERANCE

    # Reported metrics are global: rank 0's loss is the single process's loss.
    result = parallel_run["result"]
    metrics = result.metrics
    assert metrics["epoch"] == 3 and metrics["global_step"] == 3 * STEPS
    assert metrics["examples_per_second"] > 0 and "sparse_categorical_accuracy" in metrics
    assert abs(metrics["loss"] - history.history["loss"][-1]) < 1e-4

    # The last checkpoint restores into a plain local model that then holds exactly rank 0's weights, and so
    # does the keras-hub preset that rank 0 saved into it with the distribution off.
    keras.utils.set_random_seed(SEED + 1)
    local = build_classifier()
    with result.checkpoint.as_directory() as folder:
        restore_checkpoint(folder, local)
        from_preset = keras_hub.models.BertTextClassifier.from_preset(os.path.join(folder, "preset"))
    assert max_abs_diff(variables_of(local), rank0) == 0.0
    assert max_abs_diff([w.numpy() for w in from_preset.weights], [w.numpy() for w in local.weights]) == 0.0


@pytest.mark.slow
def test_ray_data_shards_train_and_ranks_end_identical(parallel_run):
    """Rows fed through `get_dataset_shard` + `shard_batches` into fit: the model learns, and every rank ends the
    same."""
    out = parallel_run["out"]
    rank0 = load_arrays(out / "ray_data_rank0.npz")
    assert max_abs_diff(rank0, load_arrays(out / "ray_data_rank1.npz")) == 0.0
    assert max_abs_diff(rank0, load_arrays(out / "ray_data_initial.npz")) > 1000 * PARALLEL_TOLERANCE
    losses = json.loads((out / "ray_data_loss.json").read_text())
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_ranks_that_build_different_weights_are_refused(parallel_run):
    """Each rank places its own replica of the values it builds (no per-variable check across processes); ranks
    seeded differently must then be caught by the one comparison of the whole model."""
    out = parallel_run["out"]
    assert (out / "seeds_rank0.txt").read_text() == "agreed"  # rank 0 compares with itself
    assert (out / "seeds_rank1.txt").read_text().startswith("rank 1 built dense")
    assert "unlike rank 0: every rank must build the model from the same seed" in (out / "seeds_rank1.txt").read_text()


@pytest.mark.slow
def test_control_without_data_parallel_ranks_diverge(parallel_run):
    """(c) The same harness with the distribution off: the ranks train apart, so the checks above can fail."""
    out = parallel_run["out"]
    diff = max_abs_diff(load_arrays(out / "control_rank0.npz"), load_arrays(out / "control_rank1.npz"))
    print(f"control (no data parallelism): ranks differ by up to {diff:.2e}")
    assert diff > 1000 * PARALLEL_TOLERANCE
