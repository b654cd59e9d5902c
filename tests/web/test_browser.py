"""The dashboard in Debian's Chromium (Playwright, no browser download): numbers, filters, funnel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clicklake.query import run_sql
from tests.web.fixtures import END, Served, day

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test-deps` (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def _ready(page: Any) -> None:
    page.wait_for_selector("body[data-state=ready]", timeout=120_000)


def _tiles(page: Any) -> dict[str, float]:
    return {
        t.get_attribute("data-key"): float(t.get_attribute("data-value"))
        for t in page.query_selector_all(".tile")
    }


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def _set_dates(page: Any, start: str, end: str) -> None:
    # One change event per input: wait for each refresh to settle.
    for sel, value in (("#f-start", start), ("#f-end", end)):
        page.fill(sel, value)
        page.dispatch_event(sel, "change")
        _ready(page)


def test_dashboard_shows_the_kpis_of_daily_kpis_and_filters_change_them(served: Served, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{served.url}/#token=tok_shop")
    _ready(page)
    assert "#token" not in page.url  # the token left the address bar (it is in sessionStorage)
    assert "shop-analyst" in page.inner_text("#whoami")
    one_day = day(END, -1)
    _set_dates(page, one_day, one_day)
    tiles = _tiles(page)
    kpi = run_sql(
        served.settings,
        f"SELECT users, sessions, page_views, bounce_rate, engagement_rate, conversion_rate, revenue, "
        f"avg_session_duration_s FROM daily_kpis WHERE app_id = 'demo-shop' AND date = DATE '{one_day}'",
    ).to_pylist()[0]
    for key, value in kpi.items():
        assert tiles[key] == pytest.approx(float(value or 0)), key
    assert page.inner_text("#kpi-sessions .v") == f"{kpi['sessions']:,}"
    _shot(page, "one-day")

    # A week, then one channel: the numbers change, and match the API's breakdown.
    _set_dates(page, day(END, -6), day(END))
    week = _tiles(page)
    assert week["sessions"] > tiles["sessions"]
    channel = page.eval_on_selector("#f-channel", "s => s.options[1].value")
    page.select_option("#f-channel", channel)
    _ready(page)
    narrowed = _tiles(page)
    assert 0 < narrowed["sessions"] < week["sessions"]
    rows = page.eval_on_selector_all(
        "#acq-table tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert next(r for r in rows if r[0] == channel)[1] == f"{int(narrowed['sessions']):,}"
    page.select_option("#f-channel", "")
    _ready(page)
    page.select_option("#f-device", "mobile")
    _ready(page)
    assert 0 < _tiles(page)["sessions"] < week["sessions"]
    page.select_option("#f-device", "")
    _ready(page)
    assert page.query_selector_all("#pages-table tbody tr")
    assert page.query_selector_all("#health-failed tbody tr")
    _shot(page, "week")
    assert not errors


def test_funnel_builder(served: Served, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{served.url}/#token=tok_shop")
    _ready(page)
    _set_dates(page, day(END, -6), day(END))
    inputs = page.query_selector_all(".funnel-step")
    inputs[0].fill("Product Viewed")
    inputs[1].fill("Product Added")
    page.click("#funnel-add")
    page.query_selector_all(".funnel-step")[2].fill("Order Completed")
    page.select_option("#funnel-window", "86400")
    page.click("#funnel-run")
    _ready(page)
    page.wait_for_function("document.querySelectorAll('#funnel-table tbody tr').length === 3")
    cells = page.eval_on_selector_all(
        "#funnel-table tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
    )
    with served.client("tok_shop") as c:
        api = c.get(
            "/api/v1/funnel",
            params={
                "step": ["Product Viewed", "Product Added", "Order Completed"],
                "window": "86400",
                "start": day(END, -6),
                "end": day(END),
            },
        ).json()["steps"]
    assert [r[1] for r in cells] == ["Product Viewed", "Product Added", "Order Completed"]
    assert [r[2] for r in cells] == [f"{s['entities']:,}" for s in api]
    assert api[0]["entities"] >= api[1]["entities"] >= api[2]["entities"]
    _shot(page, "funnel")


def test_login_page_refuses_a_wrong_token_and_accepts_a_right_one(served: Served, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    page.goto(f"{served.url}/")
    page.wait_for_selector("body[data-state=login]")
    page.fill("#token-input", "not-a-token")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('unknown token')")
    assert page.is_hidden("#dashboard")
    page.fill("#token-input", "tok_blog")
    page.click("#login-form button[type=submit]")
    _ready(page)
    assert page.is_visible("#dashboard")
    assert page.eval_on_selector("#f-app", "s => [...s.options].map(o => o.value)") == ["", "other-blog"]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing overflows sideways on a phone
    _shot(page, "phone")
