"""The dashboard's rollups give the same numbers as SQL over the role's own rows.

Every expected value here is computed by a plain SQL statement over the role's locked views
(what the dashboard computed per call before the rollups), for several roles and filters.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from clicklake.models.funnel import Step, funnel
from clicklake.query.access import Role, authenticate
from clicklake.query.engine import parquet_relation, quote_ident
from clicklake.query.secure import SecureQueries, SnapshotCache
from clicklake.web.dashboard import DIMENSIONS, Dashboard, Filters
from clicklake.web.funnel_index import FunnelIndex, FunnelQuery
from tests.web.fixtures import END, Lake

LAST = END.date()
FILTERS = [
    Filters(LAST - timedelta(days=6), LAST),
    Filters(LAST - timedelta(days=2), LAST - timedelta(days=2)),
    Filters(LAST - timedelta(days=6), LAST, channel="Organic Search"),
    Filters(LAST - timedelta(days=6), LAST, device="mobile"),
    Filters(LAST - timedelta(days=6), LAST, channel="(none)"),
    Filters(LAST - timedelta(days=30), LAST + timedelta(days=3)),
]


def _sql(q: SecureQueries, role: Role, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return list(q.run(role, sql, params).table.to_pylist())


def _write_resent_copy(t: pa.Table, later: timedelta, path: Path) -> str:
    """A client's resent copy of the events ``t`` as a data file at ``path``: received a second
    earlier (so it is the copy that counts), timed ``later`` and from another country."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for name, value in (
        ("collector_tstamp", pc.subtract(t["collector_tstamp"], pa.scalar(timedelta(seconds=1)))),
        ("derived_tstamp", pc.add(t["derived_tstamp"], pa.scalar(later))),
        ("geo_country", pa.array(["ZZ"] * t.num_rows, t.schema.field("geo_country").type)),
    ):
        t = t.set_column(t.schema.get_field_index(name), name, value)
    pq.write_table(t, path)
    return str(path)


def _close(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    # NaN (DuckDB's 0.0 / 0) is null in JSON, as the API sends it.
    b = {k: None if isinstance(v, float) and v != v else v for k, v in b.items()}
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] == b[k], k
            continue
        if isinstance(b[k], float) or isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], abs=1e-9), k
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def dash(lake: Lake) -> tuple[Dashboard, SecureQueries]:
    settings = lake.settings.model_copy(
        update={"api": lake.settings.api.model_copy(update={"cache_entries": 0})}
    )
    q = SecureQueries(settings, SnapshotCache(settings))
    return Dashboard(settings, q), q


ROLES = ["tok_shop", "tok_pii", "tok_admin", "tok_blog"]


