"""The partitioned writer: each data file holds exactly one partition's rows, in the order the
rows came (across every batch of the input), whatever the batches' boundaries; the same when the
pipeline sorted each batch beforehand (``sort_by_partition``, then ``presorted``), and some rows
were dropped after that sort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from clicklake.config import load_settings
from clicklake.lakehouse.catalog import EVENTS, ensure_tables, ingest_tables, open_catalog
from clicklake.lakehouse.write import DICTIONARY_CODEC, sort_by_partition, write_data_files
from tests.lakehouse.fixtures import event_rows


@pytest.mark.parametrize("presorted", [False, True], ids=["sorted-at-write", "presorted"])
@pytest.mark.parametrize("batch_rows", [7, 50, 1000])
def test_each_file_is_one_partition_in_input_order(tmp_path: Path, batch_rows: int, presorted: bool) -> None:
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path)}, pipeline={"event_buckets": 4})
    table = ensure_tables(open_catalog(settings), settings, ingest_tables(settings))[EVENTS]
    rows = pa.concat_tables([event_rows(b, 120, days=3, users=9) for b in range(3)])
    # Some rows without a user key (bucket null) and the input in batches of batch_rows.
    keys = rows.column("user_key").to_pylist()
    keys = [None if i % 11 == 0 else k for i, k in enumerate(keys)]
    rows = rows.set_column(
        rows.schema.get_field_index("user_key"), "user_key", pa.array(keys, pa.large_string())
    )
    rows = pa.Table.from_batches(rows.combine_chunks().to_batches(max_chunksize=batch_rows))
    assert rows.column(0).num_chunks > 1 or batch_rows >= rows.num_rows

    if presorted:
        given, order = sort_by_partition(table, rows)
        assert given.column(0).num_chunks == rows.column(0).num_chunks  # each batch on its own
        assert given.equals(rows.take(pa.array(order)))
        # Rows dropped after the sort (a replay's skip, dedup's verdict) keep the others' order.
        keep = np.asarray(order) % 5 != 0
        given = given.filter(pa.array(keep))
        rows = rows.take(pa.array(np.sort(np.asarray(order)[keep])))
        files = write_data_files(table, given, presorted=True)
    else:
        files = write_data_files(table, rows)

    spec = table.spec()
    schema = table.metadata.schema()
    day = spec.fields[0].transform.pyarrow_transform(schema.find_field(spec.fields[0].source_id).field_type)
    bucket = spec.fields[1].transform.pyarrow_transform(
        schema.find_field(spec.fields[1].source_id).field_type
    )
    days = day(rows.column("derived_tstamp")).to_pylist()
    buckets = bucket(rows.column("user_key")).to_pylist()
    expected = sorted(
        {(d, b) for d, b in zip(days, buckets, strict=True)}, key=lambda v: (v[0], v[1] is None, v[1] or 0)
    )
    assert [(f.partition[0], f.partition[1]) for f in files] == expected  # one file each, in key order
    ids = rows.column("event_id").to_pylist()
    for f in files:
        part = (f.partition[0], f.partition[1])
        want = [i for i, d, b in zip(ids, days, buckets, strict=True) if (d, b) == part]
        got = pq.read_table(f.file_path.removeprefix("file://"), columns=["event_id"]).column(0).to_pylist()
        assert got == want
        assert f.record_count == len(want)
        assert f.file_size_in_bytes == Path(f.file_path.removeprefix("file://")).stat().st_size
    assert sum(f.record_count for f in files) == rows.num_rows
    assert pc.count_distinct(rows.column("event_id")).as_py() == rows.num_rows


@pytest.mark.parametrize(
    ("table_codec", "dictionary_codec", "small_files", "want_dictionary", "want_other"),
    [
        ("zstd", None, True, "SNAPPY", "ZSTD"),  # the default: snappy on the dictionary columns
        ("zstd", "zstd", True, "ZSTD", "ZSTD"),  # the property set: one codec everywhere
        ("zstd", "lz4", True, "LZ4", "ZSTD"),
        ("gzip", None, True, "GZIP", "GZIP"),  # another table codec: the dictionary columns follow it
        ("zstd", None, False, "ZSTD", "ZSTD"),  # compaction's large files: the table's codec
        ("zstd", "lz4", False, "ZSTD", "ZSTD"),
    ],
)
def test_dictionary_columns_codec(
    tmp_path: Path,
    table_codec: str,
    dictionary_codec: str | None,
    small_files: bool,
    want_dictionary: str,
    want_other: str,
) -> None:
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path)}, pipeline={"event_buckets": 2})
    table = ensure_tables(open_catalog(settings), settings, ingest_tables(settings))[EVENTS]
    with table.transaction() as txn:
        txn.set_properties(
            {
                "write.parquet.compression-codec": table_codec,
                **({DICTIONARY_CODEC: dictionary_codec} if dictionary_codec else {}),
            }
        )
    rows = event_rows(0, 200, days=2, users=5)
    files = write_data_files(table, rows, small_files=small_files)
    assert files
    got = []
    for f in files:
        path = f.file_path.removeprefix("file://")
        meta = pq.read_metadata(path).row_group(0)
        codecs = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
        encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
        dictionary = {c for c, e in encodings.items() if "RLE_DICTIONARY" in e or "PLAIN_DICTIONARY" in e}
        assert {"app_id", "event_type"} <= dictionary
        assert {"event_id", "derived_tstamp"}.isdisjoint(dictionary)
        assert {codecs[c] for c in dictionary} == {want_dictionary}
        assert {codecs[c] for c in codecs.keys() - dictionary} == {want_other}
        got.append(pq.read_table(path, columns=["event_id"]).column(0))
    assert sorted(pa.chunked_array(got).to_pylist()) == sorted(rows.column("event_id").to_pylist())
