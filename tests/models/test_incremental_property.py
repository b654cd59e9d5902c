"""Property: any split of the input into micro-batches and runs gives the tables of a full refresh."""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.config import Settings, load_settings
from clicklake.lakehouse.catalog import ensure_tables, ingest_tables, open_catalog
from clicklake.models import build_models
from clicklake.query import run_sql
from tests.models.fixtures import ev, rows_to_arrow

T0 = datetime(2024, 5, 1, 22, 0, tzinfo=UTC)
TABLES = {
    "sessions": "session_id",
    "page_views": "page_view_id",
    "users": "app_id, user_key",
    "user_mapping": "app_id, anonymous_id",
    "daily_kpis": "app_id, date",
}

event = st.tuples(
    st.integers(0, 3 * 24 * 60),  # minute offset over three days
    st.sampled_from(["d1", "d2"]),
    st.sampled_from(["page", "ping", "order"]),
    st.sampled_from([None, "u1"]),
)


def _rows(spec: list[tuple[int, str, str, str | None]]) -> list[dict[str, Any]]:
    rows = []
    for i, (minute, dev, kind, user) in enumerate(spec):
        at = (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:%S")
        if kind == "page":
            rows.append(ev(f"e{i}", at, anon=dev, user=user, path=f"/p{minute % 3}"))
        elif kind == "ping":
            rows.append(ev(f"e{i}", at, anon=dev, user=user, type="track", name="Page Ping", path="/p0"))
        else:
            rows.append(
                ev(
                    f"e{i}",
                    at,
                    anon=dev,
                    user=user,
                    type="track",
                    name="Order Completed",
                    props={"revenue": 5},
                )
            )
    return rows


def _snapshot(s: Settings) -> dict[str, list[dict[str, Any]]]:
    return {t: run_sql(s, f"SELECT * FROM {t} ORDER BY {key}").to_pylist() for t, key in TABLES.items()}


def _load(data_dir: str, batches: list[list[dict[str, Any]]], runs: set[int]) -> Settings:
    s = load_settings(environ={}, storage={"data_dir": data_dir})
    table = ensure_tables(open_catalog(s), s, ingest_tables(s))["events"]
    for i, batch in enumerate(batches):
        if batch:
            table.append(rows_to_arrow(batch))
        if i in runs:
            build_models(s)
    build_models(s)
    return s


@settings(max_examples=10, deadline=None)
@given(
    spec=st.lists(event, min_size=1, max_size=25),
    cuts=st.lists(st.integers(0, 25), max_size=4),
    runs=st.sets(st.integers(0, 4), max_size=3),
    shuffle=st.randoms(use_true_random=False),
)
def test_any_split_equals_full_refresh(
    spec: list[Any], cuts: list[int], runs: set[int], shuffle: Any
) -> None:
    rows = _rows(spec)
    shuffle.shuffle(rows)  # arrival order is not event order: late and out-of-order events
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    batches = [rows[a:b] for a, b in itertools.pairwise(bounds)]
    with tempfile.TemporaryDirectory() as inc_dir, tempfile.TemporaryDirectory() as full_dir:
        inc = _load(inc_dir, batches, runs)
        full = _load(full_dir, [rows], set())
        build_models(full, full_refresh=True)
        assert _snapshot(inc) == _snapshot(full)
