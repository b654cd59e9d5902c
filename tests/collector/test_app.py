"""The collector's endpoints against a live server: routes, auth, encodings, CORS, errors, metrics."""

from __future__ import annotations

import asyncio
import base64
import gzip
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from clicklake.collector.app import CollectorApp
from tests.collector.conftest import (
    ALLOWED_ORIGIN,
    APP_ID,
    WRITE_KEY,
    LiveCollector,
    make_options,
    spool_lines,
)

BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()

SINGLE = {
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


def _event(**extra: Any) -> dict[str, Any]:
    return {"messageId": str(uuid.uuid4()), "userId": "u1", "event": "Clicked", **extra}


def _find(live: LiveCollector, message_id: str) -> dict[str, Any]:
    for line in spool_lines(live.app.options.spool_dir):
        p = line["p"]
        calls = p.get("batch", [p]) if isinstance(p, dict) else []
        if any(isinstance(c, dict) and c.get("messageId") == message_id for c in calls):
            return line
    raise AssertionError(f"{message_id} not in the spool")


@pytest.mark.parametrize("path", sorted(SINGLE))
def test_single_call_routes_set_type_from_path(live: LiveCollector, path: str) -> None:
    event = _event()
    r = httpx.post(live.url + path, json=event, headers={"Authorization": BASIC, "User-Agent": "ua/1"})
    assert r.status_code == 200
    assert r.json() == {"success": True}
    line = _find(live, event["messageId"])
    assert line["app"] == APP_ID
    assert line["ip"] == "127.0.0.1"
    assert line["ua"] == "ua/1"
    assert line["p"]["type"] == SINGLE[path]
    assert line["p"]["event"] == "Clicked"


def test_explicit_type_is_kept(live: LiveCollector) -> None:
    event = _event(type="page")
    assert httpx.post(live.url + "/v1/track", json=event, headers={"Authorization": BASIC}).status_code == 200
    assert _find(live, event["messageId"])["p"]["type"] == "page"


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b", "/v1/import"])
@pytest.mark.parametrize("gz", [False, True])
def test_batch_with_and_without_gzip(live: LiveCollector, path: str, gz: bool) -> None:
    events = [_event(type="track") for _ in range(3)]
    raw = orjson.dumps({"batch": events, "writeKey": WRITE_KEY})
    headers = {"Content-Type": "application/json"}
    if gz:
        raw = gzip.compress(raw)
        headers["Content-Encoding"] = "gzip"
    r = httpx.post(live.url + path, content=raw, headers=headers)
    assert r.status_code == 200, r.text
    line = _find(live, events[0]["messageId"])
    assert [e["messageId"] for e in line["p"]["batch"]] == [e["messageId"] for e in events]


def test_body_is_stored_as_sent(live: LiveCollector) -> None:
    mid = str(uuid.uuid4())
    raw = b'{"type":"track",\n "messageId":"' + mid.encode() + b'", "event":"X", "properties":{"a":1.50}}'
    assert httpx.post(live.url + "/v1/t", content=raw, headers={"Authorization": BASIC}).status_code == 200
    spool = live.app.options.spool_dir
    text = b"".join((spool / n).read_bytes() for n in sorted(p.name for p in spool.iterdir()))
    assert (
        b'"p":{"type":"track",  "messageId":"' + mid.encode() + b'", "event":"X", "properties":{"a":1.50}}}\n'
        in text
    )


def test_malformed_events_inside_a_good_request_are_accepted(live: LiveCollector) -> None:
    mid = str(uuid.uuid4())
    body = {"writeKey": WRITE_KEY, "batch": [{"messageId": mid, "type": 42}, "not an event", None]}
    assert httpx.post(live.url + "/v1/batch", json=body).status_code == 200
    assert _find(live, mid)["p"]["batch"][1] == "not an event"


def test_browser_text_plain_with_writekey_in_body(live: LiveCollector) -> None:
    event = _event(type="page", writeKey=WRITE_KEY, context={"sessionId": 1732600000123})
    r = httpx.post(
        live.url + "/v1/p",
        content=orjson.dumps(event),
        headers={"Content-Type": "text/plain", "Origin": ALLOWED_ORIGIN},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert _find(live, event["messageId"])["p"]["context"]["sessionId"] == 1732600000123


def test_cors_preflight_allowed_echoes_requested_headers(live: LiveCollector) -> None:
    r = httpx.options(
        live.url + "/v1/t",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-custom-session",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "authorization, content-type, x-custom-session"


def test_cors_refused_origin(live: LiveCollector) -> None:
    evil = "https://evil.example"
    pre = httpx.options(live.url + "/v1/t", headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403
    assert "access-control-allow-origin" not in pre.headers
    assert pre.json()["error"] == "origin_not_allowed"
    post = httpx.post(live.url + "/v1/t", json=_event(), headers={"Authorization": BASIC, "Origin": evil})
    assert post.status_code == 403
    assert "access-control-allow-origin" not in post.headers


def test_cors_star_allows_any_origin(tmp_path: Path) -> None:
    with LiveCollector(make_options(tmp_path, cors_origins=("*",))) as server:
        r = httpx.options(
            server.url + "/v1/batch",
            headers={"Origin": "https://anything.example", "Access-Control-Request-Method": "POST"},
        )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://anything.example"


BOMB = gzip.compress(b" " * (10 * 1024 * 1024))


@pytest.mark.parametrize(
    ("path", "method", "headers", "body", "status", "error"),
    [
        ("/v1/track", "POST", {}, orjson.dumps(_event()), 401, "unauthorized"),
        (
            "/v1/track",
            "POST",
            {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()},
            b"{}",
            401,
            "unauthorized",
        ),
        ("/v1/track", "POST", {"Authorization": "Basic !!!"}, b"{}", 401, "unauthorized"),
        ("/v1/track", "POST", {"Authorization": "Bearer x"}, b"{}", 401, "unauthorized"),
        ("/v1/track", "POST", {}, b'{"writeKey": "other"}', 401, "unauthorized"),
        ("/v1/track", "POST", {"Authorization": BASIC}, b"{not json", 400, "invalid_json"),
        ("/v1/track", "POST", {"Authorization": BASIC}, b"", 400, "invalid_json"),
        ("/v1/track", "POST", {"Authorization": BASIC}, b"[1, 2]", 400, "not_an_object"),
        ("/v1/batch", "POST", {"Authorization": BASIC}, b'{"batch": {}}', 400, "batch_not_array"),
        ("/v1/batch", "POST", {"Authorization": BASIC}, b'{"events": []}', 400, "batch_not_array"),
        (
            "/v1/t",
            "POST",
            {"Authorization": BASIC, "Content-Encoding": "gzip"},
            b"not gzip",
            400,
            "bad_encoding",
        ),
        ("/v1/t", "POST", {"Authorization": BASIC, "Content-Encoding": "br"}, b"{}", 400, "bad_encoding"),
        (
            "/v1/t",
            "POST",
            {"Authorization": BASIC},
            b"{" + b" " * (70 * 1024) + b"}",
            413,
            "payload_too_large",
        ),
        (
            "/v1/t",
            "POST",
            {"Authorization": BASIC, "Content-Encoding": "gzip"},
            BOMB,
            413,
            "payload_too_large",
        ),
        (
            "/v1/t",
            "POST",
            {"Authorization": BASIC},
            orjson.dumps(_event(pad="x" * 9000)),
            413,
            "event_too_large",
        ),
        (
            "/v1/batch",
            "POST",
            {"Authorization": BASIC},
            orjson.dumps({"batch": [_event(), _event(pad="x" * 9000)]}),
            413,
            "event_too_large",
        ),
        ("/v1/track", "GET", {}, b"", 405, "method_not_allowed"),
        ("/v1/b", "PUT", {}, b"", 405, "method_not_allowed"),
        ("/metrics", "POST", {}, b"", 405, "method_not_allowed"),
        ("/v2/track", "POST", {"Authorization": BASIC}, b"{}", 404, "not_found"),
        ("/", "GET", {}, b"", 404, "not_found"),
    ],
)
def test_errors(
    live: LiveCollector, path: str, method: str, headers: dict[str, str], body: bytes, status: int, error: str
) -> None:
    r = httpx.request(method, live.url + path, content=body, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    payload = r.json()
    assert payload["error"] == error
    assert payload["message"]
    if status == 405:
        assert "allow" in r.headers


def test_health_ready_metrics(live: LiveCollector) -> None:
    assert httpx.get(live.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(live.url + "/readyz").json() == {"status": "ready"}
    httpx.post(live.url + "/v1/t", json=_event(), headers={"Authorization": BASIC})
    text = httpx.get(live.url + "/metrics").text
    assert 'clicklake_collector_requests_total{route="/v1/t",status="200"}' in text
    assert 'clicklake_collector_events_accepted_total{app="test-app"}' in text
    assert "clicklake_collector_request_duration_seconds_bucket" in text
    assert "clicklake_collector_group_commit_lines_count" in text
    assert "clicklake_collector_spool_append_seconds_count" in text
    assert "clicklake_collector_request_bytes_total" in text


def test_queue_over_bound_gives_503(tmp_path: Path) -> None:
    app = CollectorApp(make_options(tmp_path, max_queue_lines=0, retry_after_s=7))

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as client:
            r = await client.post("/v1/t", json=_event(), headers={"Authorization": BASIC})
        await app.shutdown()
        return r

    r = asyncio.run(main())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"] == "queue_full"
    assert spool_lines(tmp_path) == []


def test_group_commit_shares_one_append(tmp_path: Path) -> None:
    app = CollectorApp(make_options(tmp_path))
    appends: list[int] = []
    original = app.writer.append

    def counting(lines: Any) -> None:
        appends.append(len(lines))
        original(lines)

    app.writer.append = counting  # type: ignore[method-assign]

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as client:
            rs = await asyncio.gather(
                *(client.post("/v1/t", json=_event(), headers={"Authorization": BASIC}) for _ in range(50))
            )
        await app.shutdown()
        return [r.status_code for r in rs]

    assert asyncio.run(main()) == [200] * 50
    assert sum(appends) == 50
    assert len(appends) < 50
    assert len(spool_lines(tmp_path)) == 50
