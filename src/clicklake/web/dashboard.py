"""Every number the dashboard shows, computed for a role over its filtered, masked views.

Each method takes the caller's :class:`~clicklake.query.access.Role` and :class:`Filters` and
returns JSON-able data. The SQL is clicklake's own (``trusted``), but it runs in the role's
locked database, so it sees exactly what the role's own SQL would. Answers are cached per
role scope, parameters and snapshot set: a new commit to any table invalidates them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.exceptions import ClickLakeError, InputError
from clicklake.lakehouse.audit import AUDIT_LOG
from clicklake.models.funnel import Step, funnel
from clicklake.models.render import options_from_settings
from clicklake.query.access import Role
from clicklake.query.engine import quote_ident
from clicklake.query.secure import Narrow, SecureQueries, TableState
from clicklake.web.funnel_index import FunnelIndex, FunnelQuery
from clicklake.web.rollups import (
    EVENT_NAMES_REDUCE_SQL,
    EVENT_NAMES_SQL,
    FAILURES_REDUCE_SQL,
    FAILURES_SQL,
    SAMPLES,
    CellFilter,
    FileRollups,
    PageCube,
    SessionCube,
    app_mask,
    value_expression,
    work_connection,
)

log = logging.getLogger("clicklake.web")

#: Dashboard dimension name -> sessions column.
DIMENSIONS: dict[str, str] = {
    "channel": "default_channel_group",
    "referrer": "refr_source",
    "referrer_host": "refr_urlhost",
    "campaign": "mkt_campaign",
    "source": "mkt_source",
    "medium": "mkt_medium",
    "device": "dvce_class",
    "browser": "br_family",
    "os": "os_family",
    "country": "geo_country",
    "landing_page": "landing_page_path",
}
#: Funnel breakdowns (events columns).
FUNNEL_BREAKDOWNS: dict[str, str] = {
    "channel": "default_channel_group",
    "device": "dvce_class",
    "country": "geo_country",
}
_STATUS_TTL_S = 2.0
_NOT_READ = frozenset({AUDIT_LOG})


@dataclass(frozen=True)
class Filters:
    """What every dashboard call is narrowed to.

    Attributes:
        start: First day (inclusive).
        end: Last day (inclusive).
        app: Only this app (must be one the role sees), or all of the role's apps.
        channel: Only sessions (page views) of this default channel group.
        device: Only this device class (desktop, mobile, tablet, ...).
    """

    start: date
    end: date
    app: str | None = None
    channel: str | None = None
    device: str | None = None

    def previous(self) -> Filters:
        """The period of the same length just before this one."""
        days = (self.end - self.start).days + 1
        return Filters(
            self.start - timedelta(days=days),
            self.start - timedelta(days=1),
            self.app,
            self.channel,
            self.device,
        )

    def cells(self) -> CellFilter:
        """The same narrowing over rollup cells."""
        return CellFilter(self.start, self.end, self.app, self.channel, self.device)

    def where(self, date_col: str, channel: bool = True, device: bool = True) -> tuple[str, list[Any]]:
        """A ``WHERE`` clause (and its parameters) over a table with these columns."""
        parts = [f"{date_col} BETWEEN ? AND ?"]
        params: list[Any] = [self.start, self.end]
        if self.app is not None:
            parts.append("app_id = ?")
            params.append(self.app)
        if channel and self.channel is not None:
            parts.append("default_channel_group IS NOT DISTINCT FROM ?")
            params.append(None if self.channel == "(none)" else self.channel)
        if device and self.device is not None:
            parts.append("dvce_class IS NOT DISTINCT FROM ?")
            params.append(None if self.device == "(none)" else self.device)
        return " AND ".join(parts), params


def _jsonable(v: Any) -> Any:
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, float) and v != v:
        return None
    return v


def _rows(table: Any) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in table.to_pylist()]


class Rollups:
    """One role scope's cubes over one snapshot of ``sessions`` and ``page_views``.

    The base cube and the page cube are built when first read; a dimension's cube when the
    first breakdown by it is asked for. Builds are single-flight: concurrent callers wait for
    the one build.
    """

    def __init__(self, key: tuple[Any, ...], sessions: pa.Table, page_views: pa.Table | None, threads: int):
        self.key = key
        self.sessions = sessions
        self.page_views = page_views
        self.threads = threads
        self._lock = threading.Lock()
        self._cubes: dict[str | None, SessionCube] = {}
        self._pages: PageCube | None = None

    def cube(self, dimension: str | None, conversion: tuple[str, str, str]) -> SessionCube:
        """The sessions cube, split by a :data:`DIMENSIONS` name (``None``: cells only)."""
        with self._lock:
            if dimension not in self._cubes:
                value = None if dimension is None else value_expression(DIMENSIONS[dimension])
                con = work_connection(self.threads)
                try:
                    self._cubes[dimension] = SessionCube.build(con, self.sessions, value, conversion)
                finally:
                    con.close()
            return self._cubes[dimension]

    def pages(self) -> PageCube | None:
        """The page cube (``None`` when there is no ``page_views`` table)."""
        if self.page_views is None:
            return None
        with self._lock:
            if self._pages is None:
                con = work_connection(self.threads)
                try:
                    self._pages = PageCube.build(con, self.page_views, self.sessions)
                finally:
                    con.close()
            return self._pages


@dataclass
class _Flight:
    """One computation in progress, and its answer for the callers that waited for it."""

    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    value: Any = None


class Dashboard:
    """The dashboard's numbers.

    Args:
        settings: The settings (conversions, ``api.*``).
        queries: The locked query layer to run on.
    """

    def __init__(self, settings: Settings, queries: SecureQueries):
        self.settings = settings
        self.queries = queries
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._status: tuple[float, dict[str, Any]] | None = None
        self._status_refreshing = False
        conv = settings.models.conversions
        self.conversion = conv[0].name if conv else None
        self._rollups: dict[tuple[Any, ...], Rollups] = {}
        self._rollup_locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._inflight: dict[tuple[Any, ...], _Flight] = {}
        threads = settings.api.threads
        self._names_rollup = FileRollups(EVENT_NAMES_SQL, threads, EVENT_NAMES_REDUCE_SQL)
        self._failures = FileRollups(FAILURES_SQL, threads, FAILURES_REDUCE_SQL)
        self._funnel_index = FunnelIndex(threads)
        self._include_bots = options_from_settings(settings).include_bots

    # -- plumbing ------------------------------------------------------------------------------

    def warm(self) -> None:
        """Build the role-independent indexes (event names, failures, the funnel index) now.

        ``clicklake serve`` calls this in the background at start, so the first dashboard
        loads do not wait for a full read of ``events``; later snapshots only add their files.
        """
        t0 = time.monotonic()
        states = self.queries.snapshots.states()
        events = states.get("events")
        if events is not None and events.arrow is None and events.paths:
            self._names_rollup.table(events.paths)
            indexed = self._funnel_files(events)
            if indexed is not None:
                self._funnel_index.sync(indexed[0], indexed[1], {c for c, _ in events.columns})
        failed = states.get("failed_events")
        if failed is not None and failed.arrow is None and failed.paths:
            self._failures.table(failed.paths)
        log.info("event=dashboard_warm seconds=%.1f", time.monotonic() - t0)

    def cached(self, role: Role, name: str, params: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered per role scope, parameters and snapshot set.

        Identical calls that arrive while one computes wait for its answer, also when answers
        are not remembered (``api.cache_entries = 0``).
        """
        remember = self.settings.api.cache_entries > 0
        # The audit log gets a commit every few seconds and no dashboard number reads it.
        key = (name, params, role.apps, role.pii, role.admin, self.queries.snapshot_key(_NOT_READ))
        while True:
            with self._lock:
                if remember and key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                running = self._inflight.get(key)
                if running is None:
                    # This caller computes; the others asking for the same answer wait for it.
                    flight = _Flight()
                    self._inflight[key] = flight
                    break
            running.done.wait()
            if running.ok:
                return running.value
            # It failed: try again (this caller may compute, and report its own error).
        try:
            flight.value = compute()
            flight.ok = True
            if remember:
                with self._lock:
                    self._cache[key] = flight.value
                    while len(self._cache) > self.settings.api.cache_entries:
                        self._cache.popitem(last=False)
            return flight.value
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            flight.done.set()

    def _q(
        self,
        role: Role,
        sql: str,
        params: Sequence[Any] = (),
        narrow: Mapping[str, Narrow] | None = None,
    ) -> list[dict[str, Any]]:
        # narrow: read only the files of these days (the SQL filters on the days as well).
        result = self.queries.run(role, sql, params, trusted=True, max_rows=100_000, narrow=narrow)
        return _rows(result.table)

    def _has(self, role: Role, *tables: str) -> bool:
        views = self.queries.database(role).views
        return all(t in views for t in tables)

    def _cv(self) -> tuple[str, str, str]:
        if self.conversion is None:
            return "false", "0.0", "0"
        c = self.conversion
        return f"cv_{c}_converted", f"cv_{c}_value", f"cv_{c}_volume"

    def rollups(self, role: Role) -> Rollups | None:
        """The role scope's cubes over the current ``sessions``/``page_views`` (``None``: no sessions)."""
        db = self.queries.database(role)
        if "sessions" not in db.views:
            return None
        scope = (role.apps, role.pii, role.admin)
        snaps = (
            db.snapshots.get("sessions"),
            db.snapshots.get("page_views") if "page_views" in db.views else None,
        )
        key = (scope, snaps)
        with self._lock:
            lock = self._rollup_locks.setdefault(scope, threading.Lock())
        with lock:
            current = self._rollups.get(scope)
            if current is not None and current.key == key:
                return current
            with self.queries.cursor(role) as cur:
                sessions = self._session_rows(cur, db.states["sessions"])
                page_views = (
                    cur.sql(
                        "SELECT app_id, page_view_date, default_channel_group, dvce_class, page_path_clean, "
                        "session_id, page_view_in_session_index, page_view_id, engaged_time_s FROM page_views"
                    ).to_arrow_table()
                    if "page_views" in db.views
                    else None
                )
            built = Rollups(key, sessions, page_views, self.settings.api.threads)
            self._rollups[scope] = built
            return built

    def _session_rows(self, cur: Any, state: TableState) -> pa.Table:
        present = {c for c, _ in state.columns}
        converted, value, volume = self._cv()
        wanted = {
            "app_id",
            "session_date",
            "page_views",
            "is_bounce",
            "is_engaged",
            "duration_s",
            "landing_page_path",
            "exit_page_path",
            *DIMENSIONS.values(),
        }
        cols = [c for c in sorted(wanted) if c in present]
        cols += [c for c in (converted, value, volume) if c in present and c not in cols]
        user = "user_key" if "user_key" in present else "NULL"
        # Masked or not, equal user keys stay equal: the dense numbers count the same users.
        select = ", ".join(quote_ident(c) for c in cols)
        table: pa.Table = cur.sql(
            f"""SELECT {select},
                CASE WHEN {user} IS NULL THEN NULL ELSE dense_rank() OVER (ORDER BY {user}) END AS uid
            FROM sessions"""
        ).to_arrow_table()
        return table

    def check_app(self, role: Role, app: str | None) -> None:
        """Refuse an ``app`` filter naming an app the role does not see.

        Raises:
            AccessDenied: The role does not see ``app``.
        """
        from clicklake.query.access import AccessDenied

        if app is not None and not role.sees_app(app):
            raise AccessDenied(f"this token does not see app {app!r}")

    def default_range(self, role: Role, days: int = 7) -> tuple[date, date]:
        """The last ``days`` days that have data (ending today when there is none)."""

        def compute() -> tuple[date, date]:
            end = datetime.now(UTC).date()
            if self._has(role, "daily_kpis"):
                rows = self._q(role, 'SELECT max("date") AS d FROM daily_kpis')
                if rows and rows[0]["d"]:
                    end = date.fromisoformat(rows[0]["d"])
            return end - timedelta(days=days - 1), end

        result: tuple[date, date] = self.cached(role, "default_range", (days,), compute)
        return result

    # -- numbers -------------------------------------------------------------------------------

    def _kpis(self, role: Role, f: Filters) -> dict[str, Any]:
        zero = {
            "users": 0,
            "sessions": 0,
            "page_views": 0,
            "bounce_rate": 0.0,
            "engagement_rate": 0.0,
            "conversions": 0,
            "conversion_rate": 0.0,
            "revenue": 0.0,
            "avg_session_duration_s": 0.0,
        }
        rollups = self.rollups(role)
        if rollups is None:
            return zero
        return rollups.cube(None, self._cv()).totals(f.cells())

    def kpis(self, role: Role, f: Filters) -> dict[str, Any]:
        """KPI totals of the period and of the one before, with relative changes."""

        def compute() -> dict[str, Any]:
            cur, prev = self._kpis(role, f), self._kpis(role, f.previous())
            change = {
                k: (None if not prev[k] else (cur[k] - prev[k]) / abs(prev[k]))
                for k in cur
                if isinstance(cur[k], int | float)
            }
            p = f.previous()
            return {
                "period": {"start": f.start.isoformat(), "end": f.end.isoformat()},
                "previous_period": {"start": p.start.isoformat(), "end": p.end.isoformat()},
                "current": cur,
                "previous": prev,
                "change": change,
            }

        return dict(self.cached(role, "kpis", (f,), compute))

    def timeseries(self, role: Role, f: Filters, interval: str = "day") -> dict[str, Any]:
        """Users, sessions, page views, bounce rate, conversions and revenue per day (or hour)."""

        def compute() -> dict[str, Any]:
            if not self._has(role, "sessions"):
                return {"interval": interval, "points": []}
            converted, value, volume = self._cv()
            if interval == "day":
                rollups = self.rollups(role)
                if rollups is not None:
                    return {"interval": interval, "points": self._per_day(rollups, f)}
            where, params = f.where("session_date")
            bucket = "session_date" if interval == "day" else "date_trunc('hour', start_tstamp)"
            rows = self._q(
                role,
                f"""SELECT {bucket} AS t, count(DISTINCT user_key) AS users, count(*) AS sessions,
                    CAST(coalesce(sum(page_views), 0) AS BIGINT) AS page_views,
                    avg(CASE WHEN is_bounce THEN 1.0 ELSE 0.0 END) AS bounce_rate,
                    avg(CASE WHEN {converted} THEN 1.0 ELSE 0.0 END) AS conversion_rate,
                    CAST(coalesce(sum({volume}), 0) AS BIGINT) AS conversions,
                    CAST(coalesce(sum({value}), 0.0) AS DOUBLE) AS revenue
                FROM sessions WHERE {where} GROUP BY 1 ORDER BY 1""",
                params,
            )
            return {"interval": interval, "points": rows}

        return dict(self.cached(role, "timeseries", (f, interval), compute))

    def _per_day(self, rollups: Rollups, f: Filters) -> list[dict[str, Any]]:
        points = []
        for day, m in sorted(rollups.cube(None, self._cv()).grouped(f.cells(), "d"), key=lambda x: x[0]):
            points.append(
                {
                    "t": day.isoformat(),
                    "users": m["users"],
                    "sessions": m["sessions"],
                    "page_views": m["page_views"],
                    "bounce_rate": m["bounce_rate"],
                    "conversion_rate": m["conversion_rate"],
                    "conversions": m["conversions"],
                    "revenue": m["revenue"],
                }
            )
        return points

    def pages(self, role: Role, f: Filters, limit: int = 20) -> dict[str, Any]:
        """Top clean page paths by views, with entrances, exits and exit rate (exits / views).

        ``sessions`` of a page counts the sessions whose first view of it falls in the period.
        """

        def compute() -> dict[str, Any]:
            if not self._has(role, "sessions", "page_views"):
                return {"pages": []}
            rollups = self.rollups(role)
            cube = rollups.pages() if rollups is not None else None
            return {"pages": cube.top(f.cells(), limit) if cube is not None else []}

        return dict(self.cached(role, "pages", (f, limit), compute))

    def breakdown(self, role: Role, f: Filters, dimension: str, limit: int = 20) -> dict[str, Any]:
        """Sessions, users, bounce and conversion rate and revenue by one dimension."""
        col = DIMENSIONS[dimension]

        def compute() -> dict[str, Any]:
            if not self._has(role, "sessions"):
                return {"dimension": dimension, "rows": []}
            rollups = self.rollups(role)
            if rollups is None:
                return {"dimension": dimension, "rows": []}
            if col not in {c for c, _ in self.queries.database(role).states["sessions"].columns}:
                raise InputError(
                    f"sessions has no column {col} for the {dimension} breakdown; rebuild the models "
                    "(clicklake models build --full-refresh)"
                )
            groups = rollups.cube(dimension, self._cv()).grouped(f.cells(), "v")
            groups.sort(key=lambda g: (-g[1]["sessions"], g[0]))
            return {
                "dimension": dimension,
                "rows": [
                    {
                        "value": v,
                        "sessions": m["sessions"],
                        "users": m["users"],
                        "bounce_rate": m["bounce_rate"],
                        "conversion_rate": m["conversion_rate"],
                        "revenue": m["revenue"],
                    }
                    for v, m in groups[:limit]
                ],
            }

        return dict(self.cached(role, "breakdown", (f, dimension, limit), compute))

    def funnel(
        self,
        role: Role,
        f: Filters,
        steps: Sequence[str],
        window_s: float,
        order: str = "strict",
        breakdown: str | None = None,
    ) -> dict[str, Any]:
        """Entities reaching each step (``event`` or ``event@path_regex``), with drop-off."""
        parsed = []
        for raw in steps:
            event, _, path = raw.partition("@")
            parsed.append(Step(event=event or None, path=path or None))

        def compute() -> dict[str, Any]:
            if not self._has(role, "events"):
                return {"steps": []}
            start = datetime.combine(f.start, datetime.min.time(), UTC)
            end = datetime.combine(f.end + timedelta(days=1), datetime.min.time(), UTC)
            column = FUNNEL_BREAKDOWNS[breakdown] if breakdown else None
            state = self.queries.database(role).states["events"]
            indexed = self._funnel_files(state)
            if (
                indexed is not None
                and f.start >= indexed[2]
                and self._funnel_index.sync(indexed[0], indexed[1], {c for c, _ in state.columns})
            ):
                query = FunnelQuery.of(parsed, window_s, order, column, role.apps, f.app, self._include_bots)
                found = self._funnel_index.funnel(f.start, f.end, query)
                if column:
                    for r in found:
                        r["breakdown"] = r.pop(column)
                return {"order": order, "window_s": window_s, "steps": found}
            with self.queries.cursor(role, narrow={"events": (f.start, f.end)}) as cur:
                table = funnel(
                    self.settings,
                    parsed,
                    window_s,
                    order=order,
                    breakdown=FUNNEL_BREAKDOWNS[breakdown] if breakdown else None,
                    start=start,
                    end=end,
                    app_id=f.app,
                    con=cur,
                )
            rows = _rows(table)
            if breakdown:
                for r in rows:
                    r["breakdown"] = r.pop(FUNNEL_BREAKDOWNS[breakdown])
            return {"order": order, "window_s": window_s, "steps": rows}

        # A funnel is narrowed by dates and app only (channel and device are sessions'): the
        # page sends them along, and the answer is the same whatever they are.
        key = (Filters(f.start, f.end, f.app), tuple(steps), window_s, order, breakdown)
        return dict(self.cached(role, "funnel", key, compute))

    def live(self, role: Role, app: str | None, minutes: int = 30) -> dict[str, Any]:
        """Events committed per minute over the last ``minutes`` (by collector time), and the latest ones."""
        now = datetime.now(UTC)
        since = (now - timedelta(minutes=minutes)).replace(second=0, microsecond=0)

        def compute() -> dict[str, Any]:
            if not self._has(role, "events"):
                return {"since": since.isoformat(), "per_minute": [], "recent": []}
            state = self.queries.database(role).states["events"]
            if state.none_since(since):
                # No data file holds an event collected since then (manifest bounds): nothing to read.
                return {"since": since.isoformat(), "per_minute": [], "recent": []}
            cond = "collector_tstamp >= ?"
            params: list[Any] = [since]
            if app is not None:
                cond += " AND app_id = ?"
                params.append(app)
            # Only the files whose largest collector time (manifest bounds) is recent enough.
            recent_files: dict[str, Narrow] = {"events": since}
            per_minute = self._q(
                role,
                f"""SELECT date_trunc('minute', collector_tstamp) AS minute, count(*) AS events
                FROM events WHERE {cond} GROUP BY 1 ORDER BY 1""",
                params,
                recent_files,
            )
            recent = self._q(
                role,
                f"""SELECT collector_tstamp, app_id, event_type, event_name, page_path
                FROM events WHERE {cond} ORDER BY collector_tstamp DESC LIMIT 20""",
                params,
                recent_files,
            )
            return {"since": since.isoformat(), "per_minute": per_minute, "recent": recent}

        return dict(self.cached(role, "live", (app, minutes, since), compute))

    def _pipeline_status(self) -> dict[str, Any]:
        # Stale-while-revalidate: a status older than the TTL is answered while one background
        # thread reads a fresh one (it reads the catalog and the spool: tens of milliseconds).
        with self._lock:
            current = self._status
            stale = current is None or time.monotonic() - current[0] >= _STATUS_TTL_S
            start = stale and current is not None and not self._status_refreshing
            if start:
                self._status_refreshing = True
        if current is None:
            return self._refresh_status()
        if start:
            threading.Thread(
                target=self._refresh_status_quietly, name="clicklake-status", daemon=True
            ).start()
        return current[1]

    def _refresh_status_quietly(self) -> None:
        try:
            self._refresh_status()
        except (ClickLakeError, OSError) as exc:
            # The stale status stays; the next call past the TTL tries again.
            log.warning("event=status_refresh_failed error=%r", str(exc))

    def _refresh_status(self) -> dict[str, Any]:
        from clicklake.status import collect_status

        try:
            status = collect_status(self.settings)
            with self._lock:
                self._status = (time.monotonic(), status)
            return status
        finally:
            with self._lock:
                self._status_refreshing = False

    def health(self, role: Role, f: Filters, examples: int = 3) -> dict[str, Any]:
        """Spool lag, age of each table's last commit, failed events by reason with examples."""
        status = self._pipeline_status()
        now = datetime.now(UTC)
        tables = {}
        for name, t in status["tables"].items():
            last = t["last_commit"]
            age = (now - datetime.fromisoformat(last)).total_seconds() if last else None
            # Row totals span every app: only a role that sees every app gets them.
            rows = t["rows"] if role.apps is None else None
            tables[name] = {"rows": rows, "last_commit": last, "commit_age_s": age}

        def compute() -> dict[str, Any]:
            if not self._has(role, "failed_events"):
                return {"failed_total": 0, "failed_by_reason": []}
            state = self.queries.database(role).states["failed_events"]
            if state.arrow is None and state.paths and examples <= SAMPLES:
                return self._failures_from_rollup(role, f, state, examples)
            where = "CAST(collector_tstamp AS DATE) BETWEEN ? AND ?"
            params: list[Any] = [f.start, f.end]
            if f.app is not None:
                where += " AND app_id = ?"
                params.append(f.app)
            days = {"failed_events": (f.start, f.end)}
            by_reason = self._q(
                role,
                f"""SELECT stage, error_type, count(*) AS failed FROM failed_events WHERE {where}
                GROUP BY 1, 2 ORDER BY failed DESC, error_type""",
                params,
                days,
            )
            samples = self._q(
                role,
                f"""SELECT stage, error_type, collector_tstamp, app_id, event_id, left(error_message, 300) AS error_message,
                    left(CAST(raw AS VARCHAR), 300) AS raw
                FROM (SELECT *, row_number() OVER (PARTITION BY stage, error_type ORDER BY collector_tstamp DESC) AS rn
                      FROM failed_events WHERE {where}) AS x
                WHERE rn <= ? ORDER BY stage, error_type, collector_tstamp DESC""",
                [*params, examples],
                days,
            )
            for r in by_reason:
                r["examples"] = [
                    {k: v for k, v in s.items() if k not in ("stage", "error_type")}
                    for s in samples
                    if s["stage"] == r["stage"] and s["error_type"] == r["error_type"]
                ]
            return {"failed_total": sum(r["failed"] for r in by_reason), "failed_by_reason": by_reason}

        failed = self.cached(role, "health", (f, examples), compute)
        return {
            "now": now.isoformat(),
            "spool": {
                "segments": status["spool"]["segments"],
                "bytes": status["spool"]["bytes"],
                "lag_bytes": status["spool"]["lag_bytes"],
            },
            "tables": tables,
            **failed,
        }

    def _funnel_files(self, state: TableState) -> tuple[list[str], Sequence[int | None], date] | None:
        """The files (and days) the funnel index holds, and its first day; ``None``: no index."""
        keep_days = self.settings.api.funnel_index_days
        if (
            keep_days == 0
            or state.arrow is not None
            or not state.paths
            or len(state.days) != len(state.paths)
        ):
            return None
        known = [d for d in state.days if d is not None]
        if len(known) != len(state.days):
            return None
        first = max(known) - keep_days + 1
        paths = [p for p, d in zip(state.paths, state.days, strict=True) if d is not None and d >= first]
        days = [d for d in state.days if d is not None and d >= first]
        return paths, days, date(1970, 1, 1) + timedelta(days=first)

    def _failures_from_rollup(
        self, role: Role, f: Filters, state: TableState, examples: int
    ) -> dict[str, Any]:
        table = app_mask(self._failures.table(state.paths), role.apps, f.app)
        table = table.filter(pc.and_(pc.greater_equal(table["d"], f.start), pc.less_equal(table["d"], f.end)))
        reasons: dict[tuple[str, str], dict[str, Any]] = {}
        for row in table.select(["app_id", "stage", "error_type", "n", "examples"]).to_pylist():
            r = reasons.setdefault((row["stage"], row["error_type"]), {"failed": 0, "examples": []})
            r["failed"] += row["n"]
            r["examples"].extend({**x, "app_id": row["app_id"]} for x in row["examples"])
        by_reason = []
        for (stage, error_type), r in reasons.items():
            latest = sorted(r["examples"], key=lambda x: x["collector_tstamp"], reverse=True)[:examples]
            by_reason.append(
                {
                    "stage": stage,
                    "error_type": error_type,
                    "failed": r["failed"],
                    "examples": [
                        {
                            "collector_tstamp": _jsonable(x["collector_tstamp"]),
                            "app_id": x["app_id"],
                            "event_id": x["event_id"],
                            "error_message": x["error_message"],
                            # The raw payload is PII (it holds IPs, traits, ids): only for pii roles.
                            "raw": x["raw"] if role.pii else None,
                        }
                        for x in latest
                    ],
                }
            )
        by_reason.sort(key=lambda r: (-r["failed"], r["error_type"] or "", r["stage"] or ""))
        return {"failed_total": sum(r["failed"] for r in by_reason), "failed_by_reason": by_reason}

    def _event_names(self, role: Role, first: date, last: date) -> list[str]:
        state = self.queries.database(role).states["events"]
        if state.arrow is None and state.paths:
            table = app_mask(self._names_rollup.table(state.paths), role.apps, None)
            table = table.filter(pc.greater_equal(table["d"], first))
            counts = table.group_by("event_name").aggregate([("n", "sum")]).to_pylist()
            counts.sort(key=lambda r: (-r["n_sum"], r["event_name"]))
            return [r["event_name"] for r in counts[:50]]
        return [
            r["v"]
            for r in self._q(
                role,
                """SELECT event_name AS v FROM events
                WHERE event_name IS NOT NULL AND event_type IN ('track', 'page', 'screen')
                    AND derived_tstamp >= ?
                GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 50""",
                [datetime.combine(first, datetime.min.time(), UTC)],
                {"events": (first, last + timedelta(days=1))},
            )
        ]

    def filter_options(self, role: Role) -> dict[str, Any]:
        """Values the filters and the funnel builder offer: apps, channels, devices, dates, event names."""

        def compute() -> dict[str, Any]:
            out: dict[str, Any] = {
                "apps": [],
                "channels": [],
                "devices": [],
                "min_date": None,
                "max_date": None,
            }
            out["event_names"] = []
            rollups = self.rollups(role)
            if rollups is not None:
                cube = rollups.cube(None, self._cv())
                none_last = sorted(cube.values("app_id"), key=lambda v: (v is None, v))
                out["apps"] = [v for v in none_last if v is not None]
                out["channels"] = sorted("(none)" if v is None else v for v in cube.values("ch"))
                out["devices"] = sorted("(none)" if v is None else v for v in cube.values("dv"))
                days = cube.values("d")
                if days:
                    out["min_date"], out["max_date"] = min(days).isoformat(), max(days).isoformat()
            if self._has(role, "events"):
                # The names seen in the last 28 days with data (what a funnel is built from).
                last = date.fromisoformat(out["max_date"]) if out["max_date"] else datetime.now(UTC).date()
                first = last - timedelta(days=27)
                out["event_names"] = self._event_names(role, first, last)
            out["conversion"] = self.conversion
            return out

        return dict(self.cached(role, "filters", (), compute))


def parse_day(text: str, name: str) -> date:
    """``YYYY-MM-DD`` as a date.

    Raises:
        InputError: It is not such a date.
    """
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{name}={text[:40]!r}: give a date as YYYY-MM-DD") from None
