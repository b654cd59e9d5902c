"""Prometheus metrics of the collector, in a registry of their own (one per app instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_GROUP_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class CollectorMetrics:
    """The collector's counters and histograms.

    Args:
        registry: Where to register them (a fresh registry when omitted).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "clicklake_collector_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.rejected = Counter(
            "clicklake_collector_rejected_requests", "Requests refused, by reason.", ["reason"], registry=r
        )
        self.events = Counter(
            "clicklake_collector_events_accepted", "Events in durably accepted requests.", ["app"], registry=r
        )
        self.wire_bytes = Counter(
            "clicklake_collector_request_bytes",
            "Request body bytes as received (compressed or not).",
            registry=r,
        )
        self.payload_bytes = Counter(
            "clicklake_collector_accepted_bytes", "Payload bytes accepted (after decompression).", registry=r
        )
        self.latency = Histogram(
            "clicklake_collector_request_duration_seconds",
            "Time from request start to answer.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.group_lines = Histogram(
            "clicklake_collector_group_commit_lines",
            "Requests written per spool append (one fsync).",
            buckets=_GROUP_BUCKETS,
            registry=r,
        )
        self.fsync_seconds = Histogram(
            "clicklake_collector_spool_append_seconds",
            "Duration of one group append, fsync included.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.append_errors = Counter(
            "clicklake_collector_spool_append_errors",
            "Group appends that failed (disk full, read-only).",
            registry=r,
        )
        self.unavailable = Counter(
            "clicklake_collector_unavailable", "503 answers, by reason.", ["reason"], registry=r
        )
        self.queue_lines = Gauge(
            "clicklake_collector_queue_lines", "Requests waiting for the spool writer.", registry=r
        )
