"""The JSON API over HTTP: numbers per role, cross-tenant isolation, errors, the audit trail."""

from __future__ import annotations

import time

import pytest

from clicklake.query.access import authenticate
from clicklake.query.secure import SecureQueries
from tests.web.fixtures import END, Served, day

GET_ENDPOINTS = [
    "me",
    "filters",
    "kpis",
    "timeseries",
    "pages",
    "breakdown?dimension=channel",
    "live",
    "health",
]


def _range(served: Served) -> str:
    return f"start={day(END, -6)}&end={day(END)}"


def test_every_dashboard_call_answers(served: Served) -> None:
    with served.client("tok_shop") as c:
        for name in GET_ENDPOINTS:
            r = c.get(f"/api/v1/{name}")
            assert r.status_code == 200, (name, r.text)
        r = c.get("/api/v1/funnel", params={"step": ["Product Viewed", "Order Completed"], "window": "7200"})
        assert r.status_code == 200, r.text
        steps = r.json()["steps"]
        assert [s["step_name"] for s in steps] == ["Product Viewed", "Order Completed"]
        assert steps[0]["entities"] >= steps[1]["entities"]


def test_kpis_equal_sql_over_the_role_rows(served: Served) -> None:
    rng = _range(served)
    admin = authenticate(served.settings, "tok_admin")
    q = SecureQueries(served.settings)
    for token, app in (("tok_shop", "demo-shop"), ("tok_blog", "other-blog")):
        with served.client(token) as c:
            kpis = c.get(f"/api/v1/kpis?{rng}").json()
        start, end = kpis["period"]["start"], kpis["period"]["end"]
        expected = q.run(
            admin,
            "SELECT sum(sessions) AS sessions, sum(page_views) AS page_views, sum(bounces) AS bounces, "
            "sum(revenue) AS revenue FROM daily_kpis WHERE app_id = ? AND date BETWEEN ? AND ?",
            [app, start, end],
        ).table.to_pylist()[0]
        cur = kpis["current"]
        assert cur["sessions"] == expected["sessions"] > 0
        assert cur["page_views"] == expected["page_views"]
        assert cur["bounce_rate"] == pytest.approx(float(expected["bounces"]) / float(expected["sessions"]))
        assert cur["revenue"] == pytest.approx(float(expected["revenue"] or 0))
        # The previous period is the 7 days before.
        assert kpis["previous_period"]["end"] < start


def test_filters_change_the_numbers(served: Served) -> None:
    rng = _range(served)
    with served.client("tok_shop") as c:
        total = c.get(f"/api/v1/kpis?{rng}").json()["current"]["sessions"]
        channels = c.get(f"/api/v1/breakdown?dimension=channel&{rng}").json()["rows"]
        by_channel = {r["value"]: r["sessions"] for r in channels}
        assert sum(by_channel.values()) == total
        top = channels[0]["value"]
        assert (
            c.get(f"/api/v1/kpis?{rng}&channel={top}").json()["current"]["sessions"]
            == by_channel[top]
            < total
        )
        devices = c.get(f"/api/v1/breakdown?dimension=device&{rng}").json()["rows"]
        first = devices[0]
        assert (
            c.get(f"/api/v1/kpis?{rng}&device={first['value']}").json()["current"]["sessions"]
            == first["sessions"]
        )
        pages = c.get(f"/api/v1/pages?{rng}&limit=5").json()["pages"]
        assert len(pages) == 5 and all(0 <= p["exit_rate"] <= 1 for p in pages)


def test_cross_tenant_reads_are_refused_or_empty(served: Served) -> None:
    with served.client("tok_shop") as c:
        assert c.get("/api/v1/kpis?app=other-blog").status_code == 403
        assert c.get("/api/v1/live?app=other-blog").status_code == 403
        assert c.get("/api/v1/filters").json()["apps"] == ["demo-shop"]
        for sql in (
            "SELECT DISTINCT app_id FROM events",
            "SELECT app_id FROM sessions UNION SELECT app_id FROM daily_kpis",
            "WITH x AS (SELECT * FROM page_views) SELECT DISTINCT app_id FROM x",
            "SELECT DISTINCT app_id FROM (SELECT app_id FROM users WHERE app_id <> 'demo-shop' OR true)",
        ):
            r = c.post("/api/v1/sql", json={"sql": sql})
            assert r.status_code == 200, r.text
            assert {row[0] for row in r.json()["rows"]} == {"demo-shop"}, sql
        r = c.post("/api/v1/sql", json={"sql": "SELECT * FROM information_schema.tables"})
        assert r.status_code == 403 and "qualified" in r.json()["message"]
    with served.client("tok_blog") as c:
        assert c.get("/api/v1/filters").json()["apps"] == ["other-blog"]
        r = c.post("/api/v1/sql", json={"sql": "SELECT 1"})
        assert r.status_code == 403 and "may not run SQL" in r.json()["message"]


ATTACKS = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "ATTACH '/tmp/x.db'",
    "COPY (SELECT * FROM events) TO '/tmp/leak.csv'",
    "INSTALL httpfs",
    "SET memory_limit = '100GB'",
    "PRAGMA database_list",
    "SELECT 1; DROP VIEW events",
]


