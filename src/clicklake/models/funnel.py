"""Funnels over ``events``: ordered steps, a conversion window, counts and drop-off per step.

Who goes through the funnel is the device key ``coalesce(anonymous_id, user_id)`` (as for
sessions), per ``app_id``. Events are deduplicated by ``event_id`` (earliest collector time)
and bots are left out unless ``models.include_bots``.

- ``order="strict"``: the entity's first step-1 event in ``[start, end)`` is the anchor ``t1``;
  step ``i`` is reached by the first step-``i`` event strictly after the event that reached step
  ``i - 1``, at most ``window`` after ``t1``.
- ``order="any"``: the anchor ``t0`` is the entity's first event matching any step; step ``i``
  is reached when steps ``1..i`` each have at least one matching event in ``[t0, t0 + window]``.

Breakdown values come from the anchor event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa

from clicklake.config import Settings
from clicklake.exceptions import InputError
from clicklake.models.render import options_from_settings
from clicklake.models.runner import OPTIONAL_EVENT_COLUMNS
from clicklake.query.engine import connect, quote_ident, quote_literal

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Step:
    """One funnel step: an event name and/or a URL path regex (both must match when both given).

    Attributes:
        event: ``event_name`` to match (track event name, or page/screen name).
        path: Regular expression searched in the event's URL path (``page_urlpath`` when
            enriched, else ``page_path``).
        label: Name shown in the result (default: built from event and path).
    """

    event: str | None = None
    path: str | None = None
    label: str | None = None

    def name(self) -> str:
        if self.label:
            return self.label
        parts = [p for p in (self.event, self.path and f"path~{self.path}") if p]
        return " & ".join(parts)

    def condition(self) -> str:
        conds = []
        if self.event is not None:
            conds.append(f"event_name = {quote_literal(self.event)}")
        if self.path is not None:
            conds.append(f"regexp_matches(coalesce(url_path, ''), {quote_literal(self.path)})")
        if not conds:
            raise InputError("a funnel step needs an event name, a path, or both")
        return " AND ".join(conds)


def _as_step(step: Step | str | dict[str, str]) -> Step:
    if isinstance(step, Step):
        return step
    if isinstance(step, str):
        return Step(event=step)
    return Step(event=step.get("event"), path=step.get("path"), label=step.get("label"))


def funnel(
    settings: Settings,
    steps: Sequence[Step | str | dict[str, str]],
    window: timedelta | float,
    order: str = "strict",
    breakdown: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    app_id: str | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """Count how many entities reach each step of a funnel.

    Args:
        settings: The settings.
        steps: The steps, in order: :class:`Step`, an event name, or ``{"event":, "path":}``.
        window: Conversion window (a ``timedelta`` or seconds), counted from the anchor.
        order: ``"strict"`` (steps in the given order) or ``"any"`` (any order).
        breakdown: An ``events`` column to split by (e.g. ``default_channel_group``,
            ``dvce_class``, ``geo_country``).
        start: Only anchors at or after this time (aware datetime).
        end: Only events before this time.
        app_id: Only this app.
        con: Run on this connection (its ``events`` view; left open) instead of a new one.

    Returns:
        One row per (breakdown value, step): ``[breakdown,] step, step_name, entities,
        conversion_from_start, conversion_from_previous, drop_off, drop_off_rate``.

    Raises:
        InputError: No steps, a step without condition, bad order, window or breakdown.
    """
    parsed = [_as_step(s) for s in steps]
    if not parsed:
        raise InputError("a funnel needs at least one step")
    if order not in ("strict", "any"):
        raise InputError(f"funnel order {order!r}: use 'strict' or 'any'")
    window_s = window.total_seconds() if isinstance(window, timedelta) else float(window)
    if window_s <= 0:
        raise InputError("the funnel window must be positive")
    if breakdown is not None and not _IDENT.match(breakdown):
        raise InputError(f"breakdown {breakdown!r} is not a column name")
    opts = options_from_settings(settings)
    own = con is None
    if con is None:
        con = connect(settings, ["events"])
    try:
        present = (
            {str(r[0]) for r in con.execute("DESCRIBE events").fetchall()} if _has_events(con) else set()
        )
        if not present:
            return _empty(breakdown)
        if breakdown is not None and breakdown not in present and breakdown not in OPTIONAL_EVENT_COLUMNS:
            raise InputError(f"breakdown {breakdown!r} is not a column of events")
        bd = quote_ident(breakdown) if breakdown in present else "CAST(NULL AS VARCHAR)"
        url = "coalesce(page_urlpath, page_path)" if "page_urlpath" in present else "page_path"
        bot = "true" if opts.include_bots or "is_bot" not in present else "NOT coalesce(is_bot, false)"
        filters = [bot]
        if app_id is not None:
            filters.append(f"app_id = {quote_literal(app_id)}")
        if start is not None:
            filters.append(f"derived_tstamp >= CAST({quote_literal(start.isoformat())} AS TIMESTAMPTZ)")
        if end is not None:
            filters.append(f"derived_tstamp < CAST({quote_literal(end.isoformat())} AS TIMESTAMPTZ)")
        matches = ", ".join(f"({s.condition()}) AS m{i}" for i, s in enumerate(parsed, start=1))
        any_step = " OR ".join(f"({s.condition()})" for s in parsed)
        w_us = round(window_s * 1_000_000)
        # Only events matching some step can count, and the copies of one event_id carry the
        # same payload: keep the matching rows first, so the dedup window sorts a few rows
        # instead of every event (the time bounds apply after the dedup, as before).
        sql = [
            f"""WITH candidates AS (
                SELECT app_id, anonymous_id, user_id, derived_tstamp, collector_tstamp, event_id,
                    {bd} AS bd_raw, {"is_bot" if "is_bot" in present else "CAST(NULL AS BOOLEAN) AS is_bot"},
                    event_name, url_path
                FROM (SELECT *, {url} AS url_path FROM events) AS e
                WHERE {any_step}
            ), ranked AS (
                SELECT *,
                    row_number() OVER (PARTITION BY event_id ORDER BY collector_tstamp, derived_tstamp) AS rn
                FROM candidates
            ), ev AS (
                SELECT app_id, coalesce(anonymous_id, user_id) AS k, epoch_us(derived_tstamp) AS ts,
                    event_id, CAST(bd_raw AS VARCHAR) AS bd, {matches}
                FROM ranked WHERE rn = 1 AND {" AND ".join(filters)}
            )"""
        ]
        n = len(parsed)
        if order == "strict":
            sql.append(
                """, s1 AS (
                SELECT app_id, k, ts AS t, t1, bd FROM (
                    SELECT app_id, k, ts, ts AS t1, bd,
                        row_number() OVER (PARTITION BY app_id, k ORDER BY ts, event_id) AS r
                    FROM ev WHERE m1
                ) AS a WHERE r = 1
            )"""
            )
            for i in range(2, n + 1):
                sql.append(
                    f""", s{i} AS (
                    SELECT p.app_id, p.k, min(e.ts) AS t, p.t1, p.bd
                    FROM s{i - 1} AS p JOIN ev AS e ON e.app_id = p.app_id AND e.k = p.k
                    WHERE e.m{i} AND e.ts > p.t AND e.ts <= p.t1 + {w_us}
                    GROUP BY p.app_id, p.k, p.t1, p.bd
                )"""
                )
        else:
            any_match = " OR ".join(f"m{i}" for i in range(1, n + 1))
            reached = ", ".join(f"bool_or(e.m{i}) AS r{i}" for i in range(1, n + 1))
            sql.append(
                f""", anchor AS (
                SELECT app_id, k, ts AS t0, bd FROM (
                    SELECT app_id, k, ts, bd,
                        row_number() OVER (PARTITION BY app_id, k ORDER BY ts, event_id) AS r
                    FROM ev WHERE {any_match}
                ) AS a WHERE r = 1
            ), reach AS (
                SELECT a.app_id, a.k, a.bd, {reached}
                FROM anchor AS a JOIN ev AS e ON e.app_id = a.app_id AND e.k = a.k
                WHERE e.ts >= a.t0 AND e.ts <= a.t0 + {w_us}
                GROUP BY a.app_id, a.k, a.bd
            )"""
            )
            for i in range(1, n + 1):
                cond = " AND ".join(f"r{j}" for j in range(1, i + 1))
                sql.append(f", s{i} AS (SELECT app_id, k, bd FROM reach WHERE {cond})")
        names = [s.name() for s in parsed]
        counts = " UNION ALL ".join(
            f"SELECT bd, {i} AS step, {quote_literal(names[i - 1])} AS step_name, count(*) AS entities "
            f"FROM s{i} GROUP BY bd"
            for i in range(1, n + 1)
        )
        groups = "SELECT DISTINCT bd FROM s1"
        steps_sql = " UNION ALL ".join(
            f"SELECT {i} AS step, {quote_literal(names[i - 1])} AS step_name" for i in range(1, n + 1)
        )
        sql.append(
            f""", counts AS ({counts}),
            grid AS (SELECT g.bd, st.step, st.step_name FROM ({groups}) AS g CROSS JOIN ({steps_sql}) AS st),
            filled AS (
                SELECT g.bd, g.step, g.step_name, coalesce(c.entities, 0) AS entities
                FROM grid AS g LEFT JOIN counts AS c
                    ON c.step = g.step AND c.bd IS NOT DISTINCT FROM g.bd
            ),
            framed AS (
                SELECT f.*,
                    first_value(entities) OVER (PARTITION BY bd ORDER BY step) AS first_entities,
                    lag(entities) OVER (PARTITION BY bd ORDER BY step) AS prev_entities
                FROM filled AS f
            )
            SELECT bd AS breakdown, step, step_name, entities,
                CAST(entities AS DOUBLE) / first_entities AS conversion_from_start,
                CAST(entities AS DOUBLE) / coalesce(prev_entities, entities) AS conversion_from_previous,
                coalesce(prev_entities, entities) - entities AS drop_off,
                1.0 - CAST(entities AS DOUBLE) / coalesce(prev_entities, entities) AS drop_off_rate
            FROM framed
            ORDER BY bd NULLS FIRST, step"""
        )
        result = con.sql("".join(sql)).to_arrow_table()
    finally:
        if own:
            con.close()
    if breakdown is None:
        return result.drop_columns(["breakdown"])
    return result.rename_columns([breakdown, *result.column_names[1:]])


def _has_events(con: object) -> bool:
    import duckdb

    assert isinstance(con, duckdb.DuckDBPyConnection)
    row = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'events'").fetchone()
    return bool(row and row[0])


def _empty(breakdown: str | None) -> pa.Table:
    fields = [
        pa.field("step", pa.int32()),
        pa.field("step_name", pa.string()),
        pa.field("entities", pa.int64()),
        pa.field("conversion_from_start", pa.float64()),
        pa.field("conversion_from_previous", pa.float64()),
        pa.field("drop_off", pa.int64()),
        pa.field("drop_off_rate", pa.float64()),
    ]
    if breakdown is not None:
        fields.insert(0, pa.field(breakdown, pa.string()))
    return pa.schema(fields).empty_table()
