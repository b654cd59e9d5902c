"""Maintenance on a schedule (as inside `clicklake serve`), counted in Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

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
