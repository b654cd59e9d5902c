"""Fixtures for model tests: a real Iceberg ``events`` table fed from small hand-made rows."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from clicklake.config import Settings, load_settings
from clicklake.events.schema import EVENTS_ARROW
from clicklake.lakehouse.catalog import ensure_tables, ingest_tables, open_catalog

_counter = itertools.count()


def ts(text: str) -> datetime:
    """``'2024-05-01 10:00:00'`` (UTC) as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ev(
    event_id: str,
    at: str,
    *,
    type: str = "page",
    name: str | None = None,
    anon: str | None = "a1",
    user: str | None = None,
    session: str | None = None,
    app: str = "shop",
    url: str | None = None,
    path: str | None = None,
    props: dict[str, Any] | None = None,
    collected: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``events`` row; times are UTC ISO strings; ``collected`` defaults to ``at``."""
    if type == "page" and url is None and path is None:
        path = "/"
    row: dict[str, Any] = {
        "event_id": event_id,
        "event_type": type,
        "event_name": name,
        "app_id": app,
        "user_id": user,
        "anonymous_id": anon,
        "session_id": session,
        "user_key": user or anon,
        "dvce_created_tstamp": ts(at),
        "collector_tstamp": ts(collected or at),
        "derived_tstamp": ts(at),
        "page_url": url if url is not None else (f"https://shop.example{path}" if path else None),
        "page_path": path,
        "properties": orjson.dumps(props or {}).decode(),
        "source_stream": "test",
        "source_offset": next(_counter),
        "source_index": 0,
    }
    row.update(extra)
    return row


def rows_to_arrow(rows: Sequence[dict[str, Any]], extra_schema: pa.Schema | None = None) -> pa.Table:
    """``rows`` as an Arrow table with the ``events`` schema (plus ``extra_schema`` columns)."""
    schema = EVENTS_ARROW
    if extra_schema is not None:
        for f in extra_schema:
            schema = schema.append(f)
    cols = {f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in schema}
    return pa.table(cols, schema=schema)


@pytest.fixture
def model_settings(tmp_path: Path) -> Settings:
    """Default settings on a fresh data directory."""
    return load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})


AppendEvents = Callable[..., None]


@pytest.fixture
def append_events(model_settings: Settings) -> Iterator[AppendEvents]:
    """Append rows to the real Iceberg ``events`` table (one snapshot per call).

    Extra columns (enrichment, e.g. ``is_bot``) are added to the table schema first.
    """

    def append(
        rows: Sequence[dict[str, Any]], settings: Settings | None = None, extra: pa.Schema | None = None
    ) -> None:
        s = settings or model_settings
        catalog = open_catalog(s)
        table = ensure_tables(catalog, s, ingest_tables(s))["events"]
        if extra is not None:
            with table.update_schema() as update:
                update.union_by_name(extra)
        table.append(rows_to_arrow(rows, extra))

    yield append