@pytest.mark.parametrize("token", ROLES)
def test_kpis_timeseries_and_breakdowns_equal_sql(
    lake: Lake, dash: tuple[Dashboard, SecureQueries], token: str
) -> None:
    d, q = dash
    role = authenticate(lake.settings, token)
    checked = 0
    for f in [*FILTERS, Filters(LAST - timedelta(days=6), LAST, app="demo-shop")]:
        if f.app is not None and not role.sees_app(f.app):
            continue
        where, params = f.where("session_date")
        exp = _sql(
            q,
            role,
            f"""SELECT count(DISTINCT user_key) AS users, count(*) AS sessions,
                CAST(coalesce(sum(page_views), 0) AS BIGINT) AS page_views,
                coalesce(avg(CASE WHEN is_bounce THEN 1.0 ELSE 0.0 END), 0.0) AS bounce_rate,
                coalesce(avg(CASE WHEN is_engaged THEN 1.0 ELSE 0.0 END), 0.0) AS engagement_rate,
                CAST(coalesce(sum(cv_order_volume), 0) AS BIGINT) AS conversions,
                coalesce(avg(CASE WHEN cv_order_converted THEN 1.0 ELSE 0.0 END), 0.0) AS conversion_rate,
                CAST(coalesce(sum(cv_order_value), 0.0) AS DOUBLE) AS revenue,
                coalesce(avg(duration_s), 0.0) AS avg_session_duration_s
            FROM sessions WHERE {where}""",
            params,
        )[0]
        got = d.kpis(role, f)["current"]
        _close({k: got[k] for k in exp}, {k: float(v) if isinstance(v, float) else v for k, v in exp.items()})
        checked += exp["sessions"]

        points = d.timeseries(role, f)["points"]
        exp_points = _sql(
            q,
            role,
            f"""SELECT CAST(session_date AS VARCHAR) AS t, count(DISTINCT user_key) AS users, count(*) AS sessions,
                CAST(coalesce(sum(page_views), 0) AS BIGINT) AS page_views,
                avg(CASE WHEN is_bounce THEN 1.0 ELSE 0.0 END) AS bounce_rate,
                avg(CASE WHEN cv_order_converted THEN 1.0 ELSE 0.0 END) AS conversion_rate,
                CAST(coalesce(sum(cv_order_volume), 0) AS BIGINT) AS conversions,
                CAST(coalesce(sum(cv_order_value), 0.0) AS DOUBLE) AS revenue
            FROM sessions WHERE {where} GROUP BY 1 ORDER BY 1""",
            params,
        )
        assert len(points) == len(exp_points)
        for a, b in zip(points, exp_points, strict=True):
            _close(a, b)

        for dim, col in DIMENSIONS.items():
            rows = d.breakdown(role, f, dim, 5)["rows"]
            exp_rows = _sql(
                q,
                role,
                f"""SELECT coalesce(CAST({quote_ident(col)} AS VARCHAR), '(none)') AS value, count(*) AS sessions,
                    count(DISTINCT user_key) AS users,
                    avg(CASE WHEN is_bounce THEN 1.0 ELSE 0.0 END) AS bounce_rate,
                    avg(CASE WHEN cv_order_converted THEN 1.0 ELSE 0.0 END) AS conversion_rate,
                    CAST(coalesce(sum(cv_order_value), 0.0) AS DOUBLE) AS revenue
                FROM sessions WHERE {where} GROUP BY 1 ORDER BY sessions DESC, value LIMIT 5""",
                params,
            )
            assert len(rows) == len(exp_rows), dim
            for a, b in zip(rows, exp_rows, strict=True):
                _close(a, b)
    assert checked > 0


@pytest.mark.parametrize("token", ["tok_shop", "tok_admin"])
def test_pages_equal_sql(lake: Lake, dash: tuple[Dashboard, SecureQueries], token: str) -> None:
    d, q = dash
    role = authenticate(lake.settings, token)
    for f in FILTERS:
        pv_where, pv_params = f.where("page_view_date")
        s_where, s_params = f.where("session_date")
        # sessions: those whose first view of the page falls in the period (see Dashboard.pages).
        exp = _sql(
            q,
            role,
            f"""WITH firsts AS (
                SELECT *, row_number() OVER (PARTITION BY session_id, page_path_clean
                    ORDER BY page_view_in_session_index, page_view_id) = 1 AS first_view
                FROM page_views
            ), pv AS (
                SELECT page_path_clean AS page, count(*) AS views, count(*) FILTER (WHERE first_view) AS sessions,
                    avg(engaged_time_s) AS avg_engaged_time_s
                FROM firsts WHERE {pv_where} GROUP BY 1
            ), ex AS (
                SELECT exit_page_path AS page, count(*) AS exits FROM sessions
                WHERE {s_where} AND exit_page_path IS NOT NULL GROUP BY 1
            ), en AS (
                SELECT landing_page_path AS page, count(*) AS entrances FROM sessions
                WHERE {s_where} AND landing_page_path IS NOT NULL GROUP BY 1
            )
            SELECT pv.page, pv.views, pv.sessions, coalesce(en.entrances, 0) AS entrances,
                coalesce(ex.exits, 0) AS exits, coalesce(ex.exits, 0) / pv.views AS exit_rate, pv.avg_engaged_time_s
            FROM pv LEFT JOIN ex ON ex.page IS NOT DISTINCT FROM pv.page
                LEFT JOIN en ON en.page IS NOT DISTINCT FROM pv.page
            ORDER BY pv.views DESC, pv.page LIMIT 15""",
            [*pv_params, *s_params, *s_params],
        )
        got = d.pages(role, f, 15)["pages"]
        assert len(got) == len(exp)
        for a, b in zip(got, exp, strict=True):
            _close(a, b)


