"""Each chunk is sorted by partition on the decode workers, before dedup judges it; dedup must
still judge in source order: of two copies of an id in one chunk, the first line is the one
kept, even when the second sorts before it (an earlier ``derived_tstamp`` day)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from clicklake.config import load_settings
from clicklake.engines.local import Pipeline
from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, open_catalog, table_id
from clicklake.sources.files import FilesSource


def _line(message_id: str, day: datetime, skew: timedelta, props: dict[str, int]) -> bytes:
    """A track event created and received at ``day``, sent ``skew`` later by the device's clock
    (so its ``derived_tstamp`` is ``skew`` earlier than ``day``)."""
    iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
    return orjson.dumps(
        {
            "type": "track",
            "event": "E",
            "userId": "u1",
            "messageId": message_id,
            "properties": props,
            "timestamp": iso(day),
            "sentAt": iso(day + skew),
            "receivedAt": iso(day),
        }
    )


def test_the_first_copy_in_a_chunk_wins_although_a_later_one_sorts_first(tmp_path: Path) -> None:
    day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=3)
    lines = [
        _line("resent", day, timedelta(0), {"a": 1}),
        _line("resent", day, timedelta(days=2), {"a": 1}),  # the same event, a day earlier derived
        _line("reused", day, timedelta(0), {"b": 1}),
        _line("reused", day, timedelta(days=2), {"b": 2}),  # another event reusing the id
        _line("other", day, timedelta(days=2), {"c": 1}),
    ]
    path = tmp_path / "e.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    offsets = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "d")})

    stats = Pipeline(settings, FilesSource([path])).run(once=True)

    assert (stats.events, stats.duplicates, stats.failed) == (3, 1, 1)
    catalog = open_catalog(settings)
    events = catalog.load_table(table_id(settings, EVENTS)).scan().to_arrow().sort_by("source_offset")
    assert events.column("event_id").to_pylist() == ["resent", "reused", "other"]
    assert events.column("source_offset").to_pylist() == [offsets[0], offsets[2], offsets[4]]
    assert [t.date() for t in events.column("derived_tstamp").to_pylist()] == [
        day.date(),
        day.date(),
        (day - timedelta(days=2)).date(),
    ]
    failed = catalog.load_table(table_id(settings, FAILED_EVENTS)).scan().to_arrow()
    assert failed.column("error_type").to_pylist() == ["duplicate_id_conflict"]
    assert failed.column("source_offset").to_pylist() == [offsets[3]]
