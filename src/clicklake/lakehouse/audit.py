"""The ``audit_log`` Iceberg table: one row per API call or SQL statement, allowed or denied."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)
from sqlalchemy.exc import SQLAlchemyError

from clicklake.config import Settings
from clicklake.exceptions import StorageError
from clicklake.lakehouse.catalog import TableSpec, ensure_tables, open_catalog

log = logging.getLogger("clicklake.audit")

AUDIT_LOG = "audit_log"

AUDIT_SCHEMA = Schema(
    NestedField(1, "audit_id", StringType(), required=False),
    NestedField(2, "tstamp", TimestamptzType(), required=False),
    NestedField(3, "token_name", StringType(), required=False),
    NestedField(4, "role", StringType(), required=False),
    NestedField(5, "apps", StringType(), required=False),
    NestedField(6, "kind", StringType(), required=False, doc="api | sql"),
    NestedField(7, "endpoint", StringType(), required=False),
    NestedField(8, "statement", StringType(), required=False),
    NestedField(9, "status", IntegerType(), required=False),
    NestedField(10, "allowed", BooleanType(), required=False),
    NestedField(11, "reason", StringType(), required=False),
    NestedField(12, "rows_returned", LongType(), required=False),
    NestedField(13, "duration_ms", DoubleType(), required=False),
    NestedField(14, "client", StringType(), required=False),
)
AUDIT_ARROW: pa.Schema = AUDIT_SCHEMA.as_arrow()


def audit_spec() -> TableSpec:
    """``audit_log`` partitioned by day of ``tstamp``."""
    spec = PartitionSpec(
        PartitionField(source_id=2, field_id=1000, transform=DayTransform(), name="tstamp_day")
    )
    return TableSpec(AUDIT_LOG, AUDIT_SCHEMA, spec)


def append_audit(
    settings: Settings, rows: Sequence[dict[str, Any]], retries: int = 8, table: Table | None = None
) -> Table | None:
    """Append ``rows`` to ``audit_log`` in one Iceberg commit (the table is created if missing).

    Args:
        settings: The settings (catalog location).
        rows: Audit rows, keyed by the column names of :data:`AUDIT_SCHEMA`.
        retries: Commit retries after losing a race with another writer.
        table: The table as the previous append left it (a writer that appends every few
            seconds skips opening the catalog again); it is reloaded if another writer
            committed in between.

    Returns:
        The table after the commit, for the next append (``None`` when there was nothing to write).

    Raises:
        StorageError: The catalog or warehouse cannot be written.
    """
    if not rows:
        return table
    data = pa.Table.from_pylist([{f.name: r.get(f.name) for f in AUDIT_ARROW} for r in rows], AUDIT_ARROW)
    delay = 0.05
    for attempt in range(retries + 1):
        try:
            if table is None:
                table = ensure_tables(open_catalog(settings), settings, (audit_spec(),))[AUDIT_LOG]
            table.append(data)
            snap = table.current_snapshot()
            log.info(
                "event=audit_appended rows=%d snapshot=%s", len(rows), snap.snapshot_id if snap else None
            )
            return table
        except CommitFailedException as exc:
            table = None  # another writer committed: reload
            if attempt == retries:
                raise StorageError(
                    f"audit_log commit lost {retries + 1} races; {len(rows)} rows not written"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot append to audit_log: {exc}") from exc
    return table  # not reached: the last attempt returns or raises
