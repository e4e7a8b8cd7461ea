"""The compact column types, the derived segment ids, and a row's size read from a shard's schema."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.data.extensions import ArrowTensorArray

from raynlp.data.columns import compact, derived, id_dtype, row_bytes


def _packed(n=4, length=8):
    ids = np.arange(n * length, dtype=np.int32).reshape(n, length) + 30_000
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != 0,
            "mask_positions": np.ones((n, 3), np.int32), "mask_ids": ids[:, :3].copy()}


def test_ids_narrow_as_far_as_the_vocabulary_allows():
    assert id_dtype(30_522) == np.int16 and id_dtype(32_768) == np.int16 and id_dtype(32_769) == np.int32
    packed = _packed()
    small = compact(packed, vocabulary_size=30_522, pairs=False)
    assert {k: v.dtype for k, v in small.items()} == {"token_ids": np.int16, "padding_mask": np.bool_,
                                                      "mask_positions": np.int16, "mask_ids": np.int16}
    np.testing.assert_array_equal(small["token_ids"], packed["token_ids"])  # the same ids, narrower
    assert compact(packed, vocabulary_size=50_000, pairs=False)["token_ids"].dtype == np.int32
    pairs = compact({**packed, "segment_ids": np.ones_like(packed["token_ids"])}, vocabulary_size=30_522, pairs=True)
    assert pairs["segment_ids"].dtype == np.int8 and pairs["segment_ids"].all()


def test_a_worker_deals_a_single_segments_ids_as_zeros():
    batch = compact(_packed(), vocabulary_size=30_522, pairs=False)
    segments = derived("segment_ids", batch)
    assert segments.dtype == np.int8 and segments.shape == (4, 8) and not segments.any()
    assert derived("label", batch) is None


def test_a_rows_size_comes_from_the_schema_and_text_from_its_stored_size(tmp_path):
    legacy = _packed()  # an older folder: int32 ids and stored segment ids
    table = pa.table({"token_ids": ArrowTensorArray.from_numpy(legacy["token_ids"]),
                      "segment_ids": ArrowTensorArray.from_numpy(legacy["segment_ids"]),
                      "padding_mask": ArrowTensorArray.from_numpy(legacy["padding_mask"]),
                      "label": pa.array([0, 1, 0, 1]), "weight": pa.array([1.0] * 4, pa.float32()),
                      "id": pa.array(["row-1", "row-2", "row-3", "row-4"])})
    pq.write_table(table, tmp_path / "part.parquet")
    schema = pq.read_schema(tmp_path / "part.parquet")
    assert row_bytes(schema, {"id": 10.0}) == 8 * 4 + 8 * 4 + 8 * 1 + 8 + 4 + 10
    with pytest.raises(ValueError, match=r"column id \(string\) has no fixed width"):
        row_bytes(schema)
