"""The models find the copy of an event that base_events kept by its place in the files (``_row``).

These cover the paths where that place could be ambiguous: the PyIceberg scan used when
``events`` has delete files, two windows whose margins read the same days, and the keys of one
file read through different file lists.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clicklake.lakehouse.catalog import open_catalog, table_id
from clicklake.models import build_models, runner
from clicklake.models.render import ModelOptions, options_from_settings, render, template_values
from clicklake.query.engine import ROW_KEY, parquet_relation
from tests.models.fixtures import ev
from tests.models.test_golden import LATE, _append, _settings, batch1
from tests.models.test_incremental_property import _snapshot


def test_pyiceberg_scan_path_gives_the_same_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(tmp_path)
    _append(s, batch1())  # holds a resend of e2 (the first collected copy is kept)
    _append(s, LATE)
    build_models(s, full_refresh=True)
    from_files = _snapshot(s)
    assert from_files["page_views"], "the golden events make page views"

    real = runner.snapshot_files

    def with_deletes(*args: Any, **kwargs: Any) -> Any:
        # As if the snapshot had delete files: the runner then reads events through PyIceberg.
        return dataclasses.replace(real(*args, **kwargs), has_deletes=True)

    monkeypatch.setattr(runner, "snapshot_files", with_deletes)
    build_models(s, full_refresh=True)
    assert _snapshot(s) == from_files


def _day(d: str, i: int, anon: str) -> dict[str, Any]:
    return ev(f"{anon}-{d}-{i}", f"{d} 12:0{i}:00", anon=anon, path=f"/p{i}")


def test_windows_whose_margins_meet_read_each_event_once(tmp_path: Path) -> None:
    # The ranges are merged (asserted directly); the build over them must still equal a full
    # refresh, resend included.
    s = _settings(tmp_path)
    days = ["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04", "2024-05-05"]
    _append(s, [_day(d, i, "a1") for d in days for i in range(3)])
    build_models(s)
    # Late events on 05-01 and 05-03: two windows one day apart, whose one-day margins both
    # read 05-02. A resend among them: dedup must still pick one copy.
    late = [_day("2024-05-01", 5, "a2"), _day("2024-05-03", 5, "a2")]
    resend = dict(late[1], collector_tstamp=late[1]["collector_tstamp"].replace(hour=13))
    _append(s, [*late, resend])

    catalog = open_catalog(s)
    events = catalog.load_table(table_id(s, "events"))
    builder = runner._Builder(s, catalog, events, options_from_settings(s))
    try:
        windows = builder.plan(full_refresh=False)
        assert windows == [
            runner.Window(date(2024, 5, 1), date(2024, 5, 2)),
            runner.Window(date(2024, 5, 3), date(2024, 5, 4)),
        ]
        _, ranges = builder._window_sql(windows, margin_days=1)
        assert len(ranges) == 1, "margins that meet are read as one range"
        # Further apart, the ranges stay apart.
        _, ranges = builder._window_sql(
            [runner.Window(date(2024, 5, 1), date(2024, 5, 2)), runner.Window(date(2024, 5, 5), None)],
            margin_days=1,
        )
        assert len(ranges) == 2
    finally:
        builder.con.close()

    build_models(s)  # incremental
    incremental = _snapshot(s)
    assert sum(r["page_views"] for r in incremental["sessions"]) == 5 * 3 + 2
    build_models(s, full_refresh=True)
    assert _snapshot(s) == incremental


def test_row_keys_name_a_file_row_whichever_files_are_read(tmp_path: Path) -> None:
    paths = []
    for f in range(3):
        path = tmp_path / f"f{f}.parquet"
        pq.write_table(pa.table({"x": [f * 10 + i for i in range(4)]}), path)
        paths.append(str(path))
    schema = pa.schema([pa.field("x", pa.int64())])
    con = duckdb.connect()
    every = dict(
        con.execute(
            f"SELECT x, {ROW_KEY} FROM ({parquet_relation(con, paths, schema, [0, 1, 2])})"
        ).fetchall()
    )
    assert every[21] == (2 << 32) | 1
    assert len(set(every.values())) == 12
    # Only the last two files, keeping their numbers: the same keys for the same rows.
    some = dict(
        con.execute(
            f"SELECT x, {ROW_KEY} FROM ({parquet_relation(con, paths[1:], schema, [1, 2])})"
        ).fetchall()
    )
    assert some == {x: k for x, k in every.items() if x >= 10}
    empty = parquet_relation(con, [], schema, [])
    assert con.execute(f"SELECT count(*) FROM ({empty})").fetchone() == (0,)
    with pytest.raises(ValueError, match="one file number per path"):
        parquet_relation(con, paths, schema, [0])


def test_session_keys_whose_hashes_clash_keep_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # key_id is a hash of the session key, and keys whose hash another key shares are numbered
    # apart (key_clashes). DuckDB's 64-bit hash never clashes on a handful of keys, so here the
    # models hash with a function that clashes all the time (a key's length mod 3): the tables
    # must be the same as with the real hash, and clashes must really have been numbered.
    s = _settings(tmp_path)
    _append(s, batch1())  # several visitors and apps, a resend, a client session id
    _append(s, LATE)
    build_models(s, full_refresh=True)
    expected = _snapshot(s)
    assert len(expected["sessions"]) > 3, "enough session keys to clash"

    real_render, real_connection = runner.render, runner.new_connection

    def clashing_render(name: str, values: dict[str, str]) -> str:
        sql = real_render(name, values)
        return sql.replace("hash(app_id, session_key)", "clash_hash(app_id, session_key)").replace(
            "hash(d.app_id, d.session_key)", "clash_hash(d.app_id, d.session_key)"
        )

    def connection() -> duckdb.DuckDBPyConnection:
        con = real_connection()
        con.execute(
            "CREATE MACRO clash_hash(a, k) AS CAST(length(coalesce(a, '') || coalesce(k, '')) % 3 AS UBIGINT) << 1"
        )
        return con

    clashes: list[int] = []
    real_create = runner._Builder._create

    def create(self: runner._Builder, name: str, sql: str, temp: bool = True) -> None:
        real_create(self, name, sql, temp)
        if name == "key_clashes":
            row = self.con.execute("SELECT count(*), count(DISTINCT key_no) FROM key_clashes").fetchall()[0]
            assert row[0] == row[1], "each clashing key has a number of its own"
            clashes.append(row[0])

    monkeypatch.setattr(runner, "render", clashing_render)
    monkeypatch.setattr(runner, "new_connection", connection)
    monkeypatch.setattr(runner._Builder, "_create", create)
    build_models(s, full_refresh=True)
    assert clashes and clashes[0] > 3, f"the weak hash made clashes: {clashes}"
    assert _snapshot(s) == expected


def test_duplicated_finds_each_repeated_value_once() -> None:
    import numpy as np

    top = np.uint64(1 << 63)
    values = np.array([5, 9, 5, top + 3, 7, top + 3, top + 3, 9, top + 1, 0, 0, top + 8], dtype=np.uint64)
    assert runner.duplicated(values.copy()).tolist() == [0, 5, 9, int(top) + 3]
    assert runner.duplicated(np.arange(10, dtype=np.uint64)).tolist() == []
    assert runner.duplicated(np.array([], dtype=np.uint64)).tolist() == []


def test_the_runner_finds_the_copies_that_copies_sql_finds() -> None:
    # The DuckDB runner computes copies.sql's rows by sorting hashes (create_copies); Spark runs
    # the SQL. Both must give the same hashes: repeated ids (twice, thrice), NULL ids (they hash
    # alike), ids seen once.
    con = duckdb.connect()
    ids = ["a", "b", "a", None, "c", "b", "b", None, "d", *[f"u{i}" for i in range(5000)]]
    con.register("ids", pa.table({"event_id": pa.array(ids, pa.string())}))
    con.execute("CREATE TEMP VIEW src_events AS SELECT event_id FROM ids")
    values = template_values(ModelOptions())
    expected = sorted(r[0] for r in con.execute(render("copies", values)).fetchall())
    assert len(expected) == 3, "a, b and NULL are repeated"
    runner.create_copies(con)
    assert sorted(r[0] for r in con.execute("SELECT event_h FROM copies").fetchall()) == expected
    con.execute("CREATE OR REPLACE TEMP VIEW src_events AS SELECT 'x' || range AS event_id FROM range(100)")
    runner.create_copies(con)
    assert con.execute("SELECT count(*) FROM copies").fetchall() == [(0,)]
