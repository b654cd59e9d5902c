"""Rows that failed after decoding (enrichment), as ``failed_events`` rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from clicklake.events.schema import EVENT_COLUMNS, FAILED_ARROW

_CANONICAL = [c.name for c in EVENT_COLUMNS if not c.name.startswith("source_") and c.name != "load_tstamp"]


def _default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def rows_to_failures(rows: pa.Table | pa.RecordBatch, stage: str, error_type: str, message: str) -> pa.Table:
    """``failed_events`` rows for decoded events that failed later.

    ``raw`` is the decoded event (its canonical columns) as JSON: the line's bytes are gone by
    then, and these columns hold everything the client sent (properties, traits, context).
    This runs only for failures, so it may go row by row.
    """
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
    n = table.num_rows
    present = [c for c in _CANONICAL if c in table.column_names]
    raws = [orjson.dumps(r, default=_default) for r in table.select(present).to_pylist()]
    cols: dict[str, Any] = {
        "app_id": table.column("app_id"),
        "collector_tstamp": table.column("collector_tstamp"),
        "stage": pa.array([stage] * n, pa.large_string()),
        "error_type": pa.array([error_type] * n, pa.large_string()),
        "error_message": pa.array([message] * n, pa.large_string()),
        "event_id": table.column("event_id"),
        "raw": pa.array(raws, pa.large_binary()),
        "source_stream": table.column("source_stream"),
        "source_offset": table.column("source_offset"),
        "source_index": table.column("source_index"),
    }
    return pa.Table.from_arrays(
        [cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in FAILED_ARROW],
        schema=FAILED_ARROW,
    )
