"""Every number the dashboard shows, computed for a role over its filtered, masked views.

Each method takes the caller's :class:`~clicklake.query.access.Role` and :class:`Filters` and
returns JSON-able data. The SQL is clicklake's own (``trusted``), but it runs in the role's
locked database, so it sees exactly what the role's own SQL would. Answers are cached per
role scope, parameters and snapshot set: a new commit to any table invalidates them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from clicklake.config import Settings
from clicklake.exceptions import InputError
from clicklake.lakehouse.audit import AUDIT_LOG
from clicklake.models.funnel import Step, funnel
from clicklake.query.access import Role
from clicklake.query.secure import SecureQueries

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
        conv = settings.models.conversions
        self.conversion = conv[0].name if conv else None

    # -- plumbing ------------------------------------------------------------------------------

    def cached(self, role: Role, name: str, params: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered per role scope, parameters and snapshot set."""
        if self.settings.api.cache_entries == 0:
            return compute()
        # The audit log gets a commit every few seconds and no dashboard number reads it.
        key = (name, params, role.apps, role.pii, role.admin, self.queries.snapshot_key(_NOT_READ))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = compute()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.settings.api.cache_entries:
                self._cache.popitem(last=False)
        return value

    def _q(
        self,
        role: Role,
        sql: str,
        params: Sequence[Any] = (),
        narrow: dict[str, tuple[date, date]] | None = None,
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
        converted, value, volume = self._cv()
        where, params = f.where("session_date")
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
        if not self._has(role, "sessions"):
            return zero
        rows = self._q(
            role,
            f"""SELECT count(DISTINCT user_key) AS users, count(*) AS sessions,
                CAST(coalesce(sum(page_views), 0) AS BIGINT) AS page_views,
                coalesce(avg(CASE WHEN is_bounce THEN 1.0 ELSE 0.0 END), 0.0) AS bounce_rate,
                coalesce(avg(CASE WHEN is_engaged THEN 1.0 ELSE 0.0 END), 0.0) AS engagement_rate,
                CAST(coalesce(sum({volume}), 0) AS BIGINT) AS conversions,
                coalesce(avg(CASE WHEN {converted} THEN 1.0 ELSE 0.0 END), 0.0) AS conversion_rate,
                CAST(coalesce(sum({value}), 0.0) AS DOUBLE) AS revenue,
                coalesce(avg(duration_s), 0.0) AS avg_session_duration_s
            FROM sessions WHERE {where}""",
            params,
        )
        return rows[0] if rows else zero

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

    def pages(self, role: Role, f: Filters, limit: int = 20) -> dict[str, Any]:
        """Top clean page paths by views, with entrances, exits and exit rate (exits / views)."""

        def compute() -> dict[str, Any]:
            if not self._has(role, "sessions", "page_views"):
                return {"pages": []}
            pv_where, pv_params = f.where("page_view_date")
            s_where, s_params = f.where("session_date")
            rows = self._q(
                role,
                f"""WITH pv AS (
                    SELECT page_path_clean AS page, count(*) AS views, count(DISTINCT session_id) AS sessions,
                        avg(engaged_time_s) AS avg_engaged_time_s
                    FROM page_views WHERE {pv_where} GROUP BY 1
                ), ex AS (
                    SELECT exit_page_path AS page, count(*) AS exits
                    FROM sessions WHERE {s_where} AND exit_page_path IS NOT NULL GROUP BY 1
                ), en AS (
                    SELECT landing_page_path AS page, count(*) AS entrances
                    FROM sessions WHERE {s_where} AND landing_page_path IS NOT NULL GROUP BY 1
                )
                SELECT pv.page, pv.views, pv.sessions, coalesce(en.entrances, 0) AS entrances,
                    coalesce(ex.exits, 0) AS exits, coalesce(ex.exits, 0) / pv.views AS exit_rate,
                    pv.avg_engaged_time_s
                FROM pv LEFT JOIN ex ON ex.page IS NOT DISTINCT FROM pv.page
                    LEFT JOIN en ON en.page IS NOT DISTINCT FROM pv.page
                ORDER BY pv.views DESC, pv.page LIMIT ?""",
                [*pv_params, *s_params, *s_params, limit],
            )
            return {"pages": rows}

        return dict(self.cached(role, "pages", (f, limit), compute))

    def breakdown(self, role: Role, f: Filters, dimension: str, limit: int = 20) -> dict[str, Any]:
        """Sessions, users, bounce and conversion rate and revenue by one dimension."""
        col = DIMENSIONS[dimension]

        def compute() -> dict[str, Any]:
            if not self._has(role, "sessions"):
                return {"dimension": dimension, "rows": []}
            converted, value, _ = self._cv()
            where, params = f.where("session_date")
            rows = self._q(
                role,
                f"""SELECT coalesce(CAST({col} AS VARCHAR), '(none)') AS value, count(*) AS sessions,
                    count(DISTINCT user_key) AS users,
                    avg(CASE WHEN is_bounce THEN 1.0 ELSE 0.0 END) AS bounce_rate,
                    avg(CASE WHEN {converted} THEN 1.0 ELSE 0.0 END) AS conversion_rate,
                    CAST(coalesce(sum({value}), 0.0) AS DOUBLE) AS revenue
                FROM sessions WHERE {where} GROUP BY 1 ORDER BY sessions DESC, value LIMIT ?""",
                [*params, limit],
            )
            return {"dimension": dimension, "rows": rows}

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

        return dict(self.cached(role, "funnel", (f, tuple(steps), window_s, order, breakdown), compute))

    def live(self, role: Role, app: str | None, minutes: int = 30) -> dict[str, Any]:
        """Events committed per minute over the last ``minutes`` (by collector time), and the latest ones."""
        now = datetime.now(UTC)
        since = (now - timedelta(minutes=minutes)).replace(second=0, microsecond=0)

        def compute() -> dict[str, Any]:
            if not self._has(role, "events"):
                return {"since": since.isoformat(), "per_minute": [], "recent": []}
            cond = "collector_tstamp >= ?"
            params: list[Any] = [since]
            if app is not None:
                cond += " AND app_id = ?"
                params.append(app)
            per_minute = self._q(
                role,
                f"""SELECT date_trunc('minute', collector_tstamp) AS minute, count(*) AS events
                FROM events WHERE {cond} GROUP BY 1 ORDER BY 1""",
                params,
            )
            recent = self._q(
                role,
                f"""SELECT collector_tstamp, app_id, event_type, event_name, page_path
                FROM events WHERE {cond} ORDER BY collector_tstamp DESC LIMIT 20""",
                params,
            )
            return {"since": since.isoformat(), "per_minute": per_minute, "recent": recent}

        return dict(self.cached(role, "live", (app, minutes, since), compute))

    def _pipeline_status(self) -> dict[str, Any]:
        from clicklake.status import collect_status

        with self._lock:
            if self._status is not None and time.monotonic() - self._status[0] < _STATUS_TTL_S:
                return self._status[1]
        status = collect_status(self.settings)
        with self._lock:
            self._status = (time.monotonic(), status)
        return status

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
            if self._has(role, "sessions"):
                out["apps"] = [
                    r["v"] for r in self._q(role, "SELECT DISTINCT app_id AS v FROM sessions ORDER BY 1")
                ]
                out["channels"] = [
                    r["v"]
                    for r in self._q(
                        role,
                        "SELECT DISTINCT coalesce(default_channel_group, '(none)') AS v FROM sessions ORDER BY 1",
                    )
                ]
                out["devices"] = [
                    r["v"]
                    for r in self._q(
                        role, "SELECT DISTINCT coalesce(dvce_class, '(none)') AS v FROM sessions ORDER BY 1"
                    )
                ]
                bounds = self._q(
                    role, "SELECT min(session_date) AS lo, max(session_date) AS hi FROM sessions"
                )
                out["min_date"], out["max_date"] = bounds[0]["lo"], bounds[0]["hi"]
            if self._has(role, "events"):
                # The names seen in the last 28 days with data (what a funnel is built from).
                last = date.fromisoformat(out["max_date"]) if out["max_date"] else datetime.now(UTC).date()
                first = last - timedelta(days=27)
                out["event_names"] = [
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
