"""Send a Segment NDJSON export to a collector over HTTP, as an SDK flushing its offline queue.

``clicklake demo`` generates a multi-day clickstream and sends it through a real collector with
this module. The events happened in the past but the collector stamps its receive time (``rt``)
now, so each event is sent the way an SDK sends a queue it kept while offline: ``timestamp``
stays historical and ``sentAt`` is the moment of sending. Concretely, each event's ``sentAt`` is
moved by ``now - receivedAt`` (the export's receive time), so ``sent - created`` grows by exactly
the time the event spent "in the queue" and ``derived_tstamp = collector - (sent - created)``
comes out as in the export, device clock skew and network latency included (plus the few
milliseconds between sending and receiving). An event without ``sentAt`` has its ``timestamp``
moved instead, so it stays as far from its receive time as it was.

Lines are packed into ``{"batch": [...]}`` requests of at most ``max_batch_bytes``, in order,
``receivedAt`` and per-event ``writeKey`` removed (the write key goes in the Basic header) and a
batch-level ``context`` merged into each event's. What a collector must refuse is sent as it is,
one request per line, and counted by the answer's status and error code: lines that are not JSON
or not a Segment envelope (400), requests over ``max_request_bytes`` and events over
``max_event_bytes`` (413). Malformed events inside well-formed lines are sent in batches like the
others; the pipeline puts them in ``failed_events``.
"""

from __future__ import annotations

import base64
import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from clicklake.exceptions import ClickLakeError

_RETRIES = 8


@dataclass
class ReplayStats:
    """What a replay sent and how the collector answered.

    Attributes:
        requests: Requests sent (retries after a 503 not counted again).
        accepted_requests: Requests answered 200.
        accepted_events: Events in requests answered 200.
        refused: Requests refused with a 4xx, by ``"<status> <error>"``.
        refused_events: Events (as the export counts them: a line that is not JSON is one) in
            refused requests.
        seconds: Wall time of the replay.
    """

    requests: int = 0
    accepted_requests: int = 0
    accepted_events: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    refused_events: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _Request:
    path: str
    events: list[tuple[dict[str, Any], int | None]] | None  # (event, export receive time ms)
    raw: bytes | None  # sent as it is
    n_events: int


