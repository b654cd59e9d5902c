"""Replaying a Segment export through the HTTP collector keeps each event's derived time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from clicklake.collector.options import CollectorOptions
from clicklake.collector.replay import replay
from clicklake.collector.server import BackgroundCollector
from clicklake.config import Settings, load_settings
from clicklake.engines.local import Pipeline
from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, open_catalog, table_id
from clicklake.sources.files import FilesSource
from clicklake.sources.generator import DECODE_ERRORS, generate
from clicklake.sources.spool import SpoolSource


def _table(settings: Settings, name: str, *cols: str) -> list[dict[str, object]]:
    table = open_catalog(settings).load_table(table_id(settings, name))
    return table.scan(selected_fields=cols).to_arrow().to_pylist()


def test_replay_over_http_gives_the_derived_times_of_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = generate(tmp_path / "export", events=600, days=2, seed=3, fmt="ndjson")
    files = [Path(f) for f in manifest.files]
    # Reference: the export read as files, where the collector time is each event's receivedAt.
    direct = load_settings(environ={}, storage={"data_dir": str(tmp_path / "direct")})
    Pipeline(direct, FilesSource(files)).run(once=True)
    # The same export sent to a collector now, then read from its spool.
    http = load_settings(environ={}, storage={"data_dir": str(tmp_path / "http")})
    with BackgroundCollector(CollectorOptions.from_settings(http)) as collector:
        stats = replay(files, collector.url, "wk_demo", concurrency=2)
    Pipeline(http, SpoolSource(http.storage.spool_dir)).run(once=True)

    refused = sum(manifest.malformed[k] for k in DECODE_ERRORS)
    assert sum(stats.refused.values()) == stats.refused_events == refused
    assert stats.accepted_events + stats.refused_events == manifest.events_total

    cols = ("event_id", "derived_tstamp", "collector_tstamp", "user_ipaddress", "user_agent")
    before = {r["event_id"]: r for r in _table(direct, EVENTS, *cols)}
    after = {r["event_id"]: r for r in _table(http, EVENTS, *cols)}
    assert after.keys() == before.keys()
    assert len(after) == manifest.expected_events_rows - manifest.retried
    # Received now, yet derived as in the export: only the moment of sending moved, by the
    # time between stamping sentAt and the collector stamping the receive time.
    newest_export = max(r["collector_tstamp"] for r in before.values())
    assert all(r["collector_tstamp"] > newest_export for r in after.values())  # type: ignore[operator]
    drift = max(abs(after[k]["derived_tstamp"] - before[k]["derived_tstamp"]) for k in after)  # type: ignore[operator]
    assert drift < timedelta(minutes=1)
    assert all(after[k]["user_ipaddress"] == before[k]["user_ipaddress"] for k in after)
    assert all(after[k]["user_agent"] == before[k]["user_agent"] for k in after)

    # Malformed events inside well-formed lines fail the same way, with or without HTTP.
    failed_direct = sorted(r["error_type"] for r in _table(direct, FAILED_EVENTS, "error_type"))
    failed_http = sorted(r["error_type"] for r in _table(http, FAILED_EVENTS, "error_type"))
    assert failed_http == [t for t in failed_direct if t not in DECODE_ERRORS]
    assert len(failed_http) == manifest.expected_failed_rows - refused
