"""Golden tests of the model definitions, with expected values worked out by hand.

All times are UTC on 2024-05-01 unless written otherwise; models.timezone is UTC, the session
gap 30 min, heartbeat 10 s, page_ping_min_visit_s 10 s, single_pageview bounces (unless a test
says otherwise), URL rule ``^/users/\\d+$ -> /users/:id``.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from clicklake.config import Settings, load_settings
from clicklake.lakehouse.catalog import ensure_tables, ingest_tables, open_catalog
from clicklake.models import build_models
from clicklake.models.funnel import Step, funnel
from clicklake.query import run_sql
from tests.models.fixtures import ev, rows_to_arrow

BOT = pa.schema([pa.field("is_bot", pa.bool_())])
RULES = [{"pattern": r"^/users/\d+$", "alias": "/users/:id"}]


def _settings(tmp_path: Path, **models: Any) -> Settings:
    s = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
    # Keys not in ModelsSettings yet are read with getattr; give them through a copy.
    return s.model_copy(update={"models": s.models.model_copy(update={"url_rules": RULES, **models})})


def _append(settings: Settings, rows: list[dict[str, Any]]) -> None:
    catalog = open_catalog(settings)
    table = ensure_tables(catalog, settings, ingest_tables(settings))["events"]
    if "is_bot" not in table.schema().column_names:
        with table.update_schema() as update:
            update.union_by_name(BOT)
    for r in rows:
        r.setdefault("is_bot", False)
    table.append(rows_to_arrow(rows, BOT))


def _sessions(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in run_sql(settings, "SELECT * FROM sessions ORDER BY start_tstamp").to_pylist():
        out.setdefault(r["device_key"], []).append(r)
    return out


def batch1() -> list[dict[str, Any]]:
    return [
        # a1: two page views and three pings (10:10:12 and 10:10:15 share the bucket
        # floor(t/10) = ...:10:1x, 10:10:25 is a second one): engaged = 10 * (2 - 1) + 10 = 20 s,
        # absolute = 25 s. A resend of e2 collected later is a duplicate and is dropped.
        ev("e1", "2024-05-01 10:00:00", anon="a1", path="/"),
        ev("e2", "2024-05-01 10:10:00", anon="a1", path="/users/1"),
        ev("e2", "2024-05-01 10:10:03", anon="a1", path="/users/1", collected="2024-05-01 10:12:00"),
        ev("p1", "2024-05-01 10:10:12", anon="a1", type="track", name="Page Ping", path="/users/1"),
        ev("p2", "2024-05-01 10:10:15", anon="a1", type="track", name="Page Ping", path="/users/1"),
        ev("p3", "2024-05-01 10:10:25", anon="a1", type="track", name="Page Ping", path="/users/1"),
        # 10:50 is 39 min 35 s after 10:10:25: a new session.
        ev("e3", "2024-05-01 10:50:00", anon="a1", path="/"),
        # Stray pings two days later: a ping-only session, dropped.
        ev("p4", "2024-05-03 09:00:00", anon="a1", type="track", name="Page Ping", path="/users/1"),
        ev("p5", "2024-05-03 09:00:10", anon="a1", type="track", name="Page Ping", path="/users/1"),
        # a2 across midnight: one session dated 05-01, 900 s (two with split_at_midnight).
        ev("e4", "2024-05-01 23:50:00", anon="a2", path="/a"),
        ev("e5", "2024-05-02 00:05:00", anon="a2", path="/b"),
        # a3: two client session ids five minutes apart: two sessions.
        ev("e6", "2024-05-01 11:00:00", anon="a3", session="cs1"),
        ev("e7", "2024-05-01 11:05:00", anon="a3", session="cs2"),
        # a4: two orders, valued by revenue (30) and by total (20): volume 2, value 50.
        ev("e8", "2024-05-01 12:00:00", anon="a4"),
        ev(
            "o1",
            "2024-05-01 12:01:00",
            anon="a4",
            type="track",
            name="Order Completed",
            props={"revenue": 30},
        ),
        ev("o2", "2024-05-01 12:02:00", anon="a4", type="track", name="Order Completed", props={"total": 20}),
        # a5: 1 page view + a click 30 s later; a6: + a click 5 s later; a7: an order 3 s later.
        ev("e9", "2024-05-01 13:00:00", anon="a5"),
        ev("c1", "2024-05-01 13:00:30", anon="a5", type="track", name="Clicked"),
        ev("e10", "2024-05-01 14:00:00", anon="a6"),
        ev("c2", "2024-05-01 14:00:05", anon="a6", type="track", name="Clicked"),
        ev("e11", "2024-05-01 15:00:00", anon="a7"),
        ev(
            "o3",
            "2024-05-01 15:00:03",
            anon="a7",
            type="track",
            name="Order Completed",
            props={"revenue": 10},
        ),
        # A bot: excluded from every model.
        ev("b1", "2024-05-01 10:00:00", anon="bot", is_bot=True),
    ]


# A late, out-of-order event (collected the next day) at 10:30 bridges a1's two sessions
# (10:10:25 -> 10:30 is 19 min 35 s, 10:30 -> 10:50 is 20 min): one session 10:00 -> 10:50.
LATE = [ev("late", "2024-05-01 10:30:00", anon="a1", path="/users/2", collected="2024-05-02 08:00:00")]


def test_sessions_page_views_and_kpis(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    _append(s, batch1())
    build_models(s)
    got = _sessions(s)
    assert "bot" not in got
    a1 = got["a1"]
    assert [(r["page_views"], r["events"], r["duration_s"], r["is_bounce"]) for r in a1] == [
        (2, 5, 625.0, False),  # 10:00:00 -> 10:10:25; e1, e2, p1, p2, p3
        (1, 1, 0.0, True),
    ]
    assert (a1[0]["engaged_time_s"], a1[0]["landing_page_path"], a1[0]["exit_page_path"]) == (
        20.0,
        "/",
        "/users/:id",
    )
    pv = {r["page_view_id"]: r for r in run_sql(s, "SELECT * FROM page_views").to_pylist()}
    assert (pv["e2"]["engaged_time_s"], pv["e2"]["absolute_time_s"], pv["e2"]["page_path_clean"]) == (
        20.0,
        25.0,
        "/users/:id",
    )
    assert pv["e2"]["page_view_in_session_index"] == 2
    assert len(pv) == 11  # e1 e2 e3 e4 e5 e6 e7 e8 e9 e10 e11 (no bot, no duplicate)
    a2 = got["a2"]
    assert [(r["session_date"], r["duration_s"], r["page_views"]) for r in a2] == [
        (date(2024, 5, 1), 900.0, 2)
    ]
    assert [r["client_session_id"] for r in got["a3"]] == ["cs1", "cs2"]
    a4 = got["a4"][0]
    assert (a4["cv_order_volume"], a4["cv_order_value"], a4["cv_order_converted"]) == (2, 50.0, True)

    _append(s, LATE)
    build_models(s)
    a1 = _sessions(s)["a1"]
    assert [(r["page_views"], r["events"], r["duration_s"], r["exit_page_path"]) for r in a1] == [
        (4, 7, 3000.0, "/")
    ]
    kpis = run_sql(s, "SELECT * FROM daily_kpis ORDER BY date").to_pylist()
    assert [k["date"] for k in kpis] == [date(2024, 5, 1)]
    k = kpis[0]
    # sessions: a1 1, a2 1, a3 2, a4 1, a5 1, a6 1, a7 1 = 8; page views 4+2+2+1+1+1+1 = 12;
    # bounces (< 2 page views): a3 x2, a4, a5, a6, a7 = 6; engaged: a1, a2, a4, a5 (30 s),
    # a7 (order) = 5; orders a4 2 + a7 1 = 3 in 2 sessions, revenue 50 + 10.
    assert (k["sessions"], k["users"], k["new_users"], k["page_views"]) == (8, 7, 7, 12)
    assert (k["bounces"], k["bounce_rate"], k["engaged_sessions"], k["engagement_rate"]) == (
        6,
        0.75,
        5,
        0.625,
    )
    assert (k["conversions"], k["conversion_rate"], k["revenue"]) == (3, 0.25, 60.0)

    incremental = run_sql(s, "SELECT * FROM sessions ORDER BY session_id")
    build_models(s, full_refresh=True)
    assert run_sql(s, "SELECT * FROM sessions ORDER BY session_id").equals(incremental)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # a1 second session, a5 (30 s), a6 (5 s), a7 (order after 3 s)
        ("single_pageview", {"a5": True, "a6": True, "a7": True}),
        ("not_engaged", {"a5": False, "a6": True, "a7": False}),
        ("min_duration", {"a5": False, "a6": True, "a7": True}),
    ],
)
def test_bounce_modes(tmp_path: Path, mode: str, expected: dict[str, bool]) -> None:
    s = _settings(tmp_path, bounce=mode)
    _append(s, batch1())
    build_models(s)
    got = _sessions(s)
    assert {k: got[k][0]["is_bounce"] for k in expected} == expected
    assert got["a2"][0]["is_bounce"] is False  # 2 page views, 900 s
    assert got["a1"][1]["is_bounce"] is True  # 1 page view, 0 s


def test_midnight_split(tmp_path: Path) -> None:
    s = _settings(tmp_path, split_at_midnight=True)
    _append(s, batch1())
    build_models(s)
    a2 = _sessions(s)["a2"]
    assert [(r["session_date"], r["duration_s"]) for r in a2] == [
        (date(2024, 5, 1), 0.0),
        (date(2024, 5, 2), 0.0),
    ]


def test_days_are_local_to_models_timezone(tmp_path: Path) -> None:
    # New York is UTC-4 in May: 2024-05-02 02:30 UTC is 05-01 22:30 there, 04:30 UTC is 00:30
    # on 05-02. Tokyo is UTC+9: 2024-05-01 14:59:59 UTC is 23:59:59 on 05-01 there, 15:00 UTC
    # is 00:00 on 05-02. One visitor per instant, one page view each; each zone's build dates
    # sessions and page views by its own local day (UTC takes the fast path of local_date_sql).
    rows = [
        ev("ny1", "2024-05-02 02:30:00", anon="late"),
        ev("ny2", "2024-05-02 04:30:00", anon="early"),
        ev("ny3", "2024-05-01 14:59:59", anon="tokyo"),  # Tokyo 23:59:59 on 05-01
        ev("ny4", "2024-05-01 15:00:00", anon="tokyo2"),  # Tokyo 00:00 on 05-02
    ]
    dates = {}
    for zone in ("America/New_York", "Asia/Tokyo", "UTC"):
        s = _settings(tmp_path / zone.replace("/", "_"), timezone=zone)
        _append(s, [dict(r) for r in rows])
        build_models(s, full_refresh=True)
        got = _sessions(s)
        pv = run_sql(s, "SELECT page_view_id, page_view_date FROM page_views").to_pylist()
        dates[zone] = {k: v[0]["session_date"] for k, v in got.items()}
        assert {r["page_view_id"]: r["page_view_date"] for r in pv} == {
            "ny1": dates[zone]["late"],
            "ny2": dates[zone]["early"],
            "ny3": dates[zone]["tokyo"],
            "ny4": dates[zone]["tokyo2"],
        }
    d1, d2 = date(2024, 5, 1), date(2024, 5, 2)
    assert dates["America/New_York"] == {"late": d1, "early": d2, "tokyo": d1, "tokyo2": d1}
    assert dates["Asia/Tokyo"] == {"late": d2, "early": d2, "tokyo": d1, "tokyo2": d2}
    assert dates["UTC"] == {"late": d2, "early": d2, "tokyo": d1, "tokyo2": d1}


def test_utc_dates_from_epoch_microseconds_match_at_time_zone() -> None:
    # In UTC the models take the date from the instant's microseconds (no ICU calendar per
    # row); it must agree with AT TIME ZONE at day edges, before 1970 included.
    import duckdb

    from clicklake.models.render import local_date_sql

    con = duckdb.connect()
    con.execute("SET TimeZone = 'America/New_York'")  # the session zone must not matter
    instants = [
        "1969-12-31 23:59:59.999999+00",
        "1970-01-01 00:00:00+00",
        "1900-03-01 00:00:00.000001+00",
        "2024-02-29 23:59:59.999999+00",
        "2024-03-01 00:00:00+00",
        "2024-03-10 06:59:59+00",
        "2038-01-19 03:14:08+00",
    ]
    values = ", ".join(f"(TIMESTAMPTZ '{t}')" for t in instants)
    got = con.execute(
        f"SELECT {local_date_sql('t', 'UTC')}, CAST(t AT TIME ZONE 'UTC' AS DATE) FROM (VALUES {values}) AS v(t)"
    ).fetchall()
    assert [a for a, _ in got] == [b for _, b in got]
    assert [a for a, _ in got][:2] == [date(1969, 12, 31), date(1970, 1, 1)]
    assert "AT TIME ZONE" in local_date_sql("t", "Europe/Paris")


def test_bots_included_when_configured(tmp_path: Path) -> None:
    s = _settings(tmp_path, include_bots=True)
    _append(s, batch1())
    build_models(s)
    assert _sessions(s)["bot"][0]["is_bot"] is True


def test_max_session_length(tmp_path: Path) -> None:
    # A page view every 20 min from 00:00 to 03:00 with a 1 h max length: pieces counted from
    # 00:00 start at 00:00, 01:00, 02:00 and 03:00.
    s = _settings(tmp_path, max_session_length_hours=1.0)
    _append(s, [ev(f"m{i}", f"2024-05-01 0{i // 3}:{(i % 3) * 20:02d}:00", anon="m") for i in range(10)])
    build_models(s)
    assert [r["page_views"] for r in _sessions(s)["m"]] == [3, 3, 3, 1]


def test_session_user_and_anonymous_ids_are_picked_by_time_then_event_id(tmp_path: Path) -> None:
    # One client session (cs9): the first anonymous_id is not at its start (sessions.sql then
    # looks for it past the start rows), and two share its first instant: the smaller event_id
    # wins. The last user_id: two at the last instant, the larger event_id wins.
    s = _settings(tmp_path)
    _append(
        s,
        [
            ev("k1", "2024-05-01 09:00:00", anon=None, user="u0", session="cs9"),
            ev("k3", "2024-05-01 09:05:00", anon="a-late", session="cs9"),
            ev("k2", "2024-05-01 09:05:00", anon="a-first", session="cs9"),
            ev("k4", "2024-05-01 09:10:00", anon="a-first", user="u1", session="cs9"),
            ev("k5", "2024-05-01 09:10:00", anon="a-first", user="u2", session="cs9"),
            # cs8: the anonymous_id at the start, on two start rows: the smaller event_id wins.
            ev("j2", "2024-05-01 10:00:00", anon="b-second", session="cs8"),
            ev("j1", "2024-05-01 10:00:00", anon="b-first", session="cs8", type="track", name="Clicked"),
        ],
    )
    build_models(s)
    rows = run_sql(
        s, "SELECT client_session_id, anonymous_id, user_id, device_key, events FROM sessions"
    ).to_pylist()
    got = {r["client_session_id"]: r for r in rows}
    assert (got["cs9"]["anonymous_id"], got["cs9"]["user_id"], got["cs9"]["events"]) == ("a-first", "u2", 5)
    assert got["cs9"]["device_key"] == "u0"  # of the first event (k1)
    assert (got["cs8"]["anonymous_id"], got["cs8"]["user_id"], got["cs8"]["device_key"]) == (
        "b-first",
        None,
        "b-first",
    )


def test_users_first_touch_from_the_first_stitched_session(tmp_path: Path) -> None:
    # u1 is identified on two devices (ua, ub): three sessions. ua's and ub's first sessions start
    # at the same instant, so the smaller session_id (md5 of app | session key | start in us) is
    # the first; its landing page and referrer are u1's first touch. u2 has one session.
    s = _settings(tmp_path)
    ref = {"page_referrer": "https://news.example/"}
    _append(
        s,
        [
            ev("a1", "2024-05-01 09:00:00", anon="ua", path="/from-a", page_referrer="https://a.example/"),
            ev("a2", "2024-05-01 15:00:00", anon="ua", path="/later", **ref),
            ev("a3", "2024-05-01 15:01:00", anon="ua", user="u1", type="identify"),
            ev("b1", "2024-05-01 09:00:00", anon="ub", path="/from-b", page_referrer="https://b.example/"),
            ev("b2", "2024-05-01 09:02:00", anon="ub", user="u1", type="identify"),
            ev("c1", "2024-05-01 12:00:00", anon="uc", user="u2", path="/c", **ref),
        ],
    )
    build_models(s)
    start_us = 1714554000 * 1_000_000  # 2024-05-01 09:00:00 UTC
    first = min(
        ("ua", "/from-a", "https://a.example/"),
        ("ub", "/from-b", "https://b.example/"),
        key=lambda d: hashlib.md5(f"shop|d:{d[0]}|{start_us}".encode()).hexdigest(),
    )
    users = {r["user_key"]: r for r in run_sql(s, "SELECT * FROM users").to_pylist()}
    u1 = users["u1"]
    assert (u1["sessions"], u1["page_views"]) == (3, 3)
    assert (u1["first_landing_page_path"], u1["first_page_referrer"]) == first[1:]
    assert (str(u1["first_seen_tstamp"])[:19], str(u1["last_seen_tstamp"])[:19]) == (
        "2024-05-01 09:00:00",
        "2024-05-01 15:00:00",
    )
    u2 = users["u2"]
    assert (u2["sessions"], u2["first_landing_page_path"], u2["first_page_referrer"]) == (
        1,
        "/c",
        "https://news.example/",
    )


def test_unusable_heartbeats_count_as_missing(tmp_path: Path) -> None:
    # Heartbeats of 0, "NaN", -5 and 1e-300 s: floor(t / heartbeat) would fail the build (0,
    # NaN, 1e-300) or go negative (-5). Each counts as missing: the configured 10 s. Pings at
    # +10, +20, +30 and +40 s: four buckets, engaged = 10 * (4 - 1) + 10 = 40 s.
    ping = {"type": "track", "name": "Page Ping", "path": "/odd", "anon": "h1"}
    s = _settings(tmp_path)
    _append(
        s,
        [
            ev("hv", "2024-05-01 09:00:00", anon="h1", path="/odd"),
            ev("hp1", "2024-05-01 09:00:10", props={"heartbeat": 0}, **ping),
            ev("hp2", "2024-05-01 09:00:20", props={"heartbeat": "NaN"}, **ping),
            ev("hp3", "2024-05-01 09:00:30", props={"heartbeat": -5}, **ping),
            ev("hp4", "2024-05-01 09:00:40", props={"heartbeat": 1e-300}, **ping),
        ],
    )
    build_models(s)
    pv = run_sql(s, "SELECT engaged_time_s, absolute_time_s FROM page_views").to_pylist()
    assert pv == [{"engaged_time_s": 40.0, "absolute_time_s": 40.0}]


def test_user_mapping_takes_the_latest_pair(tmp_path: Path) -> None:
    # am: the latest derived time wins (10:05 over 10:00); of the two at 10:05, the one collected
    # later (x3). an: same derived and collector times, the larger event_id (n2 -> z0).
    # An alias maps its previous_id (pa -> y1).
    s = _settings(tmp_path)
    idf = {"type": "identify"}
    _append(
        s,
        [
            ev("m1", "2024-05-01 10:00:00", anon="am", user="x1", **idf),
            ev("m2", "2024-05-01 10:05:00", anon="am", user="x2", collected="2024-05-01 10:05:00", **idf),
            ev("m3", "2024-05-01 10:05:00", anon="am", user="x3", collected="2024-05-01 10:06:00", **idf),
            ev("n1", "2024-05-01 11:00:00", anon="an", user="z1", **idf),
            ev("n2", "2024-05-01 11:00:00", anon="an", user="z0", **idf),
            ev("q1", "2024-05-01 12:00:00", anon=None, user="y1", type="alias", previous_id="pa"),
        ],
    )
    build_models(s)
    rows = run_sql(s, "SELECT anonymous_id, user_id, mapped_tstamp FROM user_mapping").to_pylist()
    got = {r["anonymous_id"]: (r["user_id"], str(r["mapped_tstamp"])[:19]) for r in rows}
    assert got == {
        "am": ("x3", "2024-05-01 10:05:00"),
        "an": ("z0", "2024-05-01 11:00:00"),
        "pa": ("y1", "2024-05-01 12:00:00"),
    }


def test_engaged_time_of_long_views_and_mixed_heartbeats(tmp_path: Path) -> None:
    # The bucket count holds past 63 buckets and across heartbeats (page_views.sql counts most
    # views with a bitmap of bucket offsets, these two exactly).
    ping = {"type": "track", "name": "Page Ping"}
    s = _settings(tmp_path)
    _append(
        s,
        [
            # l1: pings at +10 and +15 s share floor(t/10); +720 s is the 72nd bucket after the
            # view's: n = 2, engaged = 10 * (2 - 1) + 10 = 20 s, absolute = 720 s.
            ev("lv", "2024-05-01 09:00:00", anon="l1", path="/long"),
            ev("lp1", "2024-05-01 09:00:10", anon="l1", path="/long", **ping),
            ev("lp2", "2024-05-01 09:00:15", anon="l1", path="/long", **ping),
            ev("lp3", "2024-05-01 09:12:00", anon="l1", path="/long", **ping),
            # l2: a 5 s heartbeat at +5 s (floor(t/5) = floor(t0/5) + 1) and a 10 s one at +10 s
            # (floor(t/10) = floor(t0/10) + 1): both one bucket after the view's, but different
            # numbers, so n = 2; heartbeat = the largest, 10: engaged = 10 * (2 - 1) + 10 = 20 s.
            ev("mv", "2024-05-01 10:00:00", anon="l2", path="/mixed"),
            ev("mp1", "2024-05-01 10:00:05", anon="l2", path="/mixed", props={"heartbeat": 5}, **ping),
            ev("mp2", "2024-05-01 10:00:10", anon="l2", path="/mixed", props={"heartbeat": 10}, **ping),
            # l3: the usual case, three pings in two buckets: engaged 20 s, absolute 25 s.
            ev("uv", "2024-05-01 11:00:00", anon="l3", path="/usual"),
            ev("up1", "2024-05-01 11:00:12", anon="l3", path="/usual", **ping),
            ev("up2", "2024-05-01 11:00:15", anon="l3", path="/usual", **ping),
            ev("up3", "2024-05-01 11:00:25", anon="l3", path="/usual", **ping),
        ],
    )
    build_models(s)
    pv = {r["page_view_id"]: r for r in run_sql(s, "SELECT * FROM page_views").to_pylist()}
    got = {k: (pv[k]["engaged_time_s"], pv[k]["absolute_time_s"]) for k in ("lv", "mv", "uv")}
    assert got == {"lv": (20.0, 720.0), "mv": (20.0, 10.0), "uv": (20.0, 25.0)}


def _funnel_events() -> list[dict[str, Any]]:
    return [
        ev("f1a", "2024-05-01 10:00:00", anon="f1", app="fun", path="/cart"),
        ev("f1b", "2024-05-01 10:01:00", anon="f1", app="fun", type="track", name="Checkout Started"),
        ev("f1c", "2024-05-01 10:02:00", anon="f1", app="fun", type="track", name="Order Completed"),
        ev("f2a", "2024-05-01 10:00:00", anon="f2", app="fun", type="track", name="Checkout Started"),
        ev("f2b", "2024-05-01 10:01:00", anon="f2", app="fun", path="/cart"),
        ev("f2c", "2024-05-01 10:02:00", anon="f2", app="fun", type="track", name="Order Completed"),
        ev("f3a", "2024-05-01 10:00:00", anon="f3", app="fun", path="/cart"),
        # f4 reaches checkout 2 h after the cart: outside the 1 h window.
        ev("f4a", "2024-05-01 10:00:00", anon="f4", app="fun", path="/cart"),
        ev("f4b", "2024-05-01 12:00:00", anon="f4", app="fun", type="track", name="Checkout Started"),
    ]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        # strict: /cart f1 f2 f3 f4 = 4; checkout after cart within 1 h: f1 = 1; order: f1 = 1
        ("strict", [4, 1, 1]),
        # any: anchor = first matching event; f1 and f2 do all three within 1 h; f3 and f4
        # only the cart within their window.
        ("any", [4, 2, 2]),
    ],
)
def test_funnel(tmp_path: Path, order: str, expected: list[int]) -> None:
    s = _settings(tmp_path)
    _append(s, _funnel_events())
    steps = [Step(path="^/cart$"), "Checkout Started", {"event": "Order Completed"}]
    out = funnel(s, steps, window=timedelta(hours=1), order=order, app_id="fun")
    assert out.column("entities").to_pylist() == expected
    assert out.column("drop_off").to_pylist() == [0, expected[0] - expected[1], expected[1] - expected[2]]
    by = funnel(s, steps, window=3600, order=order, app_id="fun", breakdown="geo_country")
    assert by.column("geo_country").to_pylist() == [None, None, None]
