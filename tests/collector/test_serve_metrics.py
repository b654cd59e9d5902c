"""``clicklake serve``'s GET /metrics shows what the pipeline did: rows, failures, commits, lag."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from clicklake.config import load_settings
from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, open_catalog, table_id
from tests.collector.conftest import APP_ID, WRITE_KEY, spool_lines

BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()

SERVER = """
import sys
from clicklake.config import load_settings
from clicklake.collector.server import serve, bind_socket
settings = load_settings(environ={}, storage={"data_dir": sys.argv[1]},
    collector={"write_keys": {"wk_test": "test-app"}}, pipeline={"commit_interval_s": 0.3},
    spool={"segment_max_age_s": 3600})
sock = bind_socket("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
serve(settings, with_pipeline=True, sock=sock)
"""


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _event(i: int, **fields: object) -> dict[str, object]:
    return {"type": "track", "event": "Viewed", "userId": f"u{i}", "messageId": str(uuid.uuid4()), **fields}


def test_serve_metrics_count_what_the_pipeline_committed(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        good = [_event(i) for i in range(5)]
        no_user = [{"type": "track", "event": "Viewed", "messageId": str(uuid.uuid4())} for _ in range(2)]
        bogus = [_event(9, type="bogus")]
        resent = _event(7)
        with httpx.Client(headers={"Authorization": BASIC}, timeout=30) as client:
            assert (
                client.post(url + "/v1/batch", json={"batch": [*good, *no_user, *bogus]}).status_code == 200
            )
            # A client retry: the same event twice; the dedup step drops the second copy.
            for _ in range(2):
                assert client.post(url + "/v1/track", json=resent).status_code == 200

        def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
            return name, tuple(sorted(labels.items()))

        # Wait (not a timing assertion) until the pipeline has committed it all.
        deadline = time.monotonic() + 120
        m = _metrics(url)
        while time.monotonic() < deadline and not (
            m.get(key("clicklake_pipeline_committed_rows_total", table="events")) == 6
            and m.get(key("clicklake_pipeline_committed_rows_total", table="failed_events")) == 3
            and m.get(key("clicklake_pipeline_log_lag_bytes")) == 0
        ):
            time.sleep(0.1)
            m = _metrics(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    # One segment (no rotation by age here), never deleted while it is the last one.
    spool_bytes = sum(p.stat().st_size for p in (tmp_path / "spool").glob("seg-*.ndjson"))
    assert m[key("clicklake_pipeline_committed_rows_total", table="events")] == 6
    assert m[key("clicklake_pipeline_committed_rows_total", table="failed_events")] == 3
    assert m[key("clicklake_pipeline_failed_events_total", stage="validate", error_type="missing_field")] == 2
    assert m[key("clicklake_pipeline_failed_events_total", stage="validate", error_type="invalid_type")] == 1
    assert m[key("clicklake_pipeline_duplicates_dropped_total")] == 1
    assert m[key("clicklake_pipeline_log_lag_bytes")] == 0
    # Every row decoded went through one micro-batch or another, and every spool byte was read.
    assert m[key("clicklake_pipeline_batch_rows_sum")] == 10
    assert m[key("clicklake_pipeline_read_bytes_total")] == spool_bytes
    for table in ("events", "failed_events"):
        assert m[key("clicklake_pipeline_commit_duration_seconds_count", table=table)] >= 1
        assert m[key("clicklake_pipeline_commit_rows_sum", table=table)] == (6 if table == "events" else 3)
        assert m.get(key("clicklake_pipeline_commit_retries_total", table=table), 0) == 0
    # The collector's metrics are in the same answer.
    assert m[key("clicklake_collector_events_accepted_total", app=APP_ID)] == 10
    assert len(spool_lines(tmp_path / "spool")) == 3

    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path)})
    catalog = open_catalog(settings)
    assert len(catalog.load_table(table_id(settings, EVENTS)).scan().to_arrow()) == 6
    failed = catalog.load_table(table_id(settings, FAILED_EVENTS)).scan().to_arrow()
    assert sorted(failed.column("error_type").to_pylist()) == [
        "invalid_type",
        "missing_field",
        "missing_field",
    ]
