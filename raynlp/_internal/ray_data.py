"""What raynlp needs from Ray Data beyond its public calls."""

from __future__ import annotations


def read_parquet(paths: str | list[str]):
    """`ray.data.read_parquet(paths)` through Ray Data's first Parquet reader (its "V1" datasource).

    Ray 2.60 reads Parquet through a new datasource by default, whose listing step starts a pool of
    footer-reading actors, each a new worker process, for every execution of the dataset. On a small node that is
    a fixed cost of seconds per pass, paid by every tokenization, every training split and every evaluation. The first reader gives the same rows in
    the same order. The choice is made when the dataset is planned, so it holds wherever the dataset executes.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths)
    finally:
        context.use_datasource_v2 = previous
