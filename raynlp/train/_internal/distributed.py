"""Set up one Ray Train worker for data-parallel Keras 3 training (JAX backend).

The recipe (see NOTES.md, "Data-parallel Keras 3 across Ray Train workers"):

1. Every worker learns its rank and the world size from Ray Train.
2. On CPU, nothing has set up `jax.distributed` yet: rank 0 picks a free `ip:port`, Ray Train's
   `broadcast_from_rank_zero` hands it to every rank, and every rank calls `keras.distribution.initialize`.
   (`JaxTrainer(use_gpu=True)` has already done this step itself.)
3. Every rank seeds Keras with the same seed, so every rank builds the same initial weights.
4. Every rank sets a `DataParallel` distribution over all devices of all processes: variables are replicated,
   each batch is sharded along its first axis, and the gradients are averaged across processes inside the
   compiled train step.

After that, `model.fit` in each worker is one replica of a single global training run: the batch each worker feeds
is its local slice of the global batch (global batch = local batch x world size), and the loss and metrics `fit`
reports are global means, identical on every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from raynlp._internal.cluster import free_port

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Where this worker stands in the training group.

    Attributes:
        rank: this worker's world rank, 0 .. world_size - 1.
        world_size: the number of training workers.
        data_parallel: whether a Keras `DataParallel` distribution is active (world_size > 1).

    Batch semantics: the batch size a worker feeds to `fit` is its *local* batch. With data parallelism the
    model takes one optimizer step per global batch of `local_batch * world_size` rows, made of every
    rank's local batch for that step in rank order (rank 0's rows first).
    """

    rank: int
    world_size: int
    data_parallel: bool

    @property
    def is_chief(self) -> bool:
        """Rank 0: the worker that writes checkpoints and whose metrics Ray Train keeps."""
        return self.rank == 0

    def global_batch_size(self, local_batch_size: int) -> int:
        """The number of rows one optimizer step sees across all workers."""
        return local_batch_size * self.world_size


def setup_data_parallel(use_gpu: bool, seed: int) -> WorkerInfo:
    """Make this Ray Train worker one replica of a data-parallel Keras run; call it before building any model.

    Args:
        use_gpu: the `use_gpu` given to the trainer's `ScalingConfig`. With GPUs, `JaxTrainer` has already
            set up `jax.distributed`; on CPU this function does it (whenever it is not set up yet).
        seed: the Keras random seed, the same on every rank: identical initial weights on every rank are
            what makes the replicas one model (and the JAX runtime checks that values it places across
            processes agree: "... passed to device_put is not the same on each process").

    Returns:
        This worker's rank and the world size.
    """
    import jax
    import keras
    import ray.train
    import ray.train.collective

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()

    # Same seed on every rank, before any model is built. Seeding before `initialize` also spares Keras
    # agreeing on a random seed across processes (a collective it runs only when no seed is set).
    keras.utils.set_random_seed(seed)
    if world_size == 1:
        # One worker: a plain process, no distribution at all.
        return WorkerInfo(rank=rank, world_size=1, data_parallel=False)

    # `JaxTrainer(use_gpu=True)` has set up jax.distributed already; on CPU nothing has. Checking the state
    # rather than trusting `use_gpu` means a GPU worker whose launcher skipped the setup still trains in sync.
    if not jax.distributed.is_initialized():
        if use_gpu:
            logger.warning("jax.distributed is not set up on this GPU worker: setting it up here")
        # Every rank must call this, before anything touches a JAX device in this process.
        address = ray.train.collective.broadcast_from_rank_zero(_free_address() if rank == 0 else None)
        logger.info("rank %d/%d joining jax.distributed at %s", rank, world_size, address)
        keras.distribution.initialize(address, num_processes=world_size, process_id=rank)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(),
            # The caller feeds each rank its own slice: Keras must not shard a tf.data pipeline itself.
            auto_shard_dataset=False,
        )
    )
    _place_replicas_locally()
    return WorkerInfo(rank=rank, world_size=world_size, data_parallel=True)


def _place_replicas_locally() -> None:
    """Give every variable this process creates or assigns its replica from the local value alone.

    Keras places a value it creates or assigns under `DataParallel` with `jax.device_put`, which, across
    processes, first checks that every process passed the same value: an all-gather, compiled for each shape,
    for every variable and optimizer slot, which makes building a model the slowest step of a small run. The
    ranks build the same values by construction (the same seed, the same checkpoint), so each process places
    its own copy on its own devices (`jax.make_array_from_callback`, no communication), and
    `check_replicas_agree` compares the whole model once instead.
    """
    import jax
    import numpy as np
    from keras.src.backend.jax import distribution_lib  # the one function Keras places values with
    from keras.src.utils import jax_utils

    checked = getattr(distribution_lib.distribute_tensor, "checked", distribution_lib.distribute_tensor)

    def distribute_tensor(tensor, layout):
        sharding = getattr(layout, "backend_layout", layout)
        local = not isinstance(tensor, jax.Array) or tensor.is_fully_addressable
        if (isinstance(sharding, jax.sharding.Sharding) and not sharding.is_fully_addressable and local
                and not jax_utils.is_in_jax_tracing_scope(tensor)):
            value = np.asarray(tensor)
            return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
        return checked(tensor, layout)

    distribute_tensor.checked = checked
    distribution_lib.distribute_tensor = distribute_tensor


def check_replicas_agree(model, info: WorkerInfo) -> None:
    """Fail unless every rank holds the same model and optimizer values (one comparison for the whole model:
    see `_place_replicas_locally`); call it on every rank after building and restoring."""
    import zlib

    import numpy as np
    import ray.train.collective

    from raynlp.errors import RaynlpError

    if not info.data_parallel:
        return
    variables = list(model.variables) + list(model.optimizer.variables if model.optimizer is not None else [])
    mine = [zlib.crc32(np.ascontiguousarray(np.asarray(v.value)).tobytes()) for v in variables]
    chief = ray.train.collective.broadcast_from_rank_zero(mine)
    for variable, a, b in zip(variables, mine, chief):
        if a != b:
            raise RaynlpError(f"rank {info.rank} built {variable.path} unlike rank 0: every rank must build the "
                              "model from the same seed and preset")


@contextlib.contextmanager
def distribution_off():
    """Turn the Keras distribution off for the block, then restore it.

    Use it on one rank for work that would otherwise be a cross-process operation every rank must join:
    saving a preset (saving builds a throwaway optimizer, and creating variables under `DataParallel` is
    collective), or building a local copy of the model to `predict` with (`predict` under multi-process
    `DataParallel` fails: "Fetching value for jax.Array that spans non-addressable devices").
    """
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def _free_address() -> str:
    """`ip:port` on this node that nobody listens on now, for the JAX coordination service."""
    import ray.util

    port = free_port(host="")
    # The port is free only until someone else takes it; the coordinator binds it moments later.
    return f"{ray.util.get_node_ip_address()}:{port}"
