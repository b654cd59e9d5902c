"""Segment's browser SDK (``@segment/analytics-next`` from npm) in headless Chromium, posting to the
collector from a page on another origin: allowed origins land in ``events``, others are refused by CORS.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from clicklake.config import load_settings
from clicklake.engines.local import Pipeline
from clicklake.lakehouse.catalog import EVENTS, open_catalog, table_id
from clicklake.sources.spool import SpoolSource
from tests.collector.browser.fixtures import ARTIFACTS
from tests.collector.conftest import APP_ID, WRITE_KEY, LiveCollector, make_options, spool_lines

pytestmark = pytest.mark.integration

# The SDK must not ask cdn.segment.com for settings: they are given in the load call, and
# cdnURL points at the page's own origin, where the bundle's lazy chunks are served (/sdk).
PAGE = """<!doctype html>
<html><head><title>Shop docs</title><script src="/sdk/index.js"></script></head>
<body><h1>clicklake browser test</h1><p id="status">loading</p>
<script>
window.sdkResult = (async () => {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load({
    writeKey: "%(write_key)s",
    cdnURL: location.origin + "/sdk",
    cdnSettings: {integrations: {"Segment.io": {
      apiKey: "%(write_key)s", apiHost: "%(api_host)s", protocol: "http"}}},
  });
  await analytics.page("Docs", "Home", {section: "intro"});
  await analytics.track("Order Completed", {revenue: 9.5, order_id: "o-1", currency: "EUR"});
  await analytics.identify("user-1", {email: "a@b.example", plan: "pro"});
  document.getElementById("status").textContent = "sent";
  return "sent";
})().catch((e) => String(e));
</script></body></html>
"""


def _write_page(root: Path, collector_url: str) -> None:
    api_host = collector_url.removeprefix("http://") + "/v1"
    (root / "index.html").write_text(PAGE % {"write_key": WRITE_KEY, "api_host": api_host})


def _wait_for(predicate: Any, timeout_s: float = 60.0) -> bool:
    """Poll until ``predicate()`` is true; False when it never was (the test then fails on it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_browser_sdk_on_an_allowed_origin_lands_in_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site_factory: Any, chromium: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
    spool = settings.storage.spool_dir
    site = site_factory("shop")
    with LiveCollector(make_options(spool, cors_origins=(site.origin,))) as collector:
        _write_page(site.root, collector.url)
        context = chromium.new_context()
        page = context.new_page()
        posts: list[tuple[str, str, dict[str, str]]] = []
        every_url: list[str] = []
        page.on("request", lambda r: every_url.append(r.url))
        page.on(
            "request",
            lambda r: posts.append((r.method, r.url, r.headers)) if r.url.startswith(collector.url) else None,
        )
        page.goto(f"{site.origin}/index.html")
        assert page.evaluate("window.sdkResult") == "sent"
        assert _wait_for(lambda: len(spool_lines(spool)) >= 3), spool_lines(spool)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-sdk-allowed-origin.png"))
        context.close()
        lines = spool_lines(spool)
        sample = collector.app.metrics.registry.get_sample_value
        # Each short path saw a CORS preflight (OPTIONS, asking for Authorization) and its POST.
        answered = {
            p: sample("clicklake_collector_requests_total", {"route": p, "status": "200"})
            for p in ("/v1/p", "/v1/t", "/v1/i")
        }
    # The SDK's own wire format: short paths, text/plain bodies, the write key as Basic user.
    paths = sorted(url.removeprefix(collector.url) for method, url, _ in posts if method == "POST")
    assert paths == ["/v1/i", "/v1/p", "/v1/t"]
    assert all(h.get("content-type", "").startswith("text/plain") for m, _, h in posts if m == "POST")
    basic = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert all(h.get("authorization") == basic for m, _, h in posts if m == "POST")
    assert answered == {"/v1/p": 2.0, "/v1/t": 2.0, "/v1/i": 2.0}
    # Nothing went to Segment's CDN or API: settings came from the load call.
    assert every_url and all(u.startswith((site.origin, collector.url)) for u in every_url), every_url
    assert len(lines) == 3
    assert {line["app"] for line in lines} == {APP_ID}

    Pipeline(settings, SpoolSource(spool)).run(once=True)
    table = open_catalog(settings).load_table(table_id(settings, EVENTS))
    rows = {
        r["event_type"]: r
        for r in table.scan(
            selected_fields=(
                "event_type",
                "event_name",
                "app_id",
                "user_id",
                "anonymous_id",
                "page_url",
                "properties",
                "traits",
                "library_name",
            )
        )
        .to_arrow()
        .to_pylist()
    }
    assert sorted(rows) == ["identify", "page", "track"]
    assert {r["app_id"] for r in rows.values()} == {APP_ID}
    assert rows["page"]["event_name"] == "Home"
    assert rows["track"]["event_name"] == "Order Completed"
    assert json.loads(rows["track"]["properties"]) == {"revenue": 9.5, "order_id": "o-1", "currency": "EUR"}
    assert json.loads(rows["page"]["properties"])["section"] == "intro"
    assert rows["page"]["page_url"] == f"{site.origin}/index.html"
    assert rows["identify"]["user_id"] == "user-1"
    assert json.loads(rows["identify"]["traits"]) == {"email": "a@b.example", "plan": "pro"}
    # One browser, one anonymous id across the three calls.
    assert len({r["anonymous_id"] for r in rows.values()}) == 1
    assert {r["library_name"] for r in rows.values()} == {"analytics.js"}


def test_browser_sdk_on_an_origin_outside_the_allowlist_is_refused_by_cors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site_factory: Any, chromium: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    spool = tmp_path / "data" / "spool"
    allowed = site_factory("shop")
    other = site_factory("elsewhere")
    with LiveCollector(make_options(spool, cors_origins=(allowed.origin,))) as collector:
        _write_page(other.root, collector.url)
        context = chromium.new_context()
        page = context.new_page()
        failed: list[tuple[str, str]] = []
        console: list[str] = []
        page.on(
            "requestfailed",
            lambda r: failed.append((r.url, r.failure or "")) if r.url.startswith(collector.url) else None,
        )
        page.on("console", lambda m: console.append(m.text))
        page.goto(f"{other.origin}/index.html")
        page.evaluate("window.sdkResult")
        assert _wait_for(lambda: any("CORS policy" in text for text in console)), console
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-sdk-refused-origin.png"))
        context.close()
    assert failed, "the browser did not report a failed request to the collector"
    assert all(url.startswith(f"{collector.url}/v1/") for url, _ in failed)
    assert any(f"from origin '{other.origin}' has been blocked by CORS policy" in t for t in console)
    assert spool_lines(spool) == []
    refused = collector.app.metrics.registry.get_sample_value(
        "clicklake_collector_requests_total", {"route": "/v1/p", "status": "403"}
    )
    assert refused is not None and refused >= 1
