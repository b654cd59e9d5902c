"""Maintenance on a schedule (as inside `clicklake serve`), counted in Prometheus metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from clicklake.lakehouse.maintenance import _live_files
from clicklake.lakehouse.scheduler import MaintenanceMetrics, MaintenanceScheduler
from tests.lakehouse.fixtures import SmallFiles, row_multiset


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_due_actions_run_and_are_counted(small_files: Callable[..., SmallFiles]) -> None:
    sf = small_files(batches=4, compact_every_s=10, expire_every_s=0, orphans_every_s=30, retention_every_s=0)
    files_before = len(_live_files(sf.table()))
    before = row_multiset(sf.table())
    registry = CollectorRegistry()
    scheduler = MaintenanceScheduler(sf.settings, MaintenanceMetrics(registry))
    assert set(scheduler.next_due) == {"compact", "orphans"}  # 0 switches an action off

    assert scheduler.run_due(now=time.monotonic()) == []  # nothing due right at start
    t0 = time.time()
    assert scheduler.run_due(now=time.monotonic() + 15) == ["compact"]
    # Compact is due again (every 10 s, nothing left to do), orphans for the first time.
    assert scheduler.run_due(now=time.monotonic() + 31) == ["compact", "orphans"]

    files_after = len(_live_files(sf.table()))
    assert files_after < files_before
    assert row_multiset(sf.table()) == before
    assert _value(registry, "clicklake_maintenance_runs_total", action="compact", outcome="ok") == 2
    assert _value(registry, "clicklake_maintenance_files_rewritten_total", table="events") == files_before
    assert _value(registry, "clicklake_maintenance_files_written_total", table="events") == files_after
    assert _value(registry, "clicklake_maintenance_bytes_rewritten_total", table="events") > 0
    assert _value(registry, "clicklake_maintenance_orphans_removed_total", table="events") == 0
    assert _value(registry, "clicklake_maintenance_last_run_timestamp_seconds", action="compact") >= t0
    assert _value(registry, "clicklake_maintenance_runs_total", action="orphans", outcome="ok") == 1
    assert b"clicklake_maintenance_snapshots_expired" in generate_latest(registry)


def test_a_failing_run_is_counted_not_raised(small_files: Callable[..., SmallFiles]) -> None:
    sf = small_files(batches=1)
    registry = CollectorRegistry()
    scheduler = MaintenanceScheduler(sf.settings, MaintenanceMetrics(registry))
    scheduler.run("defragment")  # not an action: run_action refuses it
    assert _value(registry, "clicklake_maintenance_runs_total", action="defragment", outcome="error") == 1


def test_serve_runs_maintenance_and_shows_it_on_metrics(tmp_path: Path) -> None:
    """`clicklake serve` (collector + pipeline) compacts what its pipeline wrote, on schedule."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    env.update(
        {
            "CLICKLAKE_STORAGE__DATA_DIR": str(tmp_path / "data"),
            "CLICKLAKE_PIPELINE__COMMIT_INTERVAL_S": "0.3",
            "CLICKLAKE_MAINTENANCE__MIN_INPUT_FILES": "2",
            "CLICKLAKE_MAINTENANCE__COMPACT_EVERY_S": "2",
            "CLICKLAKE_MAINTENANCE__EXPIRE_EVERY_S": "0",
            "CLICKLAKE_MAINTENANCE__ORPHANS_EVERY_S": "0",
            "CLICKLAKE_MAINTENANCE__RETENTION_EVERY_S": "0",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "clicklake", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        sent = 0
        compacted = False
        while time.monotonic() < deadline and not compacted:
            try:
                # Several small requests, several pipeline commits: small files in one partition.
                body = {"type": "track", "event": "E", "userId": "u1", "messageId": f"m{sent}"}
                if (
                    httpx.post(url + "/v1/track", json=body, auth=("wk_demo", ""), timeout=5).status_code
                    == 200
                ):
                    sent += 1
                text = httpx.get(url + "/metrics", timeout=5).text
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            compacted = any(
                line.startswith('clicklake_maintenance_files_rewritten_total{table="events"}')
                and float(line.split()[-1]) >= 2
                for line in text.splitlines()
            )
            time.sleep(0.2)
        assert compacted, "no compaction showed up on /metrics"
        assert 'clicklake_maintenance_runs_total{action="compact",outcome="ok"}' in text
        assert "clicklake_maintenance_last_run_timestamp_seconds" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    from clicklake.config import load_settings
    from clicklake.lakehouse.catalog import open_catalog

    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
    table = open_catalog(settings).load_table("clicklake.events")
    assert sum(row_multiset(table).values()) == sent  # every acknowledged event, once