def _iso(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _epoch_ms(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def _shifted(event: dict[str, Any], received_ms: int | None, now_ms: int) -> dict[str, Any]:
    """``event`` with ``sentAt`` (or, without it, ``timestamp``) moved by the time spent in the
    offline queue."""
    if received_ms is None:
        return event
    delta = now_ms - received_ms
    sent = _epoch_ms(event.get("sentAt"))
    if sent is not None:
        return {**event, "sentAt": _iso(sent + delta)}
    if "sentAt" in event:
        return event  # a sentAt that is not a time stays as it is: the pipeline says so
    created = event.get("timestamp")
    created_ms = _epoch_ms(created)
    if created_ms is None:
        return event
    moved = created_ms + delta
    return {**event, "timestamp": moved if isinstance(created, int) else _iso(moved)}


def _single_path(payload: Any) -> str:
    kind = payload.get("type") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind in ("track", "page", "screen", "identify", "group", "alias"):
        return f"/v1/{kind}"
    return "/v1/batch" if isinstance(payload, dict) and "batch" in payload else "/v1/track"


def plan_requests(
    lines: Iterable[bytes], *, max_batch_bytes: int, max_request_bytes: int, max_event_bytes: int
) -> Iterator[_Request]:
    """Group export lines into the requests to send (see the module docstring)."""
    pending: list[tuple[dict[str, Any], int | None]] = []
    size = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        payload: Any = None
        events: list[Any] | None = None
        is_batch = False
        if len(line) <= max_request_bytes:
            try:
                payload = orjson.loads(line)
            except orjson.JSONDecodeError:
                payload = None
            if isinstance(payload, dict):
                batch = payload.get("batch")
                if batch is None and "batch" not in payload:
                    events = [payload]
                elif isinstance(batch, list) and all(isinstance(e, dict) for e in batch):
                    events, is_batch = batch, True
        if events is None:
            yield _Request(_single_path(payload), None, line, 1)
            continue
        sized: list[tuple[dict[str, Any], int | None, int]] = []
        for ev in events:
            received = _epoch_ms(ev.pop("receivedAt", payload.get("receivedAt")))
            ev.pop("writeKey", None)
            if is_batch:
                # Batch-level fields apply to each event; the event's own win.
                shared = payload.get("context")
                if isinstance(shared, dict) and isinstance(ev.get("context", {}), dict):
                    ev["context"] = {**shared, **ev.get("context", {})}
                if "sentAt" not in ev and "sentAt" in payload:
                    ev["sentAt"] = payload["sentAt"]
            sized.append((ev, received, len(orjson.dumps(ev)) + 1))
        if any(n - 1 > max_event_bytes for _, _, n in sized):
            # The collector refuses the whole request; send it as the SDK would have.
            yield _Request(_single_path(payload), None, line, len(events))
            continue
        for ev, received, n in sized:
            if pending and size + n > max_batch_bytes:
                yield _Request("/v1/batch", pending, None, len(pending))
                pending, size = [], 0
            pending.append((ev, received))
            size += n
    if pending:
        yield _Request("/v1/batch", pending, None, len(pending))


class _Sender:
    """One keep-alive connection per thread to the collector."""

    def __init__(self, url: str, write_key: str):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ClickLakeError(f"the collector URL must be http://host:port, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.headers = {
            "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(),
            "Content-Type": "application/json",
            "User-Agent": "clicklake-demo",
        }
        self.local = threading.local()
        self.opened: list[http.client.HTTPConnection] = []

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.opened.append(conn)
        return conn

    def send(self, req: _Request) -> tuple[int, str]:
        """POST ``req``; retries 503s (honouring Retry-After) and dropped connections."""
        delay = 0.1
        for attempt in range(_RETRIES + 1):
            if req.raw is not None:
                body = req.raw
            else:
                assert req.events is not None
                now = time.time_ns() // 1_000_000
                batch = [_shifted(ev, received, now) for ev, received in req.events]
                body = orjson.dumps({"batch": batch, "sentAt": _iso(now)})
            conn = self._conn()
            try:
                conn.request("POST", req.path, body, self.headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self.local.conn = None
                if attempt == _RETRIES:
                    raise ClickLakeError(f"cannot send to the collector: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if resp.status == 503 and attempt < _RETRIES:
                try:
                    time.sleep(float(resp.getheader("Retry-After") or delay))
                except ValueError:
                    time.sleep(delay)
                continue
            error = ""
            if resp.status != 200:
                try:
                    error = str(orjson.loads(data).get("error", ""))
                except (orjson.JSONDecodeError, AttributeError):
                    error = ""
            return resp.status, error
        raise ClickLakeError("the collector kept answering 503")  # pragma: no cover

    def close(self) -> None:
        for conn in self.opened:
            conn.close()


def replay(
    paths: Iterable[Path],
    url: str,
    write_key: str,
    *,
    max_batch_bytes: int = 32 * 1024,
    max_request_bytes: int = 500 * 1024,
    max_event_bytes: int = 32 * 1024,
    concurrency: int = 4,
) -> ReplayStats:
    """Send NDJSON export files to the collector at ``url`` (see the module docstring).

    Args:
        paths: NDJSON files (Segment calls or batches with ``receivedAt``), sent in order.
        url: The collector's base URL, ``http://host:port``.
        write_key: Sent as the HTTP Basic user.
        max_batch_bytes: Largest batch request the replay builds (at most ``max_request_bytes``).
        max_request_bytes: The collector's request limit: longer lines are sent as they are.
        max_event_bytes: The collector's event limit: lines with a larger event are sent as they are.
        concurrency: Requests in flight at once (the collector shares one fsync among them).

    Returns:
        What was sent, accepted and refused.

    Raises:
        ClickLakeError: The collector cannot be reached, answers 5xx, or stays unavailable.
    """
    budget = max(1024, min(max_batch_bytes, max_request_bytes - 1024))
    sender = _Sender(url, write_key)
    stats = ReplayStats()
    refused: Counter[str] = Counter()
    lock = threading.Lock()
    t0 = time.monotonic()

    def send(req: _Request) -> None:
        status, error = sender.send(req)
        with lock:
            if status == 200:
                stats.accepted_requests += 1
                stats.accepted_events += req.n_events
            elif 400 <= status < 500:
                refused[f"{status} {error}".strip()] += 1
                stats.refused_events += req.n_events
            else:
                raise ClickLakeError(f"the collector answered {status} {error}".strip())

    def lines() -> Iterator[bytes]:
        for path in paths:
            with path.open("rb") as f:
                yield from f

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="clicklake-replay") as pool:
        inflight: list[Future[None]] = []
        try:
            for req in plan_requests(
                lines(),
                max_batch_bytes=budget,
                max_request_bytes=max_request_bytes,
                max_event_bytes=max_event_bytes,
            ):
                stats.requests += 1
                inflight.append(pool.submit(send, req))
                if len(inflight) >= 4 * concurrency:
                    # Bounded look-ahead: memory stays flat and an error stops the replay early.
                    inflight.pop(0).result()
            for fut in inflight:
                fut.result()
        finally:
            for fut in inflight:
                fut.cancel()
    sender.close()
    stats.refused = dict(sorted(refused.items()))
    stats.seconds = time.monotonic() - t0
    return stats
