"""The SQL lockdown: a role reads only its apps' rows, masked, and nothing else, whatever the SQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from clicklake.exceptions import InputError
from clicklake.query.access import LOCAL_ROLE, AccessDenied, AuthError, authenticate
from clicklake.query.audit import AuditLog, audit_row, audited_local_sql
from clicklake.query.secure import QueryTimeout, SecureQueries
from tests.web.fixtures import Lake, lake_settings


@pytest.fixture(scope="module")
def queries(lake: Lake) -> SecureQueries:
    return SecureQueries(lake.settings)


def test_row_filter_whatever_the_sql_says(lake: Lake, queries: SecureQueries) -> None:
    admin = authenticate(lake.settings, "tok_admin")
    shop = authenticate(lake.settings, "tok_shop")
    all_apps = {
        r["app_id"] for r in queries.run(admin, "SELECT DISTINCT app_id FROM events").table.to_pylist()
    }
    assert all_apps == {"demo-shop", "other-blog"}
    shop_events = queries.run(admin, "SELECT count(*) AS n FROM events WHERE app_id = 'demo-shop'").table
    expected = shop_events.column("n")[0].as_py()
    attempts = [
        "SELECT DISTINCT app_id FROM events",
        "SELECT DISTINCT app_id FROM events WHERE app_id = 'other-blog' OR true",
        "SELECT app_id FROM events UNION SELECT app_id FROM sessions UNION SELECT app_id FROM failed_events",
        "SELECT app_id FROM (SELECT * FROM (SELECT * FROM page_views)) AS x GROUP BY 1",
        "WITH e AS (SELECT * FROM events), s AS (SELECT app_id FROM e) SELECT DISTINCT app_id FROM s",
        "SELECT DISTINCT app_id FROM daily_kpis WHERE app_id IN (SELECT app_id FROM users)",
        "WITH RECURSIVE r AS (SELECT app_id FROM user_mapping UNION SELECT app_id FROM r) SELECT * FROM r",
    ]
    for sql in attempts:
        apps = {next(iter(row.values())) for row in queries.run(shop, sql).table.to_pylist()}
        assert apps <= {"demo-shop"}, sql
    n = queries.run(shop, "SELECT count(*) AS n FROM events").table.column("n")[0].as_py()
    assert n == expected > 0


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT * FROM read_text('/etc/passwd')", "read_text"),
        ("SELECT * FROM '/etc/passwd'", "not readable"),
        ("SELECT * FROM read_parquet('**/*.parquet')", "read_parquet"),
        ("SELECT * FROM information_schema.tables", "qualified names"),
        ("SELECT * FROM information_schema.views", "qualified names"),
        ("SELECT * FROM duckdb_views()", "duckdb_views"),
        ("SELECT sql FROM duckdb_views", "not readable"),
        ("SELECT * FROM sqlite_master", "not readable"),
        ("WITH duckdb_views AS (SELECT 1) SELECT 1", "system relation"),
        ("SELECT * FROM query('SELECT * FROM events')", "query"),
        ("SELECT current_setting('allowed_directories')", "current_setting"),
        ("SELECT * FROM audit_log", "not readable"),
        ("SELECT * FROM events AT (VERSION => 1)", "time travel"),
        ("ATTACH '/tmp/other.db' AS o", "ATTACH"),
        ("COPY (SELECT * FROM events) TO '/tmp/leak.csv'", "COPY"),
        ("INSTALL httpfs", "read-only"),
        ("LOAD httpfs", "read-only"),
        ("SET enable_external_access = true", "SET"),
        ("PRAGMA enable_profiling", "PRAGMA"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("CREATE VIEW v AS SELECT * FROM events", "CREATE"),
        ("DROP VIEW events", "DROP"),
        ("DESCRIBE events", "not allowed"),
        ("EXPLAIN SELECT 1", "EXPLAIN"),
    ],
)
def test_denied_with_a_clear_reason(lake: Lake, queries: SecureQueries, sql: str, reason: str) -> None:
    shop = authenticate(lake.settings, "tok_shop")
    with pytest.raises(AccessDenied) as err:
        queries.run(shop, sql)
    assert reason in str(err.value)


def test_lockdown_holds_below_the_syntax_check(lake: Lake, queries: SecureQueries) -> None:
    # Even clicklake's own (trusted, unchecked) statements cannot read files or change settings.
    shop = authenticate(lake.settings, "tok_shop")
    for sql in ("SELECT * FROM read_text('/etc/passwd')", "SELECT * FROM read_csv('/etc/passwd')"):
        with pytest.raises(AccessDenied, match="disabled by configuration"):
            queries.run(shop, sql, trusted=True)
    with pytest.raises(InputError, match="locked"):
        queries.run(shop, "SET enable_external_access = true", trusted=True)


def test_pii_is_masked_unless_the_role_has_pii(lake: Lake, queries: SecureQueries) -> None:
    shop = authenticate(lake.settings, "tok_shop")
    pii = authenticate(lake.settings, "tok_pii")
    sql = """SELECT count(DISTINCT user_key) AS users, count(DISTINCT user_ipaddress) AS ips,
        max(user_ipaddress) AS ip, max(user_id) AS uid, count(traits) AS traits, count(context) AS ctx
        FROM events"""
    masked = queries.run(shop, sql).table.to_pylist()[0]
    clear = queries.run(pii, sql).table.to_pylist()[0]
    # Hashing keeps distinct counts, hides the values.
    assert masked["users"] == clear["users"] > 0 and masked["ips"] == clear["ips"] > 0
    assert masked["ip"].startswith("h:") and masked["uid"].startswith("h:")
    assert not clear["ip"].startswith("h:") and "." in clear["ip"]
    assert masked["traits"] == 0 and masked["ctx"] == 0 and clear["ctx"] > 0


def test_statement_timeout_interrupts(tmp_path: Path, lake: Lake) -> None:
    settings = lake_settings(lake.settings.storage.data_dir, statement_timeout_s=0.5)
    q = SecureQueries(settings)
    shop = authenticate(settings, "tok_shop")
    with pytest.raises(QueryTimeout, match="was stopped"):
        q.run(shop, "SELECT sum(a.range * b.range) FROM range(100000000) AS a, range(100000000) AS b")
    assert q.run(shop, "SELECT 1 AS one").table.to_pylist() == [{"one": 1}]


def test_max_rows_truncates(lake: Lake) -> None:
    settings = lake_settings(lake.settings.storage.data_dir, max_rows=7)
    result = SecureQueries(settings).run(authenticate(settings, "tok_shop"), "SELECT * FROM range(100)")
    assert result.table.num_rows == 7 and result.truncated


def test_tokens(lake: Lake) -> None:
    for token, message in (
        (None, "no token"),
        ("", "no token"),
        ("nope", "unknown"),
        ("tok_expired", "expired"),
    ):
        with pytest.raises(AuthError, match=message):
            authenticate(lake.settings, token)
    role = authenticate(lake.settings, "tok_blog")
    assert role.apps == ("other-blog",) and not role.sql and role.label == "viewer"


def test_audit_log_is_durable_and_admin_only(lake: Lake, queries: SecureQueries) -> None:
    settings = lake.settings
    log = AuditLog(settings, background=False)
    shop = authenticate(settings, "tok_shop")
    log.record(
        audit_row(
            shop, kind="sql", endpoint="test", statement="SELECT 42", allowed=False, status=403, reason="r"
        )
    )
    log.close()
    assert log.pending() == 0
    # clicklake sql appends its own row, also for a refused statement.
    with pytest.raises(AccessDenied):
        audited_local_sql(settings, "COPY (SELECT 1) TO '/tmp/x.csv'")
    out = audited_local_sql(
        settings,
        "SELECT endpoint, statement, allowed, reason, token_name FROM audit_log "
        "WHERE endpoint IN ('test', 'clicklake sql') ORDER BY tstamp",
    )
    rows = out.to_pylist()
    assert {
        "endpoint": "test",
        "statement": "SELECT 42",
        "allowed": False,
        "reason": "r",
        "token_name": "shop-analyst",
    } in rows
    copy = [r for r in rows if r["statement"] == "COPY (SELECT 1) TO '/tmp/x.csv'"]
    assert copy and copy[0]["allowed"] is False and "read-only" in copy[0]["reason"]
    assert copy[0]["token_name"] == LOCAL_ROLE.name
    with pytest.raises(AccessDenied, match="not readable"):
        SecureQueries(settings).run(shop, "SELECT * FROM audit_log")


def test_audit_flushes_keep_the_table_and_survive_another_writer(tmp_path: Path) -> None:
    # The log keeps the table between flushes; another writer's commit in between makes the
    # next flush reload it, and every row is written once.
    from clicklake.lakehouse.audit import append_audit
    from clicklake.query.engine import run_sql

    settings = lake_settings(tmp_path / "data")
    log = AuditLog(settings, background=False)
    admin = authenticate(settings, "tok_admin")
    for i in range(4):
        log.record(audit_row(admin, kind="api", endpoint=f"log-{i}", allowed=True, status=200))
        assert log.flush() == 1
        if i == 1:
            append_audit(settings, [{"endpoint": "other-writer"}])
    assert log._table is not None
    out = run_sql(settings, "SELECT endpoint FROM audit_log ORDER BY endpoint")
    assert out.column(0).to_pylist() == ["log-0", "log-1", "log-2", "log-3", "other-writer"]


def test_a_serving_audit_log_keeps_a_bounded_history_and_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each flush is a snapshot and each append copies the whole metadata: past the limit the
    # flusher expires all but the last few snapshots, and no row is lost.
    from pyiceberg.table import Table

    from clicklake.lakehouse.audit import append_audit
    from clicklake.lakehouse.catalog import open_catalog, table_id
    from clicklake.query import audit
    from clicklake.query.engine import run_sql

    monkeypatch.setattr(audit, "AUDIT_MAX_SNAPSHOTS", 6)
    monkeypatch.setattr(audit, "AUDIT_KEEP_SNAPSHOTS", 2)
    settings = lake_settings(tmp_path / "data")
    log = AuditLog(settings, background=False)
    admin = authenticate(settings, "tok_admin")
    counts = []
    for i in range(15):
        log.record(audit_row(admin, kind="api", endpoint=f"e{i:02d}", allowed=True, status=200))
        assert log.flush() == 1
        table: Table = open_catalog(settings).load_table(table_id(settings, "audit_log"))
        counts.append(len(table.metadata.snapshots))
    assert max(counts) <= 6  # never more than the limit
    drops = [i for i in range(1, len(counts)) if counts[i] < counts[i - 1]]
    assert len(drops) >= 2 and all(counts[i] <= 3 for i in drops)  # expired down to the last few, twice
    append_audit(settings, [{"endpoint": "z-after"}])  # the table still takes appends
    out = run_sql(settings, "SELECT endpoint FROM audit_log ORDER BY endpoint")
    assert out.column(0).to_pylist() == [f"e{i:02d}" for i in range(15)] + ["z-after"]
