"""The dashboard page and the JSON API (``/api/v1``), as an ASGI app beside the collector.

- ``GET /``: the dashboard (static files from the package; charts with the bundled Chart.js).
- ``GET /api/v1/openapi.json``: the API description (no token needed).
- ``/api/v1/...``: ``Authorization: Bearer <token>`` (``api.tokens``). Answers: 200; 400 bad
  input; 401 missing, unknown or expired token; 403 not allowed; 404; 405; 503 when the
  lakehouse cannot be read. Errors are ``{"error": ..., "message": ...}``.

Every API call is audited (allowed or not) through :class:`~clicklake.query.audit.AuditLog`,
which is flushed at lifespan shutdown. Queries run in a thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import duckdb
import orjson
import pyarrow as pa

from clicklake.config import Settings
from clicklake.exceptions import ClickLakeError, InputError
from clicklake.query.access import AccessDenied, AuthError, Role, authenticate
from clicklake.query.audit import AuditLog, audit_row
from clicklake.query.secure import QueryTimeout, SecureQueries, SnapshotCache
from clicklake.web.dashboard import DIMENSIONS, FUNNEL_BREAKDOWNS, Dashboard, Filters, parse_day
from clicklake.web.openapi import openapi_spec

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("clicklake.web")

API_PREFIX = "/api/v1/"
_MAX_BODY = 1024 * 1024
_CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".md": b"text/plain; charset=utf-8",
    ".svg": b"image/svg+xml",
}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
    ),
]


class ApiError(Exception):
    """An answer other than 200, with a JSON error body."""

    def __init__(
        self, status: int, error: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or []


def _static_files() -> dict[str, tuple[bytes, bytes]]:
    out: dict[str, tuple[bytes, bytes]] = {}
    root = resources.files("clicklake.web") / "static"
    for entry in root.iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if entry.is_file() and suffix in _CONTENT_TYPES:
            out[name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
    return out


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        # orjson refuses integers beyond 64 bits (DuckDB HUGEINT); the standard encoder does not.
        return json.dumps(value, default=str, allow_nan=False, separators=(",", ":")).encode()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


class WebApp:
    """The dashboard and JSON API.

    Args:
        settings: The settings (``api.*``, the catalog).
        queries: The locked query layer (one over ``settings`` by default).
        audit: Where audit rows go (a background-flushed :class:`AuditLog` by default).
    """

    def __init__(
        self, settings: Settings, queries: SecureQueries | None = None, audit: AuditLog | None = None
    ):
        self.settings = settings
        self.queries = queries or SecureQueries(settings, SnapshotCache(settings, background=True))
        self.dashboard = Dashboard(settings, self.queries)
        self.audit = audit or AuditLog(settings)
        self.static = _static_files()
        self.spec = _json(openapi_spec())
        self._pool = ThreadPoolExecutor(
            max_workers=max(32, settings.api.threads * 16), thread_name_prefix="clicklake-api"
        )
        self._pool.submit(self._warm)
        self._routes: dict[
            str, tuple[str, Callable[[Role, dict[str, list[str]], bytes], tuple[Any, int]]]
        ] = {
            "me": ("GET", self._me),
            "filters": ("GET", self._filters),
            "kpis": ("GET", self._kpis),
            "timeseries": ("GET", self._timeseries),
            "pages": ("GET", self._pages),
            "breakdown": ("GET", self._breakdown),
            "funnel": ("GET", self._funnel),
            "live": ("GET", self._live),
            "health": ("GET", self._health),
            "sql": ("POST", self._sql),
        }

    @staticmethod
    def handles(path: str) -> bool:
        """Whether ``path`` is the web app's (the rest goes to the collector)."""
        return path in ("/", "/index.html", "/api/v1", "/api") or path.startswith(("/static/", "/api/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    def _warm(self) -> None:
        try:
            self.dashboard.warm()
        except (ClickLakeError, OSError, duckdb.Error, pa.ArrowException) as exc:
            # Only a head start: the calls build what they need themselves.
            log.warning("event=dashboard_warm_failed error=%r", str(exc))

    async def shutdown(self) -> None:
        """Write the audit rows still queued and stop the query threads."""
        await asyncio.get_running_loop().run_in_executor(None, self.audit.close)
        self.queries.snapshots.close()
        self._pool.shutdown(wait=True)
        log.info("event=web_closed")

    # -- HTTP ---------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        headers: list[tuple[bytes, bytes]] = []
        content_type = b"application/json"
        if path.startswith(API_PREFIX) and path != API_PREFIX + "openapi.json":
            status, body, headers = await self._api(scope, receive, path[len(API_PREFIX) :])
        else:
            try:
                status, body, content_type = self._page(path, method)
            except ApiError as err:
                status, body, headers = (
                    err.status,
                    _json({"error": err.error, "message": err.message}),
                    err.headers,
                )
        all_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *_SECURITY_HEADERS,
            *headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    def _page(self, path: str, method: str) -> tuple[int, bytes, bytes]:
        if method not in ("GET", "HEAD"):
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use GET",
                [(b"allow", b"GET, HEAD")],
            )
        if path in ("/", "/index.html"):
            body, ctype = self.static["index.html"]
            return 200, body, ctype
        if path == API_PREFIX + "openapi.json":
            return 200, self.spec, b"application/json"
        if path.startswith("/static/") and path[len("/static/") :] in self.static:
            body, ctype = self.static[path[len("/static/") :]]
            return 200, body, ctype
        raise ApiError(404, "not_found", f"no such page: {path[:200]}")

    async def _api(
        self, scope: Scope, receive: Receive, name: str
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        t0 = time.perf_counter()
        method: str = scope["method"]
        client = scope.get("client")
        client_text = f"{client[0]}" if client else None
        role: Role | None = None
        statement: str | None = None
        rows: int | None = None
        token_label: str | None = None
        try:
            route = self._routes.get(name)
            if route is None:
                raise ApiError(404, "not_found", f"no such API endpoint: /api/v1/{name[:200]}")
            token_label = "(unknown)"
            token = self._bearer(scope)
            if token is None:
                token_label = "(none)"
            try:
                role = authenticate(self.settings, token)
            except AuthError as exc:
                raise ApiError(
                    401, "unauthorized", str(exc), [(b"www-authenticate", b'Bearer realm="clicklake"')]
                ) from exc
            want, handler = route
            if method != want:
                raise ApiError(
                    405,
                    "method_not_allowed",
                    f"{method} is not allowed here; use {want}",
                    [(b"allow", want.encode())],
                )
            body = await self._body(receive) if method == "POST" else b""
            try:
                query = parse_qs(
                    scope.get("query_string", b"").decode("utf-8"),
                    keep_blank_values=True,
                    strict_parsing=False,
                )
            except UnicodeDecodeError as exc:
                raise ApiError(400, "bad_request", "the query string is not UTF-8") from exc
            if name == "sql":
                statement = self._sql_text(body)
            loop = asyncio.get_running_loop()
            result, rows = await loop.run_in_executor(self._pool, handler, role, query, body)
            status, out, headers = 200, _json(result), []
            allowed, reason = True, ""
        except ApiError as err:
            status, out, headers = (
                err.status,
                _json({"error": err.error, "message": err.message}),
                err.headers,
            )
            allowed, reason = False, err.message
        except AccessDenied as exc:
            status, out, headers = 403, _json({"error": "forbidden", "message": str(exc)}), []
            allowed, reason = False, str(exc)
        except QueryTimeout as exc:
            status, out, headers = 400, _json({"error": "statement_timeout", "message": str(exc)}), []
            allowed, reason = True, str(exc)
        except InputError as exc:
            status, out, headers = 400, _json({"error": "bad_request", "message": str(exc)}), []
            allowed, reason = True, str(exc)
        except ClickLakeError as exc:
            log.error("event=api_unavailable endpoint=%s error=%r", name, str(exc))
            status, out, headers = (
                503,
                _json({"error": "unavailable", "message": str(exc)}),
                [(b"retry-after", b"5")],
            )
            allowed, reason = True, str(exc)
        except Exception:  # a bug, not a client's fault: say so, log it, keep serving
            log.exception("event=api_internal_error endpoint=%s", name[:200])
            status, out, headers = (
                500,
                _json({"error": "internal_error", "message": "unexpected server error"}),
                [],
            )
            allowed, reason = True, "internal error"
        self.audit.record(
            audit_row(
                role,
                kind="sql" if name == "sql" else "api",
                endpoint=f"{method} /api/v1/{name[:200]}",
                statement=statement
                if statement is not None
                else scope.get("query_string", b"").decode("utf-8", "replace") or None,
                allowed=allowed,
                status=status,
                reason=reason,
                rows=rows,
                duration_ms=(time.perf_counter() - t0) * 1000,
                client=client_text,
                token_name=token_label,
            )
        )
        return status, out, headers

    @staticmethod
    def _bearer(scope: Scope) -> str | None:
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, token = bytes(value).decode("latin-1").strip().partition(" ")
                if scheme.lower() != "bearer":
                    raise ApiError(
                        401,
                        "unauthorized",
                        "send Authorization: Bearer <token>",
                        [(b"www-authenticate", b"Bearer")],
                    )
                return token.strip() or None
        return None

    @staticmethod
    async def _body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "bad_request", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _MAX_BODY:
                raise ApiError(413, "payload_too_large", f"the body is over {_MAX_BODY} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _sql_text(body: bytes) -> str:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "bad_request", 'send JSON {"sql": "SELECT ..."}') from exc
        if not isinstance(data, dict) or not isinstance(data.get("sql"), str) or not data["sql"].strip():
            raise ApiError(400, "bad_request", 'send JSON {"sql": "SELECT ..."} with a non-empty statement')
        text: str = data["sql"]
        return text

    # -- parameters ---------------------------------------------------------------------------

    @staticmethod
    def _one(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise ApiError(400, "bad_request", f"give {name} once")
        return values[0]

    def _int(self, query: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
        raw = self._one(query, name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, "bad_request", f"{name} must be an integer") from None
        if not lo <= value <= hi:
            raise ApiError(400, "bad_request", f"{name} must be between {lo} and {hi}")
        return value

    def _choice(
        self, query: dict[str, list[str]], name: str, choices: Any, default: str | None
    ) -> str | None:
        raw = self._one(query, name)
        if raw is None or raw == "":
            return default
        if raw not in choices:
            raise ApiError(400, "bad_request", f"{name} must be one of: {', '.join(sorted(choices))}")
        return raw

    def _filters(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        return self.dashboard.filter_options(role), 1

    def filters_of(self, role: Role, query: dict[str, list[str]]) -> Filters:
        """The :class:`Filters` of a request (defaults: the last 7 days with data, every app)."""
        app = self._one(query, "app") or None
        self.dashboard.check_app(role, app)
        start_raw, end_raw = self._one(query, "start"), self._one(query, "end")
        end = parse_day(end_raw, "end") if end_raw else None
        start = parse_day(start_raw, "start") if start_raw else None
        if end is None:
            end = self.dashboard.default_range(role)[1] if start is None else start + timedelta(days=6)
        if start is None:
            start = end - timedelta(days=6)
        if start > end:
            raise ApiError(400, "bad_request", "start must not be after end")
        if (end - start).days > 366 * 3:
            raise ApiError(400, "bad_request", "the date range is over 3 years")
        if start.year < 1971 or end.year > 9000:
            raise ApiError(400, "bad_request", "dates must be between 1971 and 9000")
        channel = self._one(query, "channel") or None
        device = self._one(query, "device") or None
        for name, value in (("channel", channel), ("device", device), ("app", app)):
            if value is not None and len(value) > 200:
                raise ApiError(400, "bad_request", f"{name} is over 200 characters")
        return Filters(start, end, app, channel, device)

    # -- endpoints (run in the thread pool) ----------------------------------------------------

    def _me(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        return {
            "name": role.name,
            "role": role.label,
            "apps": None if role.apps is None else list(role.apps),
            "pii": role.pii,
            "sql": role.sql,
            "admin": role.admin,
        }, 1

    def _kpis(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        return self.dashboard.kpis(role, self.filters_of(role, query)), 2

    def _timeseries(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        interval = self._choice(query, "interval", ("day", "hour"), "day") or "day"
        out = self.dashboard.timeseries(role, self.filters_of(role, query), interval)
        return out, len(out["points"])

    def _pages(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        limit = self._int(query, "limit", 20, 1, 1000)
        out = self.dashboard.pages(role, self.filters_of(role, query), limit)
        return out, len(out["pages"])

    def _breakdown(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        dimension = self._choice(query, "dimension", DIMENSIONS, None)
        if dimension is None:
            raise ApiError(400, "bad_request", f"give dimension, one of: {', '.join(sorted(DIMENSIONS))}")
        limit = self._int(query, "limit", 20, 1, 1000)
        out = self.dashboard.breakdown(role, self.filters_of(role, query), dimension, limit)
        return out, len(out["rows"])

    def _funnel(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        steps = [s for s in query.get("step", []) if s.strip()]
        if not steps:
            raise ApiError(
                400, "bad_request", "give at least one step (step=Event, step=@/path-regex, step=Event@regex)"
            )
        if len(steps) > 10:
            raise ApiError(400, "bad_request", "a funnel has at most 10 steps")
        for s in steps:
            if len(s) > 200:
                raise ApiError(400, "bad_request", "a step is over 200 characters")
            _, _, path = s.partition("@")
            if path:
                self._check_regex(path)
        raw_window = self._one(query, "window")
        try:
            window = float(raw_window) if raw_window else 3600.0
        except ValueError:
            raise ApiError(400, "bad_request", "window must be a number of seconds") from None
        if not math.isfinite(window) or window <= 0 or window > 366 * 86400:
            raise ApiError(400, "bad_request", "window must be between 0 and a year, in seconds")
        order = self._choice(query, "order", ("strict", "any"), "strict") or "strict"
        breakdown = self._choice(query, "breakdown", FUNNEL_BREAKDOWNS, None)
        out = self.dashboard.funnel(role, self.filters_of(role, query), steps, window, order, breakdown)
        return out, len(out["steps"])

    @staticmethod
    def _check_regex(pattern: str) -> None:
        import duckdb

        con = duckdb.connect(":memory:")
        try:
            con.execute("SELECT regexp_matches('', ?)", [pattern]).fetchall()
        except duckdb.Error as exc:
            raise ApiError(
                400, "bad_request", f"step path {pattern[:60]!r} is not a valid regular expression"
            ) from exc
        finally:
            con.close()

    def _live(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        app = self._one(query, "app") or None
        self.dashboard.check_app(role, app)
        minutes = self._int(query, "minutes", 30, 1, 1440)
        out = self.dashboard.live(role, app, minutes)
        return out, len(out["per_minute"])

    def _health(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        out = self.dashboard.health(role, self.filters_of(role, query))
        return out, len(out["failed_by_reason"])

    def _sql(self, role: Role, query: dict[str, list[str]], body: bytes) -> tuple[Any, int]:
        if not role.sql:
            raise AccessDenied(f"token {role.name} may not run SQL (set sql = true in api.tokens)")
        result = self.queries.run(role, self._sql_text(body))
        table = result.table
        columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
        rows = [[_clean(v) for v in row.values()] for row in table.to_pylist()]
        return {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": result.truncated}, len(
            rows
        )


class Mounted:
    """The collector and the web app on one server: ``/``, ``/static/``, ``/api/`` go to the web app.

    Args:
        collector: The collector's ASGI app.
        web: The web app.
    """

    def __init__(self, collector: ASGIApp, web: WebApp):
        self.collector = collector
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def send_after_web(message: Message) -> None:
                if message["type"] == "lifespan.shutdown.complete":
                    await self.web.shutdown()
                await send(message)

            await self.collector(scope, receive, send_after_web)
            return
        if scope["type"] == "http" and self.web.handles(scope["path"]):
            await self.web(scope, receive, send)
            return
        await self.collector(scope, receive, send)


def with_web(collector: ASGIApp, settings: Settings) -> Mounted:
    """``collector`` with the dashboard and API mounted beside it (``clicklake serve``)."""
    return Mounted(collector, WebApp(settings))
