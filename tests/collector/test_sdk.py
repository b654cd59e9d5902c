"""Events sent by the official Segment Python SDK land in the spool, then in ``events``."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from segment.analytics.client import Client

from clicklake.config import load_settings
from clicklake.engines.local import Pipeline
from clicklake.lakehouse.catalog import EVENTS, open_catalog, table_id
from clicklake.sources.spool import SpoolSource
from tests.collector.conftest import APP_ID, WRITE_KEY, LiveCollector, make_options, spool_lines


@pytest.mark.parametrize("gz", [False, True])
def test_segment_python_sdk_lands_in_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
    errors: list[object] = []
    ids = [str(uuid.uuid4()) for _ in range(3)]
    with LiveCollector(make_options(settings.storage.spool_dir)) as server:
        client = Client(
            WRITE_KEY, host=server.url, gzip=gz, max_retries=0, on_error=lambda e, b: errors.append(e)
        )
        client.track("user-1", "Order Completed", {"revenue": 9.5}, message_id=ids[0])
        client.page("user-1", "Docs", "Home", {"url": "https://shop.example/docs?x=1"}, message_id=ids[1])
        client.identify("user-1", {"email": "a@b.example"}, message_id=ids[2])
        client.flush()
        client.shutdown()
    assert errors == []
    lines = spool_lines(settings.storage.spool_dir)
    assert {e["messageId"] for line in lines for e in line["p"]["batch"]} == set(ids)
    assert {line["app"] for line in lines} == {APP_ID}
    Pipeline(settings, SpoolSource(settings.storage.spool_dir)).run(once=True)
    table = open_catalog(settings).load_table(table_id(settings, EVENTS))
    rows = table.scan(selected_fields=("event_id", "event_type", "app_id", "user_id")).to_arrow().to_pylist()
    assert sorted(r["event_id"] for r in rows) == sorted(ids)
    assert {r["event_type"] for r in rows} == {"track", "page", "identify"}
    assert {r["app_id"] for r in rows} == {APP_ID}
    assert {r["user_id"] for r in rows} == {"user-1"}
