"""`ParquetShard`: a worker's share of a split kept in memory, read from the run's Parquet shards without Ray Data.
(`shard_batches` and `ShardCache` are tested with the data-parallel math, in distributed_test.py.)"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raynlp.train._internal.feeding import ParquetShard, ShardCache, shard_batches

SEQUENCE = 4


def write_shards(folder, sizes: list[int], row_group: int) -> int:
    """Shards as a run writes them (token ids int16 and padding masks as Ray's tensor columns, an int64 label),
    named so that they sort in the order written, each in row groups of `row_group` rows; row i holds ids i.
    Returns the rows written."""
    from ray.data.extensions import ArrowTensorArray

    start = 0
    for n, size in enumerate(sizes):
        ids = np.repeat(np.arange(start, start + size, dtype=np.int16)[:, None], SEQUENCE, axis=1)
        table = pa.table({"token_ids": ArrowTensorArray.from_numpy(ids),
                          "padding_mask": ArrowTensorArray.from_numpy(ids % 2 == 0),
                          "label": pa.array(np.arange(start, start + size) % 2, pa.int64())})
        pq.write_table(table, folder / f"{n:06d}.parquet", row_group_size=row_group)
        start += size
    return start


def rows_of(batches) -> list[int]:
    return [int(i) for batch in batches for i in batch["token_ids"][:, 0]]


def test_each_rank_reads_an_equal_run_of_the_first_rows_in_the_shards_order(tmp_path):
    # 30 rows in three files of 10, 7 and 13, row groups of 4; the split's first 28 used, on 3 ranks: runs of 9
    # (one row left over, as Ray Data's equal split leaves it), whatever files and row groups they cross.
    assert write_shards(tmp_path, [10, 7, 13], row_group=4) == 30
    dealt = [list(ParquetShard(str(tmp_path), rows=28, rank=rank, world_size=3).iter_batches(batch_size=3))
             for rank in range(3)]
    assert [rows_of(batches) for batches in dealt] == [list(range(0, 9)), list(range(9, 18)), list(range(18, 27))]
    # The columns as stored: compact ids and masks, one row a sequence, whole batches only.
    batch = dealt[1][0]
    assert batch["token_ids"].dtype == np.int16 and batch["token_ids"].shape == (3, SEQUENCE)
    assert batch["padding_mask"].dtype == np.bool_ and batch["label"].dtype == np.int64
    assert batch["padding_mask"][:, 0].tolist() == [i % 2 == 0 for i in range(9, 12)]
    assert [len(b["label"]) for b in ParquetShard(str(tmp_path), rows=28, rank=0, world_size=3).iter_batches(
        batch_size=4)] == [4, 4]  # 9 rows: the last partial batch left out


def test_a_rank_reads_only_the_files_its_run_lies_in(tmp_path):
    write_shards(tmp_path, [8, 8], row_group=8)
    (tmp_path / "000002.parquet").write_bytes(b"not parquet")  # sorts last
    assert rows_of(ParquetShard(str(tmp_path), rows=16, rank=0, world_size=2).iter_batches(batch_size=4)) == \
        list(range(8))
    with pytest.raises(pa.ArrowInvalid):  # the last rank's run ends in the last file: it does read that one
        list(ParquetShard(str(tmp_path), rows=24, rank=1, world_size=2).iter_batches(batch_size=4))


def test_a_cache_deals_a_parquet_shard_to_fit_as_it_deals_a_ray_data_shard(tmp_path):
    write_shards(tmp_path, [40], row_group=16)
    cache = ShardCache(shuffle_seed=7)
    cache.start_reading(ParquetShard(str(tmp_path), rows=40, rank=1, world_size=2), batch_size=4, steps=5)
    batches = shard_batches(cache.shard, batch_size=4, feature_columns=["token_ids", "padding_mask"],
                            label_column="label", steps=5, cache=cache)
    first = [next(batches) for _ in range(5)]
    second = [next(batches) for _ in range(5)]
    assert [int(i) for features, _ in first for i in features["token_ids"][:, 0]] == list(range(20, 40))
    # The next epoch deals the same rows in another order (the cache's seeded shuffle).
    again = [int(i) for features, _ in second for i in features["token_ids"][:, 0]]
    assert sorted(again) == list(range(20, 40)) and again != list(range(20, 40))
    assert all(features["token_ids"].dtype == np.int16 for features, _ in first + second)


class StalledStorage(ParquetShard):
    """A share whose storage does not answer: its read never returns in the test's time."""

    def _read(self):
        import time

        time.sleep(30)
        return super()._read()


def test_a_share_read_from_stalled_storage_ends_the_run_naming_the_storage_not_the_cpus(tmp_path):
    """A worker reading its own share (shards kept in memory) waits on no Ray task, and may have been given every
    CPU (the layout check lets it): the timeout points at the storage."""
    import time

    from raynlp.errors import RaynlpError

    write_shards(tmp_path, [40], row_group=16)
    cache = ShardCache()
    start = time.monotonic()
    cache.start_reading(StalledStorage(str(tmp_path), rows=40), batch_size=4, steps=5, timeout_s=1.0)
    with pytest.raises(RaynlpError, match=r"^this worker's data feed gave no batch for 1 s \(run.feed_timeout_s\).*: "
                                          r"reading this worker's share of the shards stalled: check that their "
                                          r"storage answers, or raise run.feed_timeout_s where it is slow$"):
        cache.read(cache.shard, batch_size=4, steps=5)
    assert time.monotonic() - start < 5
