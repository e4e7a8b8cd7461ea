"""What raynlp needs from Ray Data beyond its public calls."""

from __future__ import annotations

# CPUs a task reading the training shards takes. The workers hold most of a node's CPUs while they train, and Ray
# Data's default of 1 a task would leave a reading task waiting for a whole CPU that no node has left
# (`raynlp.train._internal.layout` refuses a layout without this much room).
FEED_TASK_CPUS = 0.25


def read_parquet(paths: str | list[str], *, num_cpus: float | None = None):
    """`ray.data.read_parquet(paths)` through Ray Data's first Parquet reader (its "V1" datasource).

    Ray 2.60 reads Parquet through a new datasource by default, whose listing step starts a pool of
    footer-reading actors, each a new worker process, for every execution of the dataset. On a small node that is
    a fixed cost of seconds per pass, paid by every tokenization, every training split and every evaluation. The
    first reader gives the same rows in the same order. The choice is made when the dataset is planned, so it
    holds wherever the dataset executes. `num_cpus`: what each reading task takes (Ray Data's default: 1).
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, **({"ray_remote_args": {"num_cpus": num_cpus}} if num_cpus else {}))
    finally:
        context.use_datasource_v2 = previous