FUNNELS: list[tuple[list[str], str, str | None, float]] = [
    (["Product Viewed", "Product Added", "Order Completed"], "strict", None, 3600.0),
    (["Product Viewed", "Product Added", "Order Completed"], "any", "channel", 86400.0),
    (["Order Completed", "Product Viewed"], "strict", "country", 86400.0),
    (["@^/products?/", "Product Added"], "strict", "device", 7200.0),
    (["Page Ping", "@(checkout|cart)"], "any", None, 600.0),
    # A window past the pieces' horizon: the walk over every entity.
    (["Product Viewed", "Order Completed"], "strict", "channel", 8 * 86400.0),
]


@pytest.mark.parametrize("token", ["tok_shop", "tok_admin", "tok_blog"])
def test_funnel_index_equals_the_sql_funnel(
    lake: Lake, dash: tuple[Dashboard, SecureQueries], token: str
) -> None:
    from clicklake.web.dashboard import FUNNEL_BREAKDOWNS

    d, q = dash
    role = authenticate(lake.settings, token)
    nonzero = 0
    for f in (FILTERS[0], FILTERS[1], FILTERS[5]):
        for steps, order, breakdown, window in FUNNELS:
            got = d.funnel(role, f, steps, window, order, breakdown)["steps"]
            parsed = [Step(event=e or None, path=p or None) for e, _, p in (s.partition("@") for s in steps)]
            with q.cursor(role) as cur:
                exp = funnel(
                    lake.settings,
                    parsed,
                    window,
                    order=order,
                    breakdown=FUNNEL_BREAKDOWNS[breakdown] if breakdown else None,
                    start=datetime.combine(f.start, datetime.min.time(), UTC),
                    end=datetime.combine(f.end + timedelta(days=1), datetime.min.time(), UTC),
                    con=cur,
                ).to_pylist()
            if breakdown:
                for r in exp:
                    r["breakdown"] = r.pop(FUNNEL_BREAKDOWNS[breakdown])
            assert len(got) == len(exp), (steps, order, breakdown)
            for a, b in zip(got, exp, strict=True):
                _close(a, b)
            nonzero += sum(r["entities"] for r in got)
    assert nonzero > 0


