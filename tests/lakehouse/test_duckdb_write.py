"""Data files written by DuckDB and committed through PyIceberg: the table's field ids and
physical types in every file, one identity-partition value per file, and the same manifest
statistics PyIceberg writes for the same rows; appends and filtered overwrites as PyIceberg's."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from clicklake.config import load_settings
from clicklake.lakehouse.catalog import open_catalog
from clicklake.lakehouse.duckdb_write import commit_files, write_data_files

ROWS = pa.table(
    {
        "id": pa.array([f"r{i}" for i in range(9)] + [None]),
        "day": pa.array([date(2024, 5, 1 + i % 3) for i in range(9)] + [None], pa.date32()),
        "at": pa.array(
            [datetime(2024, 5, 1 + i % 3, 23, 59, 59, 999_999 - i, tzinfo=UTC) for i in range(10)],
            pa.timestamp("us", tz="UTC"),
        ),
        "n": pa.array([i * 10**12 for i in range(9)] + [None], pa.int64()),
        "x": pa.array([0.5 * i for i in range(8)] + [float("nan"), None], pa.float64()),
        "ok": pa.array([i % 2 == 0 for i in range(9)] + [None], pa.bool_()),
        "k": pa.array(list(range(10)), pa.int32()),
        # Longer than the 16 characters Iceberg's default truncate(16) keeps in the bounds.
        "url": pa.array([f"https://example.com/{'p' * i}/{i}" for i in range(10)]),
    }
)


def _table(catalog: Catalog, name: str, partition: str | None = "day") -> Table:
    catalog.create_namespace_if_not_exists("t")
    table = catalog.create_table(
        f"t.{name}", schema=ROWS.schema, properties={"write.parquet.compression-codec": "zstd"}
    )
    if partition is not None:
        with table.update_spec() as spec:
            spec.add_identity(partition)
    return table


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return open_catalog(load_settings(environ={}, storage={"data_dir": str(tmp_path)}))


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute("SET preserve_insertion_order = false")  # as the model runner sets it
    c.register("rows_arrow", ROWS)
    c.execute("CREATE TABLE rows_new AS SELECT * FROM rows_arrow")
    return c


def _by_partition(files: list[DataFile]) -> dict[tuple[object, ...], DataFile]:
    out = {tuple(f.partition): f for f in files}  # type: ignore[arg-type]  # Record is iterable
    assert len(out) == len(files)
    return out


def _rows(table: Table | pa.Table) -> list[dict[str, object]]:
    """The rows sorted by ``k``, NaN as a string (NaN equals nothing, itself included)."""
    arrow = table if isinstance(table, pa.Table) else table.scan().to_arrow()
    return [
        {c: "NaN" if isinstance(v, float) and math.isnan(v) else v for c, v in row.items()}
        for row in arrow.sort_by("k").to_pylist()
    ]


def _types(schema: pq.ParquetSchema) -> list[tuple[str, str, str, int]]:
    """Path, physical and logical type, and definition level (1: optional) of each column;
    DuckDB spells a plain signed int64 or int32 with its (redundant) logical type, Arrow not."""
    out = []
    for i in range(len(schema)):
        c = schema.column(i)
        logical = str(c.logical_type)
        if logical == f"Int(bitWidth={c.physical_type[3:]}, isSigned=true)":
            logical = "None"
        out.append((c.path, c.physical_type, logical, c.max_definition_level))
    return out


def _live(table: Table) -> list[DataFile]:
    return [task.file for task in table.scan().plan_files()]


@pytest.mark.parametrize(("order_by", "workers"), [((), 1), (("id",), 1), ((), 2), (("id",), 3)])
def test_files_carry_field_ids_types_partitions_and_pyiceberg_stats(
    catalog: Catalog, con: duckdb.DuckDBPyConnection, order_by: tuple[str, ...], workers: int
) -> None:
    ours = _table(catalog, "ours")
    theirs = _table(catalog, "theirs")
    # workers > 1: the four days are written by that many cursors at once.
    files = write_data_files(con, "rows_new", ours, order_by, workers=workers)
    # No result is left unread on the connection: a next write can register its schema there
    # at once (DuckDB refuses while a result is pending). Its files are not committed.
    again = write_data_files(con, "rows_new", ours, order_by, workers=workers)
    assert sorted(f.record_count for f in again) == sorted(f.record_count for f in files)
    # A sorted write leaves the connection's setting as it found it.
    assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchall() == [(False,)]
    commit_files(ours, files, None, {"k": "v"})
    theirs.append(ROWS)

    mine, pyiceberg = _by_partition(_live(ours)), _by_partition(_live(theirs))
    # One file per day, the null day included, with PyIceberg's partition values...
    assert set(mine) == set(pyiceberg) == {(19844,), (19845,), (19846,), (None,)}
    for key, f in mine.items():
        ref = pyiceberg[key]
        # ... and its statistics: counts, NaN counts, bounds (strings truncated as PyIceberg does).
        for attr in ("record_count", "value_counts", "null_value_counts", "nan_value_counts"):
            assert getattr(f, attr) == getattr(ref, attr), attr
        if key == (19846,):
            # DuckDB keeps no min/max of a double column chunk holding a NaN (Arrow skips the
            # NaN): no bound is the safe side, a reader then just cannot prune on it.
            x = ours.schema().find_field("x").field_id
            assert x not in f.lower_bounds and x not in f.upper_bounds
            assert {**f.lower_bounds, x: ref.lower_bounds[x]} == ref.lower_bounds
            assert {**f.upper_bounds, x: ref.upper_bounds[x]} == ref.upper_bounds
        else:
            assert f.lower_bounds == ref.lower_bounds
            assert f.upper_bounds == ref.upper_bounds
        assert f.spec_id == ours.spec().spec_id
        assert f.file_path.startswith(ours.location() + "/data/day=")
        assert f.file_size_in_bytes == Path(f.file_path.removeprefix("file://")).stat().st_size
        # The table's field ids and PyIceberg's physical and logical types.
        got = pq.read_metadata(f.file_path.removeprefix("file://")).schema
        want = pq.read_metadata(ref.file_path.removeprefix("file://")).schema
        assert _types(got) == _types(want)
        fields = got.to_arrow_schema()
        assert [fields.field(i).metadata[b"PARQUET:field_id"] for i in range(len(fields))] == [
            str(ours.schema().find_field(n).field_id).encode() for n in ROWS.column_names
        ]
        if order_by:
            ids = pq.read_table(f.file_path.removeprefix("file://"), columns=["id"]).column(0).to_pylist()
            assert ids == sorted(ids, key=lambda v: (v is None, v))

    assert _rows(ours) == _rows(theirs) == _rows(ROWS)
    snap = ours.current_snapshot()
    assert snap is not None and snap.summary is not None
    assert snap.summary.additional_properties["k"] == "v"


def test_unpartitioned_table_and_columns_the_rows_lack(
    catalog: Catalog, con: duckdb.DuckDBPyConnection
) -> None:
    table = _table(catalog, "flat", partition=None)
    con.execute("CREATE TABLE narrow AS SELECT id, CAST(k AS TINYINT) AS k FROM rows_new")
    files = write_data_files(con, "narrow", table)
    assert len(files) == 1 and files[0].file_path.startswith(table.location() + "/data/00000-")
    commit_files(table, files, None, {})
    got = table.scan().to_arrow().sort_by("k")
    assert got.column("id").equals(ROWS.column("id"))
    assert got.column("k").equals(ROWS.column("k"))  # cast to the table's int
    assert got.column("n").null_count == ROWS.num_rows
    # No rows: no file, as PyIceberg writes none.
    con.execute("CREATE TABLE none AS SELECT * FROM rows_new WHERE false")
    assert write_data_files(con, "none", table) == []


def test_overwrite_replaces_the_filtered_days_and_empties_days_without_new_rows(
    catalog: Catalog, con: duckdb.DuckDBPyConnection
) -> None:
    table = _table(catalog, "days")
    commit_files(table, write_data_files(con, "rows_new", table), None, {"run": "1"})
    # Recompute 05-02 and 05-03: 05-02 has new rows, 05-03 none any more; 05-01 is kept.
    con.execute(
        "CREATE TABLE again AS SELECT * REPLACE (id || '-new' AS id) FROM rows_new WHERE day = DATE '2024-05-02'"
    )
    flt = "day >= '2024-05-02' AND day < '2024-05-04'"
    commit_files(table, write_data_files(con, "again", table), flt, {"run": "2"})
    got = table.scan().to_arrow()
    by_day: dict[object, list[str]] = {}
    for d, i in zip(got.column("day").to_pylist(), got.column("id").to_pylist(), strict=True):
        by_day.setdefault(d, []).append(i)
    assert sorted(by_day[date(2024, 5, 1)]) == ["r0", "r3", "r6"]
    assert sorted(by_day[date(2024, 5, 2)]) == ["r1-new", "r4-new", "r7-new"]
    assert date(2024, 5, 3) not in by_day
    assert by_day[None] == [None]
    snap = table.current_snapshot()
    assert snap is not None and snap.summary is not None
    assert snap.summary.additional_properties["run"] == "2"


def test_refuses_non_identity_partitions(catalog: Catalog, con: duckdb.DuckDBPyConnection) -> None:
    table = _table(catalog, "hourly", partition=None)
    with table.update_spec() as spec:
        spec.add_field("at", "day")
    with pytest.raises(ValueError, match="identity"):
        write_data_files(con, "rows_new", table)


def test_a_day_that_cannot_be_written_fails_the_write_and_no_lane_starts_another(
    catalog: Catalog, con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import clicklake.lakehouse.duckdb_write as dw

    table = _table(catalog, "broken")
    started: list[str] = []
    real_load = dw.load_location_provider

    class Provider:
        """The first day asked for (the largest, on one lane) cannot be placed; every other day
        takes 0.2 s to start, so the failure is known before the other lane could move on."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def new_data_location(self, name: str, key: Any = None) -> str:
            started.append(name)
            if len(started) == 1:
                raise OSError("no room for this day")
            time.sleep(0.2)
            return str(self.inner.new_data_location(name, key))

    monkeypatch.setattr(dw, "load_location_provider", lambda **kw: Provider(real_load(**kw)))
    with pytest.raises(OSError, match="no room"):
        write_data_files(con, "rows_new", table, workers=2)
    # Four days, two lanes: the failing day, and at most the one the other lane had started.
    assert 1 <= len(started) <= 2


@pytest.mark.parametrize("partition", ["day", None])
def test_rows_counted_in_another_table_are_checked_against_the_rows_written(
    catalog: Catalog, con: duckdb.DuckDBPyConnection, partition: str | None
) -> None:
    # The model runner writes a view joining narrow rows to wide ones and counts the narrow
    # table's rows instead (the same count per day): a count that missed rows must fail the write,
    # never skip a day.
    table = _table(catalog, f"counted_{partition}", partition=partition)
    con.execute("CREATE TABLE keys AS SELECT id, day FROM rows_new")
    con.execute(
        "CREATE VIEW wide AS SELECT r.* FROM rows_new AS r JOIN keys AS k ON k.id IS NOT DISTINCT FROM r.id"
    )
    files = write_data_files(con, "wide", table, workers=2, counted_in="keys")
    assert sum(f.record_count for f in files) == ROWS.num_rows
    # Rows counted that the view lacks (a join that lost them): the write fails.
    con.execute("CREATE TABLE more_keys AS SELECT * FROM keys UNION ALL SELECT 'gone', DATE '2024-05-02'")
    with pytest.raises(RuntimeError, match="more_keys counted 11"):
        write_data_files(con, "wide", table, workers=2, counted_in="more_keys")
