"""Prometheus metrics of the pipeline: batch sizes, commits, failed events, log lag.

They live in a registry of their own (one per pipeline), so several pipelines in one process
(tests) do not collide; ``clicklake serve`` puts them in the collector's registry, so one
``GET /metrics`` shows both.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_ROW_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)
_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PipelineMetrics:
    """The pipeline's counters, histograms and gauges.

    Args:
        registry: Where to register them (a fresh registry when omitted).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batch_rows = Histogram(
            "clicklake_pipeline_batch_rows",
            "Rows (events and failures) decoded per micro-batch.",
            buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.bytes_read = Counter(
            "clicklake_pipeline_read_bytes", "Bytes read from the source and decoded.", registry=r
        )
        self.commit_rows = Histogram(
            "clicklake_pipeline_commit_rows",
            "Rows written per commit, by table.",
            ["table"],
            buckets=_ROW_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "clicklake_pipeline_commit_duration_seconds",
            "Duration of one commit (data files and snapshot, retries included), by table.",
            ["table"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.commit_retries = Counter(
            "clicklake_pipeline_commit_retries",
            "Commits retried after a lost race or an ambiguous failure, by table.",
            ["table"],
            registry=r,
        )
        self.rows = Counter(
            "clicklake_pipeline_committed_rows", "Rows committed, by table.", ["table"], registry=r
        )
        self.failed = Counter(
            "clicklake_pipeline_failed_events",
            "Rows committed to failed_events, by stage and error type.",
            ["stage", "error_type"],
            registry=r,
        )
        self.duplicates = Counter(
            "clicklake_pipeline_duplicates_dropped",
            "Client resends dropped by the dedup step.",
            registry=r,
        )
        self.lag_bytes = Gauge(
            "clicklake_pipeline_log_lag_bytes",
            "Bytes in the log (spool) that not every table has committed yet.",
            registry=r,
        )
