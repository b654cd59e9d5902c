"""DuckDB views over Iceberg snapshots, and read-only SQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from clicklake.config import load_settings
from clicklake.exceptions import InputError
from clicklake.lakehouse.catalog import ensure_tables, ingest_tables, open_catalog
from clicklake.query import connect, run_sql
from tests.models.fixtures import ev, rows_to_arrow


def test_empty_tables_have_columns_and_no_rows(tmp_path: Path) -> None:
    s = load_settings(environ={}, storage={"data_dir": str(tmp_path)})
    ensure_tables(open_catalog(s), s, ingest_tables(s))
    con = connect(s)
    cols = [r[0] for r in con.execute("DESCRIBE events").fetchall()]
    assert cols[:3] == ["event_id", "event_type", "event_name"]
    assert con.execute("SELECT count(*) FROM failed_events").fetchone() == (0,)


def test_reads_current_snapshot_and_new_columns(tmp_path: Path) -> None:
    s = load_settings(environ={}, storage={"data_dir": str(tmp_path)})
    table = ensure_tables(open_catalog(s), s, ingest_tables(s))["events"]
    table.append(rows_to_arrow([ev("e1", "2024-05-01 10:00:00"), ev("e2", "2024-05-02 10:00:00")]))
    from pyiceberg.types import StringType

    with table.update_schema() as update:
        update.add_column("geo_country", StringType())
    out = run_sql(s, "SELECT event_id, geo_country FROM events ORDER BY event_id")
    assert out.to_pylist() == [
        {"event_id": "e1", "geo_country": None},
        {"event_id": "e2", "geo_country": None},
    ]
    table.delete("event_id = 'e1'")  # may rewrite files or add delete files: both must read right
    assert run_sql(s, "SELECT event_id FROM events").column(0).to_pylist() == ["e2"]


@pytest.mark.parametrize("sql", ["DROP TABLE events", "SELECT 1; SELECT 2", "COPY (SELECT 1) TO 'x.csv'"])
def test_run_sql_is_read_only(tmp_path: Path, sql: str) -> None:
    s = load_settings(environ={}, storage={"data_dir": str(tmp_path)})
    with pytest.raises(InputError):
        run_sql(s, sql)
