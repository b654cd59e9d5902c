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


def test_snapshot_files_read_only_new_manifests_and_equal_a_scan(tmp_path: Path) -> None:
    from pyiceberg.manifest import ManifestContent

    from clicklake.query.engine import ManifestFiles, snapshot_files

    s = load_settings(environ={}, storage={"data_dir": str(tmp_path)})
    table = ensure_tables(open_catalog(s), s, ingest_tables(s))["events"]
    manifests: dict[str, ManifestFiles] = {}
    assert snapshot_files(table, manifests=manifests) == snapshot_files(table)
    for i in range(3):
        table.append(rows_to_arrow([ev(f"e{i}", f"2024-05-0{i + 1} 10:00:00")]))
        before = set(manifests)
        got = snapshot_files(table, manifests=manifests)
        assert got == snapshot_files(table) and len(got.paths) == i + 1
        assert len(got.collector_max_us) == i + 1 and None not in got.collector_max_us
        # A fast append adds one manifest; the ones read before are not read again.
        assert before < set(manifests) and len(set(manifests) - before) == 1
    # A delete (rewritten files, or delete files: those are planned as a scan) reads the same,
    # and a snapshot read from manifests leaves only its own remembered.
    table.delete("event_id = 'e0'")
    assert snapshot_files(table, manifests=manifests) == snapshot_files(table)
    current = table.current_snapshot()
    assert current is not None
    listed = current.manifests(table.io)
    if all(m.content == ManifestContent.DATA for m in listed):
        assert set(manifests) == {m.manifest_path for m in listed}
