"""Fixtures for maintenance tests: an ``events`` table of many small files, written by the real
checkpointed sink (so snapshots carry real checkpoints), and helpers that read it back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.table import Table

from clicklake.config import Settings, load_settings
from clicklake.events.schema import EVENTS_ARROW
from clicklake.lakehouse.catalog import EVENTS, ensure_tables, ingest_tables, open_catalog, table_id
from clicklake.lakehouse.sink import TableSink

DAY0 = date(2026, 11, 20)
_DAY_US = 86_400_000_000


def event_rows(batch: int, n: int, days: int, users: int = 7) -> pa.Table:
    """``n`` events ``b<batch>-<i>`` spread over ``days`` days from :data:`DAY0` and ``users`` users;
    source offsets ``batch * 100_000 + i`` of stream ``s``."""
    base = int(datetime(DAY0.year, DAY0.month, DAY0.day, tzinfo=UTC).timestamp() * 1_000_000)
    cols = {f.name: pa.nulls(n, f.type) for f in EVENTS_ARROW}
    cols["event_id"] = pa.array([f"b{batch}-{i}" for i in range(n)], pa.large_string())
    cols["event_type"] = pa.array(["track"] * n, pa.large_string())
    cols["app_id"] = pa.array(["app"] * n, pa.large_string())
    cols["user_key"] = pa.array([f"u{i % users}" for i in range(n)], pa.large_string())
    ts = pa.array([base + (i % days) * _DAY_US + i * 1000 for i in range(n)], pa.int64())
    cols["derived_tstamp"] = ts.cast(pa.timestamp("us", tz="UTC"))
    cols["collector_tstamp"] = cols["derived_tstamp"]
    cols["source_stream"] = pa.array(["s"] * n, pa.large_string())
    cols["source_offset"] = pa.array([batch * 100_000 + i for i in range(n)], pa.int64())
    cols["source_index"] = pa.array([0] * n, pa.int32())
    return pa.table(cols, schema=EVENTS_ARROW)


@dataclass
class SmallFiles:
    """An ``events`` table written in ``batches`` commits (each spread over every partition)."""

    settings: Settings
    sink: TableSink
    batches: int = 0

    def table(self) -> Table:
        return open_catalog(self.settings).load_table(table_id(self.settings, EVENTS))

    def commit(self, n: int = 60, days: int = 3) -> None:
        self.sink.add(event_rows(self.batches, n, days))
        self.batches += 1
        self.sink.commit({"s": self.batches * 100_000})


def make_small_files(data_dir: Path, batches: int = 6, buckets: int = 2, **maintenance: object) -> SmallFiles:
    opts = {"min_input_files": 2, "small_file_bytes": 10_000_000, "target_file_bytes": 100_000_000}
    opts.update(maintenance)  # type: ignore[arg-type]
    settings = load_settings(
        environ={},
        storage={"data_dir": str(data_dir)},
        pipeline={"event_buckets": buckets},
        maintenance=opts,
    )
    tables = ensure_tables(open_catalog(settings), settings, ingest_tables(settings))
    sf = SmallFiles(settings, TableSink(tables[EVENTS], "main", "test", "load_tstamp"))
    for _ in range(batches):
        sf.commit()
    return sf


@pytest.fixture
def small_files(tmp_path: Path) -> Callable[..., SmallFiles]:
    """Build an ``events`` table of small files: ``small_files(batches=6, buckets=2, **maintenance)``."""
    return lambda **kw: make_small_files(tmp_path / "data", **kw)


def row_multiset(table: Table, snapshot_id: int | None = None) -> Counter[str]:
    """Every row of a snapshot (default: current), read in full, as a multiset of event ids."""
    scan = table.scan(snapshot_id=snapshot_id) if snapshot_id is not None else table.scan()
    return Counter(scan.to_arrow().column("event_id").to_pylist())