def test_funnel_index_follows_added_and_removed_files(lake: Lake, tmp_path: Path) -> None:
    # Snapshots that add files, then one that drops some (as compaction or retention would),
    # then one whose added files resend events already held: each copy is collected a second
    # earlier than its original (so the copy is the one that counts), is derived 50 minutes
    # later and names another country, so a funnel that kept the wrong copy would differ.
    import duckdb
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    state = SnapshotCache(lake.settings).states()["events"]
    columns = {c for c, _ in state.columns}
    steps = [Step(event="Product Viewed"), Step(event="Product Added"), Step(event="Order Completed")]
    # Page views and pings, which bots send too.
    bot_steps = [Step(event="Home"), Step(event="Page Ping"), Step(event="Product")]
    countries: set[str | None] = set()
    start = datetime.combine(LAST - timedelta(days=6), datetime.min.time(), UTC)
    end = datetime.combine(LAST + timedelta(days=1), datetime.min.time(), UTC)
    index = FunnelIndex(1)
    n = len(state.paths)
    schema = None
    copies: list[str] = []
    copy_days: list[int | None] = []
    for i in range(n):
        t = pq.read_table(state.paths[i])
        t = t.filter(pc.less(pc.hour(t["derived_tstamp"]), 22))
        if t.num_rows == 0 or i % 2:
            continue
        copies.append(_write_resent_copy(t, timedelta(minutes=50), tmp_path / f"copy-{i}.parquet"))
        copy_days.append(state.days[i])
    assert copies
    snapshots = [
        ([state.paths[i] for i in keep], [state.days[i] for i in keep])
        for keep in (range(0, n, 2), range(n), range(1, n, 3))
    ]
    snapshots.append(([*state.paths, *copies], [*state.days, *copy_days]))
    # And one where some files are replaced by versions in which every other event is a bot's,
    # so entities have both bot and non-bot rows.
    mixed = list(state.paths)
    for i in range(0, n, 3):
        t = pq.read_table(state.paths[i])
        flags = pa.array([j % 2 == 0 for j in range(t.num_rows)], t.schema.field("is_bot").type)
        t = t.set_column(t.schema.get_field_index("is_bot"), "is_bot", flags)
        mixed[i] = str(tmp_path / f"mixed-{i}.parquet")
        pq.write_table(t, mixed[i])
    snapshots.append((mixed, list(state.days)))
    repeated = 0
    for paths, days in snapshots:
        assert index.sync(paths, days, columns)
        repeated = max(repeated, len(index.repeated_ids()))
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        if schema is None:
            from clicklake.lakehouse.catalog import open_catalog
            from clicklake.lakehouse.catalog import table_id as tid

            schema = (
                open_catalog(lake.settings, write=False)
                .load_table(tid(lake.settings, "events"))
                .schema()
                .as_arrow()
            )
        con.execute(f"CREATE VIEW events AS {parquet_relation(con, paths, schema)}")
        # Bots left out (the default) and counted; all apps and one app.
        for bots in (False, True):
            models = lake.settings.models.model_copy(update={"include_bots": bots})
            settings = lake.settings.model_copy(update={"models": models})
            for app in (None, "demo-shop"):
                for these in (steps, bot_steps):
                    got = index.funnel(
                        LAST - timedelta(days=6),
                        LAST,
                        FunnelQuery.of(these, 3600.0, "strict", "geo_country", None, app, bots),
                    )
                    exp = funnel(
                        settings,
                        these,
                        3600.0,
                        breakdown="geo_country",
                        start=start,
                        end=end,
                        app_id=app,
                        con=con,
                    ).to_pylist()
                    assert len(got) == len(exp), (bots, app, these)
                    for a, b in zip(got, exp, strict=True):
                        _close(a, b)
                    if these is steps and app is None and not bots:
                        countries |= {r["geo_country"] for r in got}
        con.close()
    assert repeated > 0
    assert "ZZ" in countries
    # The bot/non-bot split within a name is exercised: some step name has rows of both.
    days_held = index.rows(LAST - timedelta(days=6), LAST)
    assert any(
        day._names[s.event][0] < day._names[s.event][1] < day._names[s.event][2]
        for day in days_held
        for s in bot_steps
        if s.event in day._names
    )


