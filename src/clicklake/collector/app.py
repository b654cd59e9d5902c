"""The collector's ASGI app: Segment Tracking API endpoints that answer 200 only once durable.

Routes stay thin. A request is checked in the cheapest order (route, method, origin, write key
in the header, size, decompression, JSON envelope, write key in the body, event size), wrapped
in a spool line around its raw body and handed to the :class:`~clicklake.collector.commit.GroupCommitter`;
the answer waits for the fsync of its group. Events inside a well-formed request are not
validated here: that is the pipeline's job, and a bad event lands in ``failed_events``.

Anything a client can send gets one of 200, 400, 401, 403 (origin refused by CORS), 404, 405,
413 or 503 with a JSON body ``{"error": ..., "message": ...}``, never a 5xx of another kind.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from clicklake.collector.commit import GroupCommitter, LogWriter, Unavailable
from clicklake.collector.metrics import CollectorMetrics
from clicklake.collector.options import CollectorOptions
from clicklake.events.envelope import encode_line
from clicklake.sources.spool import SpoolWriter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("clicklake.collector")

# Path -> the Segment call type it implies (None: a batch envelope). Short paths are what
# Segment's browser SDK posts to.
INGEST_ROUTES: dict[str, str | None] = {
    "/v1/batch": None,
    "/v1/import": None,
    "/v1/b": None,
    "/v1/track": "track",
    "/v1/t": "track",
    "/v1/page": "page",
    "/v1/p": "page",
    "/v1/screen": "screen",
    "/v1/s": "screen",
    "/v1/identify": "identify",
    "/v1/i": "identify",
    "/v1/group": "group",
    "/v1/g": "group",
    "/v1/alias": "alias",
    "/v1/a": "alias",
}
READ_ROUTES = ("/healthz", "/readyz", "/metrics")
_INGEST_METHODS = "POST, OPTIONS"
_READ_METHODS = "GET, HEAD"
_HEADER_LIST_RE = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
_OK_BODY = b'{"success":true}'


class HttpError(Exception):
    """A client error answered with ``status`` and a JSON body.

    Args:
        status: The HTTP status.
        error: A short machine-readable code.
        message: What is wrong, for a human.
        headers: Extra response headers.
    """

    def __init__(
        self, status: int, error: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or []


def _error_body(error: str, message: str) -> bytes:
    return orjson.dumps({"error": error, "message": message})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _basic_user(auth: bytes) -> str | None:
    """The user part of ``Authorization: Basic ...``; None when there is no Basic header."""
    scheme, _, token = auth.strip().partition(b" ")
    if scheme.lower() != b"basic":
        raise HttpError(
            401, "unauthorized", "only HTTP Basic authorization (the write key as user) is supported"
        )
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise HttpError(401, "unauthorized", "the Basic authorization header is not valid base64") from exc
    return decoded.partition(":")[0]


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """Decompress with a bound on the output, so a small bomb cannot blow up memory."""
    out = bytearray()
    while data:
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise HttpError(400, "bad_encoding", f"the body is not valid compressed data: {exc}") from exc
        if len(out) > limit or d.unconsumed_tail:
            raise HttpError(413, "payload_too_large", f"the decompressed body is over {limit} bytes")
        if not d.eof:
            raise HttpError(400, "bad_encoding", "the compressed body is truncated")
        # A gzip stream may hold several members, one after the other.
        data = d.unused_data if wbits > 16 else b""
    return bytes(out)


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses some valid JSON (integers beyond 64 bits); the standard parser does not.
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_size(value: Any) -> int:
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return len(json.dumps(value, separators=(",", ":")).encode())


class CollectorApp:
    """The ASGI application of the collector.

    Args:
        options: The collector options.
        metrics: Metrics to record into (a fresh registry by default).
        writer: The log writer (by default the spool on ``options.spool_dir``, or Kafka when
            ``options.log`` is ``"kafka"``).

    Raises:
        StorageError: The spool directory cannot be created.
        ConfigError: ``log = "kafka"`` without confluent-kafka installed.
    """

    def __init__(
        self,
        options: CollectorOptions,
        metrics: CollectorMetrics | None = None,
        writer: LogWriter | None = None,
    ):
        self.options = options
        self.metrics = metrics or CollectorMetrics()
        self.writer = writer or _open_log(options)
        self.committer = GroupCommitter(
            self.writer,
            self.metrics,
            max_queue_lines=options.max_queue_lines,
            max_queue_bytes=options.max_queue_bytes,
            max_group_lines=options.group_commit_max_lines,
            max_group_bytes=options.group_commit_max_bytes,
        )
        self._any_origin = "*" in options.cors_origins
        self._origins = {o.encode("latin-1") for o in options.cors_origins}
        self._retry_after = str(options.retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.committer.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def shutdown(self) -> None:
        """Refuse new requests, finish the queued group commits and close the spool writer."""
        await self.committer.close()
        log.info("event=collector_closed")

    # -- HTTP ---------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        path: str = scope["path"]
        route = path if (path in INGEST_ROUTES or path in READ_ROUTES) else "unknown"
        origin = _header(scope, b"origin")
        cors = self._cors_headers(origin)
        content_type = b"application/json"
        try:
            status, body, headers = await self._dispatch(scope, receive, path, origin)
            if path == "/metrics" and status == 200:
                content_type = CONTENT_TYPE_LATEST.encode()
        except HttpError as err:
            status, body, headers = err.status, _error_body(err.error, err.message), err.headers
            self.metrics.rejected.labels(err.error).inc()
        except Unavailable as exc:
            status, body = 503, _error_body(exc.reason, exc.message)
            headers = [(b"retry-after", self._retry_after)]
            self.metrics.rejected.labels(exc.reason).inc()
            self.metrics.unavailable.labels(exc.reason).inc()
        except _Disconnected:
            self.metrics.requests.labels(route, "disconnect").inc()
            return
        except Exception:  # a bug, not a client's fault: say so, log it, and keep serving
            log.exception("event=collector_internal_error path=%r", path[:200])
            status, body, headers = 500, _error_body("internal_error", "unexpected server error"), []
        all_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *cors,
            *headers,
        ]
        if scope["method"] == "HEAD":
            body = b""
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - t0)

    def _origin_allowed(self, origin: bytes) -> bool:
        return self._any_origin or origin in self._origins

    def _cors_headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        if origin is None or not self._origin_allowed(origin):
            return []
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"Origin"),
        ]

    async def _dispatch(
        self, scope: Scope, receive: Receive, path: str, origin: bytes | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        method: str = scope["method"]
        call_type = INGEST_ROUTES.get(path, "")
        if call_type != "":
            if method == "POST":
                if origin is not None and not self._origin_allowed(origin):
                    raise HttpError(403, "origin_not_allowed", "this origin is not in collector.cors_origins")
                return await self._ingest(scope, receive, call_type)
            if method == "OPTIONS":
                return self._preflight(scope, origin)
            raise HttpError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use POST",
                [(b"allow", _INGEST_METHODS.encode())],
            )
        if path in READ_ROUTES:
            if method not in ("GET", "HEAD"):
                raise HttpError(
                    405,
                    "method_not_allowed",
                    f"{method} is not allowed here; use GET",
                    [(b"allow", _READ_METHODS.encode())],
                )
            if path == "/healthz":
                return 200, b'{"status":"ok"}', []
            if path == "/readyz":
                problem = self._readiness_problem()
                if problem:
                    raise Unavailable("not_ready", problem)
                return 200, b'{"status":"ready"}', []
            return 200, self._metrics_text(), []
        raise HttpError(404, "not_found", f"no such route: {path[:200]}")

    def _preflight(self, scope: Scope, origin: bytes | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        allow = [(b"allow", _INGEST_METHODS.encode())]
        if origin is None:
            return 200, b"{}", allow
        if not self._origin_allowed(origin):
            raise HttpError(403, "origin_not_allowed", "this origin is not in collector.cors_origins")
        headers = [
            *allow,
            (b"access-control-allow-methods", _INGEST_METHODS.encode()),
            (b"access-control-max-age", b"86400"),
        ]
        requested = _header(scope, b"access-control-request-headers")
        if requested is not None:
            requested = requested.strip()
            # Echo what the browser asks for (Authorization, Content-Type, custom headers) if it is a header list.
            if requested and len(requested) <= 2048 and _HEADER_LIST_RE.match(requested):
                headers.append((b"access-control-allow-headers", requested))
        return 200, b"{}", headers

    def _readiness_problem(self) -> str:
        spool = self.options.spool_dir
        if self.committer.closing:
            return "the collector is shutting down"
        if self.writer.kind == "kafka":
            if self.committer.last_error:
                return f"the last write to Kafka failed: {self.committer.last_error}"
            if self.committer.queued_lines >= self.options.max_queue_lines:
                return "the Kafka producer is behind"
            return ""
        if not os.access(spool, os.W_OK):
            return f"the spool directory {spool} is not writable"
        try:
            st = os.statvfs(spool)
        except OSError as exc:
            return f"the spool directory cannot be inspected: {exc}"
        if st.f_bavail * st.f_frsize < self.options.max_request_bytes:
            return "the spool disk is full"
        if self.committer.queued_lines >= self.options.max_queue_lines:
            return "the spool writer is behind"
        return ""

    def _metrics_text(self) -> bytes:
        text = generate_latest(self.metrics.registry)
        if self.metrics.registry is not REGISTRY:
            # The process-wide registry holds process metrics and whatever else runs in-process.
            text += generate_latest(REGISTRY)
        return text

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.options.max_request_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise HttpError(413, "payload_too_large", f"the body is over {limit} bytes")
            except ValueError:
                raise HttpError(400, "bad_request", "Content-Length is not a number") from None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "payload_too_large", f"the body is over {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.metrics.wire_bytes.inc(size)
        return b"".join(chunks)

    def _app_id(self, key: str | None) -> str:
        if not key:
            raise HttpError(
                401, "unauthorized", "no write key: send it as the HTTP Basic user or as writeKey"
            )
        app = self.options.write_keys.get(key)
        if app is None:
            raise HttpError(401, "unauthorized", "unknown write key")
        return app

    async def _ingest(
        self, scope: Scope, receive: Receive, call_type: str | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        received_ms = time.time_ns() // 1_000_000
        auth = _header(scope, b"authorization")
        app_id: str | None = None
        if auth is not None and auth.strip():
            app_id = self._app_id(_basic_user(auth))
        body = await self._read_body(scope, receive)
        encoding = (_header(scope, b"content-encoding") or b"").strip().lower()
        if encoding in (b"gzip", b"x-gzip"):
            body = _inflate(body, 31, self.options.max_request_bytes)
        elif encoding == b"deflate":
            body = _inflate(body, 15, self.options.max_request_bytes)
        elif encoding not in (b"", b"identity"):
            raise HttpError(400, "bad_encoding", "Content-Encoding must be gzip, deflate or identity")
        payload = _parse_json(body)
        if not isinstance(payload, dict):
            raise HttpError(400, "not_an_object", "the body must be a JSON object")
        if app_id is None:
            key = payload.get("writeKey")
            app_id = self._app_id(key if isinstance(key, str) else None)
        if call_type is None:
            events = payload.get("batch")
            if not isinstance(events, list):
                raise HttpError(
                    400, "batch_not_array", 'a batch request needs "batch": [...] (an array of calls)'
                )
            n_events = len(events)
            limit = self.options.max_event_bytes
            if len(body) > limit and any(_json_size(e) > limit for e in events):
                raise HttpError(413, "event_too_large", f"an event in the batch is over {limit} bytes")
        else:
            n_events = 1
            if len(body) > self.options.max_event_bytes:
                raise HttpError(
                    413, "event_too_large", f"the event is over {self.options.max_event_bytes} bytes"
                )
            if "type" not in payload:
                body = _with_type(body, call_type, empty=not payload)
        client = scope.get("client")
        ua = _header(scope, b"user-agent")
        line = encode_line(
            body,
            app_id=app_id,
            received_ms=received_ms,
            ip=client[0] if client else "",
            user_agent=ua.decode("latin-1") if ua else "",
        )
        await self.committer.submit(line)
        self.metrics.events.labels(app_id).inc(n_events)
        self.metrics.payload_bytes.inc(len(body))
        return 200, _OK_BODY, []


class _Disconnected(Exception):
    """The client went away before its body was read; nothing to answer."""


def _with_type(body: bytes, call_type: str, *, empty: bool) -> bytes:
    """The object ``body`` with ``"type"`` added first, without re-encoding the rest."""
    head = b'{"type":"' + call_type.encode() + b'"'
    if empty:
        return head + b"}"
    return head + b"," + body.strip()[1:]


def _open_log(options: CollectorOptions) -> LogWriter:
    """The writer ``options.log`` names: the spool (default) or Kafka."""
    if options.log == "kafka":
        from clicklake.sources.kafka import KafkaWriter, ensure_topic

        ensure_topic(options.kafka)
        return KafkaWriter(options.kafka)
    return SpoolWriter(options.spool_dir, options.segment_max_bytes, options.segment_max_age_s)


def create_app(options: CollectorOptions, metrics: CollectorMetrics | None = None) -> CollectorApp:
    """The collector ASGI app for ``options``.

    Args:
        options: The collector options (see :meth:`CollectorOptions.from_settings`).
        metrics: Metrics to record into (a fresh registry by default).

    Returns:
        The ASGI app; run it with :func:`clicklake.collector.server.serve` or any ASGI server.
    """
    return CollectorApp(options, metrics)
