"""Maintenance on a schedule inside ``clicklake serve``, with Prometheus metrics.

A background thread runs each action (``compact``, ``expire``, ``orphans``, ``retention``)
every ``maintenance.<action>_every_s`` seconds (0 switches it off); the first run of each comes
``min(60 s, interval)`` after start, so a restart does not stall the collector and a server
restarted often still gets maintained. A failing run is logged and counted; it never stops the
server or the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from clicklake.config import Settings
from clicklake.lakehouse.maintenance import (
    ACTIONS,
    CompactResult,
    ExpireResult,
    OrphanResult,
    RetentionResult,
    run_action,
)

log = logging.getLogger("clicklake.maintenance")

_FIRST_RUN_MAX_S = 60.0


class MaintenanceMetrics:
    """Counters and gauges of maintenance runs (``clicklake_maintenance_*``).

    Args:
        registry: Where to register them (a fresh registry when omitted).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "clicklake_maintenance_runs",
            "Maintenance runs by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.files_rewritten = Counter(
            "clicklake_maintenance_files_rewritten", "Small data files compacted away.", ["table"], registry=r
        )
        self.files_written = Counter(
            "clicklake_maintenance_files_written", "Data files written by compaction.", ["table"], registry=r
        )
        self.bytes_rewritten = Counter(
            "clicklake_maintenance_bytes_rewritten",
            "Bytes of the data files compacted away.",
            ["table"],
            registry=r,
        )
        self.snapshots_expired = Counter(
            "clicklake_maintenance_snapshots_expired", "Snapshots expired.", ["table"], registry=r
        )
        self.files_deleted = Counter(
            "clicklake_maintenance_expired_files_deleted",
            "Data files, manifests and manifest lists deleted after expiry.",
            ["table"],
            registry=r,
        )
        self.orphans_removed = Counter(
            "clicklake_maintenance_orphans_removed", "Orphan files removed.", ["table"], registry=r
        )
        self.partitions_dropped = Counter(
            "clicklake_maintenance_partitions_dropped",
            "Partitions dropped by retention.",
            ["table"],
            registry=r,
        )
        self.last_run = Gauge(
            "clicklake_maintenance_last_run_timestamp_seconds",
            "When each action last finished successfully (Unix time).",
            ["action"],
            registry=r,
        )
        self.last_duration = Gauge(
            "clicklake_maintenance_last_run_duration_seconds",
            "How long each action's last run took.",
            ["action"],
            registry=r,
        )

    def record(self, action: str, results: list[Any], seconds: float) -> None:
        """Count what one successful run did."""
        for r in results:
            t = r.table.split(".")[-1]
            if isinstance(r, CompactResult):
                self.files_rewritten.labels(t).inc(r.files_rewritten)
                self.files_written.labels(t).inc(r.files_added)
                self.bytes_rewritten.labels(t).inc(r.bytes_rewritten)
            elif isinstance(r, ExpireResult):
                self.snapshots_expired.labels(t).inc(r.snapshots_expired)
                self.files_deleted.labels(t).inc(
                    r.data_files_deleted + r.manifests_deleted + r.manifest_lists_deleted
                )
            elif isinstance(r, OrphanResult):
                self.orphans_removed.labels(t).inc(r.orphans_removed)
            elif isinstance(r, RetentionResult):
                self.partitions_dropped.labels(t).inc(r.partitions_dropped)
        self.runs.labels(action, "ok").inc()
        self.last_run.labels(action).set(time.time())
        self.last_duration.labels(action).set(seconds)


class MaintenanceScheduler:
    """Runs the maintenance actions on their intervals in a daemon thread.

    Args:
        settings: The settings (``[maintenance]`` intervals and thresholds).
        metrics: Where to count runs (a fresh registry when omitted).
    """

    def __init__(self, settings: Settings, metrics: MaintenanceMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or MaintenanceMetrics()
        m = settings.maintenance
        self.intervals = {
            "compact": m.compact_every_s,
            "expire": m.expire_every_s,
            "orphans": m.orphans_every_s,
            "retention": m.retention_every_s,
        }
        start = time.monotonic()
        self.next_due = {
            a: start + min(_FIRST_RUN_MAX_S, s) for a, s in self.intervals.items() if s > 0 and a in ACTIONS
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_due(self, now: float | None = None) -> list[str]:
        """Run every action that is due at ``now`` (monotonic seconds); return their names."""
        now = time.monotonic() if now is None else now
        ran = []
        # Retention before expire before orphans: each frees what the previous one released.
        for action in ("compact", "retention", "expire", "orphans"):
            due = self.next_due.get(action)
            if due is None or due > now or self._stop.is_set():
                continue
            self.run(action)
            self.next_due[action] = now + self.intervals[action]
            ran.append(action)
        return ran

    def run(self, action: str) -> None:
        """Run one action now; failures are logged and counted, not raised."""
        t0 = time.monotonic()
        try:
            results = run_action(self.settings, action)
        except Exception:  # a maintenance failure must not take the server down
            log.exception("event=maintenance_failed action=%s", action)
            self.metrics.runs.labels(action, "error").inc()
            return
        seconds = time.monotonic() - t0
        self.metrics.record(action, results, seconds)
        log.info("event=maintenance_run action=%s tables=%d seconds=%.2f", action, len(results), seconds)

    def start(self) -> None:
        """Start the background thread (no-op when every interval is 0)."""
        if not self.next_due:
            return
        self._thread = threading.Thread(target=self._loop, name="clicklake-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the action in progress, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_due()
            wait = max(0.05, min(self.next_due.values()) - time.monotonic())
            self._stop.wait(min(wait, 5.0))
