"""Pre-aggregated rollups the dashboard answers from, instead of scanning the tables per call.

At 10 million events a dashboard call that scans ``sessions`` (about 700,000 rows) or the
``events`` files costs tens to thousands of milliseconds of CPU; twenty clients on two cores
then queue behind each other. The rollups are built once per snapshot (per role scope) and every
call reads a few thousand rows of them:

- :class:`SessionCube`: the role's ``sessions`` summed per cell ``(app_id, session_date,
  default_channel_group, dvce_class[, dimension value])``, with each cell's users as a Roaring
  bitmap of dense user numbers. Sums of cells give sessions, page views, bounces, conversions,
  revenue and durations exactly; the union of the cells' bitmaps gives the exact count of
  distinct users for any date range and filter.
- :class:`PageCube`: ``page_views`` per cell and clean page path (views, engaged time, and the
  sessions whose first view of the page falls in the cell), with entrances and exits from
  ``sessions``.
- :class:`FileRollups`: a small aggregate per immutable data file of ``events`` or
  ``failed_events`` (event names per day, failures per reason with the latest examples). A new
  snapshot only aggregates the files it adds; files it no longer has are forgotten.

The cubes are built from the role's own (filtered, masked) relations, so a role's rollup holds
only its rows; the file rollups hold every app and are narrowed to the role's apps (and its PII
masks) when read.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyroaring import BitMap

from clicklake.query.engine import quote_ident, quote_literal

#: A cell's key columns (``v`` only in a dimension's cube).
CELL = ("app_id", "d", "ch", "dv")
#: Latest failed events kept per file, day, app and reason (the health call shows 3).
SAMPLES = 5


def work_connection(threads: int) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for the serving layer's own builds (UTC, bounded to 1 GB)."""
    con = duckdb.connect(":memory:", config={"threads": max(1, threads), "memory_limit": "1GB"})
    con.execute("SET TimeZone = 'UTC'")
    return con


def _eq(column: pa.ChunkedArray, value: str | None) -> pa.ChunkedArray:
    # ``IS NOT DISTINCT FROM value``: '(none)' stands for NULL, as in the dashboard's filters.
    if value is None or value == "(none)":
        return pc.is_null(column)
    return pc.fill_null(pc.equal(column, value), False)


@dataclass(frozen=True)
class CellFilter:
    """Which cells a call reads: a day range, and optionally one app, channel and device."""

    start: date
    end: date
    app: str | None = None
    channel: str | None = None
    device: str | None = None


def _select(table: pa.Table, f: CellFilter) -> np.ndarray:
    mask = pc.and_(pc.greater_equal(table["d"], f.start), pc.less_equal(table["d"], f.end))
    if f.app is not None:
        mask = pc.and_(mask, pc.fill_null(pc.equal(table["app_id"], f.app), False))
    if f.channel is not None:
        mask = pc.and_(mask, _eq(table["ch"], f.channel))
    if f.device is not None:
        mask = pc.and_(mask, _eq(table["dv"], f.device))
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False))