def test_attacks_are_denied_audited_and_the_server_stays_up(served: Served) -> None:
    with served.client("tok_shop") as c:
        for sql in ATTACKS:
            r = c.post("/api/v1/sql", json={"sql": sql})
            assert r.status_code == 403, (sql, r.text)
            assert r.json()["error"] == "forbidden" and r.json()["message"]
        assert c.post("/api/v1/sql", content=b"not json").status_code == 400
        assert c.post("/api/v1/sql", json={"sql": "SELEC nothing"}).status_code == 400
        assert c.get("/api/v1/sql").status_code == 405
        assert c.get("/api/v1/kpis?start=yesterday").status_code == 400
        assert c.get("/api/v1/breakdown?dimension=shoe_size").status_code == 400
        assert c.get("/api/v1/funnel?step=A@(").status_code == 400
        assert c.get("/api/v1/nothing").status_code == 404
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer tok_expired"},
        {"Authorization": "Basic dG9r"},
    ):
        with served.client() as c:
            r = c.get("/api/v1/kpis", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    with served.client("tok_shop") as c:
        assert c.get("/api/v1/me").json()["name"] == "shop-analyst"
    # Every one of those calls is in audit_log (flushed every 0.2 s; read as admin).
    sql = "SELECT statement, allowed, status, reason, token_name, endpoint FROM audit_log WHERE kind = 'sql' OR status = 401"
    with served.client("tok_admin") as c:
        for _ in range(300):
            rows = c.post("/api/v1/sql", json={"sql": sql}).json()["rows"]
            unauthorized = {row[4] for row in rows if row[2] == 401 and row[5] == "GET /api/v1/kpis"}
            if set(ATTACKS) <= {row[0] for row in rows} and unauthorized >= {"(none)", "(unknown)"}:
                break
            time.sleep(0.1)
    denied = {row[0]: row for row in rows if row[0] in ATTACKS}
    assert set(denied) == set(ATTACKS)
    assert all(
        row[1] is False and row[2] == 403 and row[3] and row[4] == "shop-analyst" for row in denied.values()
    )
    assert unauthorized >= {"(none)", "(unknown)"}


def test_openapi_spec_lists_every_endpoint(served: Served) -> None:
    with served.client() as c:
        spec = c.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    paths = {p.removeprefix("/api/v1/") for p in spec["paths"]}
    assert paths == {
        "me",
        "filters",
        "kpis",
        "timeseries",
        "pages",
        "breakdown",
        "funnel",
        "live",
        "health",
        "sql",
    }


def test_dashboard_page_and_assets_are_served(served: Served) -> None:
    with served.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for asset in (
            "/static/app.js",
            "/static/chart.umd.min.js",
            "/static/style.css",
            "/static/chart.js.LICENSE.md",
        ):
            assert c.get(asset).status_code == 200, asset
        assert c.get("/static/../config.py").status_code == 404


def test_funnel_and_failures_equal_the_unpruned_computation(served: Served) -> None:
    # The API reads only the files of the asked days (and masked ids): same counts as a full read.
    from datetime import UTC, datetime, timedelta

    from clicklake.models.funnel import funnel

    start, end = END.date() - timedelta(days=6), END.date()
    steps = ["Product Viewed", "Product Added", "Order Completed"]
    with served.client("tok_shop") as c:
        api = c.get(
            "/api/v1/funnel",
            params={"step": steps, "window": "86400", "start": start.isoformat(), "end": end.isoformat()},
        ).json()["steps"]
        health = c.get(f"/api/v1/health?start={start}&end={end}").json()
    full = funnel(
        served.settings,
        steps,
        86400,
        start=datetime.combine(start, datetime.min.time(), UTC),
        end=datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC),
        app_id="demo-shop",
    ).to_pylist()
    assert [s["entities"] for s in api] == [s["entities"] for s in full]
    assert full[0]["entities"] > 0
    admin = authenticate(served.settings, "tok_admin")
    expected = SecureQueries(served.settings).run(
        admin,
        "SELECT count(*) AS n FROM failed_events WHERE app_id = 'demo-shop' "
        "AND CAST(collector_tstamp AS DATE) BETWEEN ? AND ?",
        [start, end],
    )
    assert health["failed_total"] == expected.table.column("n")[0].as_py() > 0
    assert all(ex["raw"] is None for r in health["failed_by_reason"] for ex in r["examples"])  # masked


def test_sql_results_of_any_type_are_json(served: Served) -> None:
    sql = (
        "SELECT 170141183460469231731687303715884105727::HUGEINT AS big, 1.5::DECIMAL(10, 2) AS dec, "
        "INTERVAL 3 DAY AS iv, 'x'::BLOB AS b, [1, 2] AS l, {'a': 1} AS s, 'nan'::DOUBLE AS nan, "
        "DATE '2024-01-01' AS d, uuid() AS u"
    )
    with served.client("tok_shop") as c:
        r = c.post("/api/v1/sql", json={"sql": sql})
    assert r.status_code == 200, r.text
    row = r.json()["rows"][0]
    assert str(row[0]) == "170141183460469231731687303715884105727" and row[4] == [1, 2]
