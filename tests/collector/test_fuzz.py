"""Fuzzing: whatever a client sends, the answer is one of the documented codes, never a 5xx crash."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clicklake.collector.app import INGEST_ROUTES, READ_ROUTES
from tests.collector.conftest import WRITE_KEY, LiveCollector

ALLOWED = {200, 400, 401, 403, 404, 405, 413, 503}
BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
HEADER_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "batch": st.lists(json_values, max_size=5) | json_values,
        "writeKey": st.sampled_from([WRITE_KEY, "bad", ""]) | json_values,
        "type": json_values,
        "event": json_values,
        "messageId": json_values,
    },
)
bodies = st.one_of(
    envelopes.map(_dumps),
    json_values.map(_dumps),
    st.binary(max_size=300),
    st.binary(max_size=300).map(gzip.compress),
    envelopes.map(lambda e: gzip.compress(_dumps(e))),
    st.sampled_from([b"{" + b" " * (70 * 1024) + b"}", gzip.compress(b"[" * (1 << 20)), b'{"a":' * 5000]),
)
paths = st.sampled_from(sorted(INGEST_ROUTES) + list(READ_ROUTES)) | st.text(
    st.characters(min_codepoint=33, max_codepoint=126), max_size=20
).map(lambda s: "/" + s)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Authorization"] = draw(
            st.sampled_from([BASIC, "Basic", "Basic ???", "Bearer t"]) | HEADER_TEXT
        )
    if draw(st.booleans()):
        headers["Content-Encoding"] = draw(
            st.sampled_from(["gzip", "deflate", "identity", "br"]) | HEADER_TEXT
        )
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain"]) | HEADER_TEXT)
    if draw(st.booleans()):
        headers["Origin"] = draw(st.sampled_from(["https://shop.example", "null"]) | HEADER_TEXT)
    if draw(st.booleans()):
        headers["Access-Control-Request-Headers"] = draw(HEADER_TEXT)
    method = draw(
        st.sampled_from(["POST", "POST", "POST", "GET", "OPTIONS", "PUT", "DELETE", "HEAD", "PATCH"])
    )
    return method, draw(paths), headers, draw(bodies)


def test_fuzz_every_answer_is_documented(live: LiveCollector) -> None:
    with httpx.Client(base_url=live.url, timeout=10) as client:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(requests())
        def check(req: tuple[str, str, dict[str, str], bytes]) -> None:
            method, path, headers, body = req
            r = client.request(method, path, headers=headers, content=body)
            assert r.status_code in ALLOWED, (r.status_code, r.text)
            # /metrics answers Prometheus text; every other answer with a body is JSON
            if method != "HEAD" and not (
                r.status_code == 200 and r.headers.get("content-type", "").startswith("text/")
            ):
                payload = r.json()
                if r.status_code >= 400:
                    assert set(payload) == {"error", "message"}

        check()
    assert httpx.get(live.url + "/healthz").status_code == 200
