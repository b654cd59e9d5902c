"""The data files' statistics (column sizes, counts, lower and upper bounds) that the writer
computes itself are exactly what PyIceberg's own function gives for the same Parquet footer:
every type the fast path takes, nulls, empty and long strings (truncated bounds, a string whose
upper bound cannot be rounded up), several row groups, and each metrics mode. A column type it
does not take (a decimal) goes through PyIceberg's function."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.io.pyarrow import (
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
    TimeType,
)

import clicklake.lakehouse.write as write

FIELDS = [
    # first: a dictionary-encoded column, whose dictionary page is where a row group starts
    ("s", StringType(), ["zebra-" + "é" * 30, "", "apple", None]),  # long and multibyte: truncated
    ("b", BooleanType(), [True, None, False, True]),
    ("i", IntegerType(), [3, -7, None, 12]),
    ("l", LongType(), [None, 1 << 40, -5, 0]),
    ("f", FloatType(), [1.5, None, -2.25, 0.0]),
    ("d", DoubleType(), [2.5, 1e300, None, -1e-300]),
    ("day", DateType(), [dt.date(2026, 1, 2), None, dt.date(1970, 1, 1), dt.date(2030, 12, 31)]),
    ("t", TimeType(), [dt.time(1, 2, 3), dt.time(23, 59, 59, 999999), None, dt.time(0)]),
    (
        "ts",
        TimestampType(),
        [dt.datetime(2026, 1, 2, 3, 4, 5), None, dt.datetime(2001, 1, 1), dt.datetime(2026, 1, 1)],
    ),
    (
        "tstz",
        TimestamptzType(),
        [None, dt.datetime(2026, 1, 2, tzinfo=dt.UTC), dt.datetime(2025, 5, 5, 5, tzinfo=dt.UTC), None],
    ),
    ("long", StringType(), ["mango-" + "é" * 20, "kiwi-" + "ü" * 20, None, "kiwi-" + "a" * 20]),
    ("top", StringType(), [chr(0x10FFFF) * 20, "a", None, "b"]),  # no upper bound once truncated
    ("none", StringType(), [None, None, None, None]),
    ("bin", BinaryType(), [b"\xff" * 20, b"\x00abc", None, b"\x01" * 40]),
]


def _schema(extra: tuple[tuple[str, object, list[object]], ...] = ()) -> tuple[Schema, pa.Table]:
    fields = [*FIELDS, *extra]
    schema = Schema(*[NestedField(i + 1, name, t, required=False) for i, (name, t, _) in enumerate(fields)])
    arrow_schema = schema_to_pyarrow(schema)
    rows = pa.table({name: values for name, _, values in fields}).cast(arrow_schema)
    return schema, rows


def _footer(rows: pa.Table, row_group_size: int, statistics: bool | list[str] = True) -> pq.FileMetaData:
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, rows.schema, write_statistics=statistics) as writer:
        writer.write(rows, row_group_size=row_group_size)
    return writer.writer.metadata


def _pyiceberg(schema: Schema, props: dict[str, str], meta: pq.FileMetaData) -> dict[str, object]:
    return data_file_statistics_from_parquet_metadata(
        parquet_metadata=meta,
        stats_columns=compute_statistics_plan(schema, props),
        parquet_column_mapping=parquet_path_to_id_mapping(schema),
    ).to_serialized_dict()


PROPS = [
    {},
    {"write.metadata.metrics.default": "full"},
    {"write.metadata.metrics.default": "counts"},
    {"write.metadata.metrics.default": "none"},
    {
        "write.metadata.metrics.default": "truncate(3)",
        "write.metadata.metrics.column.s": "full",
        "write.metadata.metrics.column.i": "none",
        "write.metadata.metrics.column.bin": "counts",
    },
]


@pytest.mark.parametrize("row_group_size", [4, 3, 1])
@pytest.mark.parametrize("props", PROPS, ids=["default", "full", "counts", "none", "mixed"])
def test_same_statistics_as_pyiceberg(props: dict[str, str], row_group_size: int) -> None:
    schema, rows = _schema()
    meta = _footer(rows, row_group_size)
    assert meta.num_row_groups == -(-rows.num_rows // row_group_size)
    assert meta.row_group(0).column(0).has_dictionary_page
    got = write._statistics(schema, props, parquet_path_to_id_mapping(schema))(meta, rows.schema)
    want = _pyiceberg(schema, props, meta)
    assert got == want
    if props == {}:  # the bounds are there, and truncated where they should be
        s = schema.find_field("s").field_id
        assert got["lower_bounds"][s] == b""
        assert got["upper_bounds"][s] == ("zebra-" + "é" * 9 + "ê").encode()
        assert got["lower_bounds"][schema.find_field("long").field_id] == ("kiwi-" + "a" * 11).encode()
        assert schema.find_field("top").field_id not in got["upper_bounds"]
        assert schema.find_field("none").field_id not in got["lower_bounds"]


def test_a_type_it_does_not_take_goes_through_pyiceberg(monkeypatch: pytest.MonkeyPatch) -> None:
    schema, rows = _schema(
        (("dec", DecimalType(10, 2), [Decimal("1.25"), None, Decimal("-3.50"), Decimal("0")]),)
    )
    meta = _footer(rows, 2)
    calls = []
    original = write.data_file_statistics_from_parquet_metadata

    def spy(**kwargs: object) -> object:
        calls.append(1)
        return original(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(write, "data_file_statistics_from_parquet_metadata", spy)
    got = write._statistics(schema, {}, parquet_path_to_id_mapping(schema))(meta, rows.schema)
    assert calls == [1]
    assert got == _pyiceberg(schema, {}, meta)
    assert schema.find_field("dec").field_id in got["lower_bounds"]


def test_a_column_written_without_statistics() -> None:
    # PyIceberg then keeps its value count but drops its null count and bounds.
    schema, rows = _schema()
    meta = _footer(rows, 2, statistics=[n for n in rows.schema.names if n != "i"])
    got = write._statistics(schema, {}, parquet_path_to_id_mapping(schema))(meta, rows.schema)
    assert got == _pyiceberg(schema, {}, meta)
    i = schema.find_field("i").field_id
    assert i in got["value_counts"] and i not in got["null_value_counts"] and i not in got["lower_bounds"]