class SessionCube:
    """``sessions`` summed per cell, with the users of each cell as a bitmap.

    Args:
        table: One row per cell: :data:`CELL` (and ``v``), ``sessions``, ``page_views``,
            ``bounces``, ``engaged``, ``converted``, ``conversions``, ``revenue``,
            ``duration_sum``, ``duration_n``.
        users: Each row's users (dense user numbers), aligned with ``table``.
    """

    MEASURES = (
        "sessions",
        "page_views",
        "bounces",
        "engaged",
        "converted",
        "conversions",
        "revenue",
        "duration_sum",
        "duration_n",
    )

    def __init__(self, table: pa.Table, users: list[BitMap]):
        self.table = table
        self.users = users
        self._cols = {m: table[m].to_numpy(zero_copy_only=False) for m in self.MEASURES}

    def _users(self, idx: np.ndarray) -> int:
        if len(idx) == 0:
            return 0
        return len(BitMap.union(*(self.users[i] for i in idx)))

    def _measures(self, idx: np.ndarray) -> dict[str, Any]:
        s = {m: self._cols[m][idx].sum() for m in self.MEASURES}
        n = int(s["sessions"])
        return {
            "users": self._users(idx),
            "sessions": n,
            "page_views": int(s["page_views"]),
            "bounce_rate": float(s["bounces"]) / n if n else 0.0,
            "engagement_rate": float(s["engaged"]) / n if n else 0.0,
            "conversions": int(s["conversions"]),
            "conversion_rate": float(s["converted"]) / n if n else 0.0,
            "revenue": float(s["revenue"]),
            "avg_session_duration_s": float(s["duration_sum"]) / int(s["duration_n"])
            if s["duration_n"]
            else 0.0,
        }

    def totals(self, f: CellFilter) -> dict[str, Any]:
        """The KPI totals of the cells ``f`` selects (rates are 0 when there are no sessions)."""
        return self._measures(_select(self.table, f))

    def grouped(self, f: CellFilter, key: str) -> list[tuple[Any, dict[str, Any]]]:
        """The measures per value of ``key`` (``d`` or ``v``) over the cells ``f`` selects."""
        idx = _select(self.table, f)
        if len(idx) == 0:
            return []
        keys = self.table[key].take(pa.array(idx)).to_pylist()
        groups: dict[Any, list[int]] = {}
        for k, i in zip(keys, idx.tolist(), strict=True):
            groups.setdefault(k, []).append(i)
        return [(k, self._measures(np.asarray(rows, dtype=np.int64))) for k, rows in groups.items()]

    def values(self, column: str) -> list[Any]:
        """The distinct values of a key column."""
        return list(pc.unique(self.table[column]).to_pylist())

    @classmethod
    def build(
        cls,
        con: duckdb.DuckDBPyConnection,
        sessions: pa.Table,
        value: str | None,
        conversion: tuple[str, str, str],
    ) -> SessionCube:
        """The cube of ``sessions`` (with a ``uid`` column), split by the expression ``value``."""
        converted, revenue, volume = conversion
        v = f", {value} AS v" if value is not None else ""
        con.register("__sessions", sessions)
        try:
            table = con.sql(
                f"""SELECT app_id, session_date AS d, default_channel_group AS ch, dvce_class AS dv{v},
                    count(*) AS sessions, CAST(coalesce(sum(page_views), 0) AS BIGINT) AS page_views,
                    count(*) FILTER (WHERE is_bounce) AS bounces, count(*) FILTER (WHERE is_engaged) AS engaged,
                    count(*) FILTER (WHERE {converted}) AS converted,
                    CAST(coalesce(sum({volume}), 0) AS BIGINT) AS conversions,
                    CAST(coalesce(sum({revenue}), 0.0) AS DOUBLE) AS revenue,
                    CAST(coalesce(sum(duration_s), 0.0) AS DOUBLE) AS duration_sum,
                    count(duration_s) AS duration_n,
                    list(uid ORDER BY uid) FILTER (WHERE uid IS NOT NULL) AS uids
                FROM __sessions GROUP BY ALL"""
            ).to_arrow_table()
        finally:
            con.unregister("__sessions")
        uids = table["uids"].combine_chunks()
        offsets = uids.offsets.to_numpy()
        flat = uids.values.to_numpy(zero_copy_only=False).astype(np.uint32)
        users = [BitMap(flat[offsets[i] : offsets[i + 1]]) for i in range(len(table))]
        return cls(table.drop_columns(["uids"]), users)


