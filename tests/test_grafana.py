"""deploy/grafana-dashboard.json charts every metric clicklake exports, and only those."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from clicklake.collector.metrics import CollectorMetrics
from clicklake.metrics import PipelineMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana-dashboard.json"


def _exported_series() -> set[str]:
    names: set[str] = {"clicklake_pipeline_kafka_lag_messages"}  # a gauge serve adds with the Kafka log
    values = [*vars(CollectorMetrics()).values(), *vars(PipelineMetrics()).values()]
    for value in values:
        if isinstance(value, Counter):
            base = value._name  # prometheus_client keeps the name without _total here
            names |= {f"{base}_total", f"{base}_created"}
        elif isinstance(value, Histogram):
            names |= {f"{value._name}_bucket", f"{value._name}_sum", f"{value._name}_count"}
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def test_every_series_in_the_dashboard_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bclicklake_[a-z_]+", e)}
    exported = _exported_series()
    assert used and used <= exported, used - exported
    # Every metric family the collector exports has a panel.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in used}
    assert {re.sub(r"_(total|created|bucket|sum|count)$", "", m) for m in exported} == families
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
