"""The model tables' data files, written by DuckDB: what Spark and Trino need to read them by
field id, and the manifest entries a planner prunes with."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from clicklake.config import load_settings
from clicklake.lakehouse.catalog import ensure_tables, ingest_tables, open_catalog, table_id
from clicklake.models import build_models
from clicklake.models.runner import EVENTS_SNAPSHOT_KEY, MODEL_TABLES
from clicklake.query import run_sql
from tests.models.fixtures import ev, rows_to_arrow


def test_model_files_carry_field_ids_partitions_and_stats(tmp_path: Path) -> None:
    model_settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
    catalog = open_catalog(model_settings)
    ensure_tables(catalog, model_settings, ingest_tables(model_settings))["events"].append(
        rows_to_arrow(
            [
                ev("e1", "2024-05-01 10:00:00", anon="a1", path="/"),
                ev("e2", "2024-05-01 10:05:00", anon="a1", path="/cart", user="u1"),
                ev("e3", "2024-05-02 09:00:00", anon="a2", path="/"),
                ev("e4", "2024-05-03 23:59:59", anon="a3", session="s9", path="/x"),
            ]
        )
    )
    build_models(model_settings)
    events = catalog.load_table(table_id(model_settings, "events"))
    events_snapshot = events.current_snapshot()
    assert events_snapshot is not None
    for name, part in MODEL_TABLES.items():
        table = catalog.load_table(table_id(model_settings, name))
        schema = table.schema()
        snap = table.current_snapshot()
        assert snap is not None and snap.summary is not None
        assert snap.summary.additional_properties[EVENTS_SNAPSHOT_KEY] == str(events_snapshot.snapshot_id)
        files = [task.file for task in table.scan().plan_files()]
        assert files, name
        for f in files:
            path = f.file_path.removeprefix("file://")
            assert f.file_path.startswith(table.location() + "/data/")
            footer = pq.read_metadata(path)
            arrow = footer.schema.to_arrow_schema()
            # Every column under its Iceberg field id, optional as the table's columns are.
            assert [int(fld.metadata[b"PARQUET:field_id"]) for fld in arrow] == [
                schema.find_field(fld.name).field_id for fld in arrow
            ]
            assert {fld.name for fld in arrow} == set(schema.column_names)
            assert all(footer.schema.column(i).max_definition_level == 1 for i in range(footer.num_columns))
            assert f.record_count == footer.num_rows > 0
            assert set(f.value_counts) == {fld.field_id for fld in schema.fields}
            assert all(n == f.record_count for n in f.value_counts.values())
            assert set(f.null_value_counts) == set(f.value_counts)
            if part is None:
                assert len(f.partition) == 0
                continue
            # One day per file: its partition value, and the day column's bounds are that day.
            days = set(pq.read_table(path, columns=[part]).column(0).to_pylist())
            assert len(days) == 1
            (day,) = days
            assert isinstance(day, date)
            assert f.partition[0] == (day - date(1970, 1, 1)).days
            day_id = schema.find_field(part).field_id
            assert f.lower_bounds[day_id] == f.upper_bounds[day_id] == f.partition[0].to_bytes(4, "little")


def test_a_failed_commit_stops_the_build_and_the_next_build_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Commits run on a thread of their own while DuckDB writes the next table: a failure there
    # must still fail the build, commit nothing queued behind it, and leave a state the next
    # build repairs.
    from clicklake.models import runner

    s = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
    catalog = open_catalog(s)
    events = ensure_tables(catalog, s, ingest_tables(s))["events"]
    events.append(rows_to_arrow([ev("e1", "2024-05-01 10:00:00", anon="a1", path="/")]))
    build_models(s)
    first = catalog.load_table(table_id(s, "events")).current_snapshot()
    assert first is not None
    events = catalog.load_table(table_id(s, "events"))
    events.append(rows_to_arrow([ev("e2", "2024-05-02 10:00:00", anon="a2", path="/b")]))

    real = runner.commit_files
    committed: list[str] = []

    def failing(table: Any, *args: Any, **kwargs: Any) -> None:
        if table.name()[-1] == "page_views":
            raise OSError("disk full")
        committed.append(table.name()[-1])
        real(table, *args, **kwargs)

    monkeypatch.setattr(runner, "commit_files", failing)
    with pytest.raises(OSError, match="disk full"):
        build_models(s)
    assert committed == [], "nothing is committed after the failed commit"
    for name in MODEL_TABLES:
        snap = catalog.load_table(table_id(s, name)).current_snapshot()
        assert snap is not None and snap.summary is not None
        assert snap.summary.additional_properties[EVENTS_SNAPSHOT_KEY] == str(first.snapshot_id), name

    monkeypatch.setattr(runner, "commit_files", real)
    build_models(s)
    views = run_sql(s, "SELECT page_view_id FROM page_views ORDER BY 1").to_pylist()
    assert [r["page_view_id"] for r in views] == ["e1", "e2"]