class PageCube:
    """``page_views`` per cell and clean path, with entrances and exits from ``sessions``."""

    def __init__(self, views: pa.Table, ends: pa.Table):
        self.views = views
        self.ends = ends

    def top(self, f: CellFilter, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most viewed pages of the cells ``f`` selects, with exit rate."""
        views = self.views.take(pa.array(_select(self.views, f), type=pa.int64()))
        ends = self.ends.take(pa.array(_select(self.ends, f), type=pa.int64()))
        per_page = views.group_by("page").aggregate(
            [("views", "sum"), ("sessions", "sum"), ("engaged_sum", "sum"), ("engaged_n", "sum")]
        )
        # Most views first, then the path (no path last), as ORDER BY views DESC, page would.
        order = pc.sort_indices(
            per_page, [("views_sum", "descending", "at_end"), ("page", "ascending", "at_end")]
        )
        top = per_page.take(order[:limit])
        ends = ends.filter(pc.is_in(ends["page"], value_set=top["page"], skip_nulls=False))
        done = {
            r["page"]: r
            for r in ends.group_by("page").aggregate([("entrances", "sum"), ("exits", "sum")]).to_pylist()
        }
        out = []
        for r in top.to_pylist():
            e = done.get(r["page"], {})
            exits = int(e.get("exits_sum") or 0)
            out.append(
                {
                    "page": r["page"],
                    "views": int(r["views_sum"]),
                    "sessions": int(r["sessions_sum"]),
                    "entrances": int(e.get("entrances_sum") or 0),
                    "exits": exits,
                    "exit_rate": exits / r["views_sum"],
                    "avg_engaged_time_s": (r["engaged_sum_sum"] / r["engaged_n_sum"])
                    if r["engaged_n_sum"]
                    else None,
                }
            )
        return out

    @classmethod
    def build(cls, con: duckdb.DuckDBPyConnection, page_views: pa.Table, sessions: pa.Table) -> PageCube:
        """The cube of ``page_views`` and of the ``sessions``' landing and exit pages."""
        con.register("__pv_src", page_views)
        con.register("__s_src", sessions)
        try:
            views = con.sql(
                """SELECT app_id, page_view_date AS d, default_channel_group AS ch, dvce_class AS dv,
                    page_path_clean AS page, count(*) AS views, count(*) FILTER (WHERE first_view) AS sessions,
                    sum(engaged_time_s) AS engaged_sum, count(engaged_time_s) AS engaged_n
                FROM (
                    SELECT *, row_number() OVER (
                        PARTITION BY session_id, page_path_clean ORDER BY page_view_in_session_index, page_view_id
                    ) = 1 AS first_view
                    FROM __pv_src
                ) AS p GROUP BY ALL"""
            ).to_arrow_table()
            ends = con.sql(
                """SELECT app_id, d, ch, dv, page, sum(entrances) AS entrances, sum(exits) AS exits FROM (
                    SELECT app_id, session_date AS d, default_channel_group AS ch, dvce_class AS dv,
                        landing_page_path AS page, 1 AS entrances, 0 AS exits
                    FROM __s_src WHERE landing_page_path IS NOT NULL
                    UNION ALL
                    SELECT app_id, session_date, default_channel_group, dvce_class, exit_page_path, 0, 1
                    FROM __s_src WHERE exit_page_path IS NOT NULL
                ) AS x GROUP BY ALL"""
            ).to_arrow_table()
        finally:
            con.unregister("__pv_src")
            con.unregister("__s_src")
        return cls(views, ends)


class FileRollups:
    """One small aggregate per data file of a table, kept across snapshots (files never change).

    Args:
        sql: A ``SELECT`` over ``{files}`` (a ``read_parquet`` with ``filename=true``) grouping
            by ``filename`` first.
        threads: DuckDB threads for the aggregation.
        reduce_sql: A ``SELECT`` over ``merged`` (every file's rows of one snapshot) that
            folds the files together; the snapshot's answer is its result.
    """

    def __init__(self, sql: str, threads: int, reduce_sql: str | None = None):
        self.sql = sql
        self.reduce_sql = reduce_sql
        self.threads = threads
        self._lock = threading.Lock()
        self._per_file: dict[str, pa.Table] = {}
        self._paths: tuple[str, ...] | None = None
        self._merged: pa.Table | None = None

    def table(self, paths: Sequence[str]) -> pa.Table:
        """The aggregates of ``paths`` (one snapshot's data files), computing only new files'."""
        key = tuple(paths)
        with self._lock:
            if self._paths == key and self._merged is not None:
                return self._merged
            missing = [p for p in key if p not in self._per_file]
            if missing:
                con = work_connection(self.threads)
                try:
                    for i in range(0, len(missing), 500):
                        chunk = missing[i : i + 500]
                        files = "[" + ", ".join(quote_literal(p) for p in chunk) + "]"
                        source = f"read_parquet({files}, filename=true, union_by_name=true)"
                        out = con.sql(self.sql.format(files=source)).to_arrow_table()
                        names = out["filename"].to_pylist()
                        starts: dict[str, list[int]] = {}
                        for row, name in enumerate(names):
                            starts.setdefault(name, []).append(row)
                        for p in chunk:
                            rows = starts.get(p, [])
                            self._per_file[p] = out.take(pa.array(rows, type=pa.int64()))
                finally:
                    con.close()
            wanted = set(key)
            for p in [p for p in self._per_file if p not in wanted]:
                del self._per_file[p]
            parts = [self._per_file[p] for p in key]
            # One chunk: compute kernels over thousands of one-file chunks cost more than the data.
            self._merged = pa.concat_tables(parts).combine_chunks() if parts else None
            if self._merged is not None and self.reduce_sql is not None:
                con = work_connection(self.threads)
                try:
                    con.register("merged", self._merged)
                    self._merged = con.sql(self.reduce_sql).to_arrow_table().combine_chunks()
                finally:
                    con.close()
            self._paths = key
            if self._merged is None:
                raise LookupError("no data files")
            return self._merged


EVENT_NAMES_SQL = """SELECT filename, app_id, CAST(derived_tstamp AS DATE) AS d, event_name, count(*) AS n
FROM {files}
WHERE event_name IS NOT NULL AND event_type IN ('track', 'page', 'screen')
GROUP BY ALL"""

#: Failures of all files per day, app and reason, with the latest examples of them all.
FAILURES_REDUCE_SQL = (
    """SELECT app_id, d, stage, error_type, CAST(sum(n) AS BIGINT) AS n,
    list_reverse_sort(flatten(list(examples)))[1:"""
    + str(SAMPLES)
    + """] AS examples
FROM merged GROUP BY ALL"""
)
#: Event names of all files per day and app.
EVENT_NAMES_REDUCE_SQL = "SELECT app_id, d, event_name, CAST(sum(n) AS BIGINT) AS n FROM merged GROUP BY ALL"

FAILURES_SQL = (
    """SELECT filename, app_id, CAST(collector_tstamp AS DATE) AS d, stage, error_type, count(*) AS n,
    list({{'collector_tstamp': collector_tstamp, 'event_id': event_id,
           'error_message': left(error_message, 300), 'raw': left(CAST(raw AS VARCHAR), 300)}}
         ORDER BY collector_tstamp DESC)[1:"""
    + str(SAMPLES)
    + """] AS examples
FROM {files}
GROUP BY ALL"""
)


def app_mask(table: pa.Table, apps: Collection[str] | None, app: str | None) -> pa.Table:
    """``table``'s rows of ``apps`` (``None``: every app) and, when given, of ``app`` only."""
    if apps is not None:
        table = table.filter(pc.is_in(table["app_id"], value_set=pa.array(sorted(apps), type=pa.string())))
    if app is not None:
        table = table.filter(pc.fill_null(pc.equal(table["app_id"], app), False))
    return table


def value_expression(column: str) -> str:
    """A breakdown dimension's value as the dashboard shows it (``'(none)'`` for NULL)."""
    return f"coalesce(CAST({quote_ident(column)} AS VARCHAR), '(none)')"
