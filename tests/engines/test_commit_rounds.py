"""Commit rounds: a table with rows commits in every round; a table with only a newer position
(no failures) commits at the end of the pass, or once per commit interval, and still ends at
the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import orjson

from clicklake.config import Settings, load_settings
from clicklake.engines.local import Pipeline
from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, open_catalog, table_id
from clicklake.lakehouse.checkpoint import read_checkpoint
from clicklake.sources.files import FilesSource


def _input(path: Path, n: int, broken_every: int | None) -> Path:
    lines = [
        orjson.dumps({"type": "track", "event": "E", "userId": f"u{i}", "messageId": f"m{i}"})
        for i in range(n)
    ]
    if broken_every:
        lines = [b"{broken" if i % broken_every == 0 else line for i, line in enumerate(lines)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _settings(data_dir: Path, interval_s: float) -> Settings:
    return load_settings(
        environ={},
        storage={"data_dir": str(data_dir)},
        pipeline={"commit_max_events": 1000, "commit_interval_s": interval_s},
    )


def _snapshots_and_checkpoint(settings: Settings, name: str) -> tuple[int, dict[str, int]]:
    table = open_catalog(settings).load_table(table_id(settings, name))
    cp = read_checkpoint(table, settings.pipeline.pipeline_id)
    assert cp is not None
    return len(table.metadata.snapshots), dict(cp.positions)


def test_a_table_without_new_rows_commits_its_position_once_at_the_end(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "d", interval_s=3600)
    path = _input(tmp_path / "e.ndjson", 5000, broken_every=None)
    stats = Pipeline(settings, FilesSource([path], chunk_bytes=64 * 1024)).run(once=True)
    assert stats.events == 5000 and stats.failed == 0
    event_snaps, event_cp = _snapshots_and_checkpoint(settings, EVENTS)
    failed_snaps, failed_cp = _snapshots_and_checkpoint(settings, FAILED_EVENTS)
    assert event_snaps >= 3  # a round per 1,000 rows or more
    assert failed_snaps == 1  # only the pass's last round moved its position
    assert failed_cp == event_cp == {str(path.resolve()): path.stat().st_size}
    assert stats.commits == event_snaps + failed_snaps


def test_tables_with_rows_commit_in_every_round(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "d", interval_s=3600)
    path = _input(tmp_path / "e.ndjson", 5000, broken_every=10)
    stats = Pipeline(settings, FilesSource([path], chunk_bytes=64 * 1024)).run(once=True)
    assert stats.failed == 500
    event_snaps, event_cp = _snapshots_and_checkpoint(settings, EVENTS)
    failed_snaps, failed_cp = _snapshots_and_checkpoint(settings, FAILED_EVENTS)
    assert failed_snaps == event_snaps >= 3
    assert failed_cp == event_cp


def test_a_position_only_commit_waits_for_the_commit_interval(tmp_path: Path) -> None:
    """With an interval shorter than any round, the position-only table commits every round."""
    settings = _settings(tmp_path / "d", interval_s=1e-6)
    path = _input(tmp_path / "e.ndjson", 5000, broken_every=None)
    Pipeline(settings, FilesSource([path], chunk_bytes=64 * 1024)).run(once=True)
    event_snaps, _ = _snapshots_and_checkpoint(settings, EVENTS)
    failed_snaps, _ = _snapshots_and_checkpoint(settings, FAILED_EVENTS)
    assert failed_snaps == event_snaps