def test_live_reads_only_files_with_recent_collector_times(
    lake: Lake, dash: tuple[Dashboard, SecureQueries]
) -> None:
    d, q = dash
    state = SnapshotCache(lake.settings).states()["events"]
    assert state.collector_max_us and all(h is not None for h in state.collector_max_us)
    newest = max(h for h in state.collector_max_us if h is not None)
    after = datetime.fromtimestamp(newest / 1e6 + 1, UTC)
    empty = state.pruned(after)
    assert empty is not None and "read_parquet" not in empty  # no file is opened
    before = datetime.fromtimestamp(newest / 1e6 - 1, UTC)
    some = state.pruned(before)
    assert some is None or "read_parquet" in some
    assert state.none_since(after) and not state.none_since(before)
    # The lake's events were collected in March 2026: nothing in the last 30 minutes.
    role = authenticate(lake.settings, "tok_admin")
    live = d.live(role, None, 30)
    assert live["per_minute"] == [] and live["recent"] == []
    # And what the pruned read finds equals the full read.
    since = datetime.fromtimestamp(newest / 1e6 - 3600, UTC)
    with q.cursor(role, narrow={"events": since}) as cur:
        pruned = cur.sql("SELECT count(*) FROM events WHERE collector_tstamp >= ?", params=[since]).fetchall()
    with q.cursor(role) as cur:
        full = cur.sql("SELECT count(*) FROM events WHERE collector_tstamp >= ?", params=[since]).fetchall()
    assert pruned == full and full[0][0] > 0
    # A window that reaches back to the last hour of data: the live counts are those rows.
    minutes = int((datetime.now(UTC) - since).total_seconds() // 60)
    live = d.live(role, None, minutes)
    with q.cursor(role) as cur:
        expected = cur.sql(
            "SELECT count(*) FROM events WHERE collector_tstamp >= ?",
            params=[datetime.fromisoformat(live["since"])],
        ).fetchall()[0][0]
    assert expected > 0 and sum(r["events"] for r in live["per_minute"]) == expected
    assert len(live["recent"]) == min(20, expected)


def test_health_from_the_rollup_equals_sql(lake: Lake, dash: tuple[Dashboard, SecureQueries]) -> None:
    d, q = dash
    for token in ("tok_shop", "tok_pii", "tok_admin"):
        role = authenticate(lake.settings, token)
        f = Filters(LAST - timedelta(days=6), LAST)
        got = d.health(role, f)
        exp = _sql(
            q,
            role,
            """SELECT stage, error_type, count(*) AS failed FROM failed_events
            WHERE CAST(collector_tstamp AS DATE) BETWEEN ? AND ? GROUP BY 1, 2""",
            [f.start, f.end],
        )
        assert {(r["stage"], r["error_type"]): r["failed"] for r in got["failed_by_reason"]} == {
            (r["stage"], r["error_type"]): r["failed"] for r in exp
        }
        assert got["failed_total"] > 0
        for r in got["failed_by_reason"]:
            latest = _sql(
                q,
                role,
                """SELECT event_id, left(CAST(raw AS VARCHAR), 300) AS raw FROM failed_events
                WHERE CAST(collector_tstamp AS DATE) BETWEEN ? AND ? AND stage = ? AND error_type = ?
                ORDER BY collector_tstamp DESC LIMIT 3""",
                [f.start, f.end, r["stage"], r["error_type"]],
            )
            assert [x["raw"] for x in r["examples"]] == [x["raw"] for x in latest]
            assert (role.pii and any(x["raw"] for x in r["examples"])) or all(
                x["raw"] is None for x in r["examples"]
            )


def test_funnel_index_holds_only_the_last_days_and_older_ranges_read_the_files(lake: Lake) -> None:
    api = lake.settings.api.model_copy(update={"cache_entries": 0, "funnel_index_days": 3})
    settings = lake.settings.model_copy(update={"api": api})
    q = SecureQueries(settings, SnapshotCache(settings))
    d = Dashboard(settings, q)
    role = authenticate(settings, "tok_admin")
    steps = ["Product Viewed", "Product Added", "Order Completed"]
    parsed = [Step(event=s) for s in steps]
    for f in (Filters(LAST - timedelta(days=1), LAST), Filters(LAST - timedelta(days=6), LAST)):
        got = d.funnel(role, f, steps, 86400.0, "strict", "channel")["steps"]
        with q.cursor(role) as cur:
            exp = funnel(
                settings,
                parsed,
                86400.0,
                breakdown="default_channel_group",
                start=datetime.combine(f.start, datetime.min.time(), UTC),
                end=datetime.combine(f.end + timedelta(days=1), datetime.min.time(), UTC),
                con=cur,
            ).to_pylist()
        for r in exp:
            r["breakdown"] = r.pop("default_channel_group")
        assert len(got) == len(exp) > 0
        for a, b in zip(got, exp, strict=True):
            _close(a, b)
    assert 0 < len(d._funnel_index._days) <= 3


@pytest.mark.parametrize("entries", [0, 64])
def test_identical_concurrent_calls_compute_once_with_or_without_the_cache(lake: Lake, entries: int) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    api = lake.settings.api.model_copy(update={"cache_entries": entries})
    settings = lake.settings.model_copy(update={"api": api})
    d = Dashboard(settings, SecureQueries(settings, SnapshotCache(settings)))
    role = authenticate(settings, "tok_admin")
    release = threading.Event()
    calls: list[int] = []

    def slow() -> dict[str, int]:
        calls.append(1)
        assert release.wait(30)
        return {"n": len(calls)}

    with ThreadPoolExecutor(6) as pool:
        waiting = [pool.submit(d.cached, role, "probe", (1,), slow) for _ in range(6)]
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the other five are waiting on the first by now
        release.set()
        answers = [w.result(timeout=30) for w in waiting]
    assert answers == [{"n": 1}] * 6 and len(calls) == 1
    # Afterwards: remembered with a cache, computed again without one.
    assert d.cached(role, "probe", (1,), slow) == ({"n": 1} if entries else {"n": 2})

    # A failed computation is not handed to the callers that waited: they compute again.
    failing = threading.Event()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            assert failing.wait(30)
            raise RuntimeError("first attempt fails")
        return "ok"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(d.cached, role, "flaky", (), flaky)
        while not attempts:
            time.sleep(0.01)
        second = pool.submit(d.cached, role, "flaky", (), flaky)
        time.sleep(0.2)
        failing.set()
        with pytest.raises(RuntimeError):
            first.result(timeout=30)
        assert second.result(timeout=30) == "ok"
    assert len(attempts) == 2


def test_funnel_pieces_equal_the_walk_for_every_range_and_are_built_once(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The per-day pieces against the walk over every entity, for every range of the held days,
    # over snapshots that change days under remembered pieces and that resend events (copies
    # collected a second earlier and derived 20 minutes later, on the same day).
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from clicklake.web import funnel_index

    built: list[int] = []
    real_build = funnel_index._build_piece

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(funnel_index, "_build_piece", counted)
    state = SnapshotCache(lake.settings).states()["events"]
    columns = {c for c, _ in state.columns}
    n = len(state.paths)
    copies: list[str] = []
    copy_days: list[int | None] = []
    for i in range(0, n, 2):
        t = pq.read_table(state.paths[i])
        t = t.filter(pc.less(pc.hour(t["derived_tstamp"]), 23))
        copies.append(_write_resent_copy(t, timedelta(minutes=20), tmp_path / f"copy-{i}.parquet"))
        copy_days.append(state.days[i])
    snapshots = [
        ([state.paths[i] for i in range(0, n, 2)], [state.days[i] for i in range(0, n, 2)]),
        (list(state.paths), list(state.days)),
        ([*state.paths, *copies], [*state.days, *copy_days]),
    ]
    funnels = [
        *FUNNELS,
        ([Step(event="Home").name(), "Product Viewed", "Home"], "any", "device", 3 * 86400.0),
    ]
    index = FunnelIndex(1)
    first_day = LAST - timedelta(days=7)
    ranges = [
        (first_day + timedelta(days=a), first_day + timedelta(days=b)) for a in range(9) for b in range(a, 9)
    ]
    column = {"channel": "default_channel_group", "device": "dvce_class", "country": "geo_country"}
    for paths, days in snapshots:
        assert index.sync(paths, days, columns)
        for steps, order, breakdown, window in funnels:
            parsed = [Step(event=e or None, path=p or None) for e, _, p in (s.partition("@") for s in steps)]
            bd = column[breakdown] if breakdown else None
            for bots in (False, True):
                for apps, app in ((None, None), (["demo-shop"], None), (None, "other-blog")):
                    for first, last in ranges:
                        query = FunnelQuery.of(parsed, window, order, bd, apps, app, bots)
                        got = index.funnel(first, last, query)
                        exp = funnel_index.run_funnel(
                            index.rows(first, last),
                            len(index._ent_ids),
                            query,
                            datetime.combine(first, datetime.min.time(), UTC),
                            datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC),
                        )
                        assert got == exp, (steps, order, breakdown, bots, apps, app, first, last)
        # One funnel over every range: each day's piece is built at most once, then only read.
        parsed = [Step(event="Product Viewed"), Step(event="Product Added")]
        for sweep in range(2):
            before = len(built)
            for first, last in ranges:
                index.funnel(first, last, FunnelQuery.of(parsed, 3600.0, "strict"))
            assert len(built) - before <= (len(index.rows(ranges[0][0], ranges[-1][1])) if sweep == 0 else 0)
    assert built
    assert len(index.repeated_ids()) > 0


def test_funnels_that_differ_in_channel_or_device_only_are_one_answer(lake: Lake) -> None:
    # The funnel does not read the sessions' channel and device filters the page sends along.
    settings = lake.settings.model_copy(
        update={"api": lake.settings.api.model_copy(update={"cache_entries": 64})}
    )
    d = Dashboard(settings, SecureQueries(settings, SnapshotCache(settings)))
    role = authenticate(settings, "tok_admin")
    steps = ["Product Viewed", "Product Added"]
    plain = d.funnel(role, FILTERS[0], steps, 3600.0)
    assert plain["steps"]
    computed = len(d._cache)
    for f in (FILTERS[2], FILTERS[3], FILTERS[4]):
        assert d.funnel(role, f, steps, 3600.0) == plain
    assert len(d._cache) == computed
