import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from raynlp._internal.ray_data import read_parquet


def test_parquet_is_read_by_the_v1_reader_and_the_default_stays(ray_cluster, tmp_path):
    for part in range(3):
        pq.write_table(pa.table({"i": list(range(part * 10, part * 10 + 10))}), tmp_path / f"part-{part}.parquet")
    dataset = read_parquet(str(tmp_path))
    assert repr(dataset._logical_plan.dag) == "Read[ReadParquet]"  # not 2.60's ListFiles -> ReadFiles with actors
    assert sorted(row["i"] for row in dataset.take_all()) == list(range(30))
    assert ray.data.DataContext.get_current().use_datasource_v2  # the choice is this read's, not global
