"""The checkpointed sink: skip what a table holds, survive races, resolve ambiguous commits."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pytest

from clicklake.config import Settings
from clicklake.events.schema import FAILED_ARROW
from clicklake.exceptions import TerminalError
from clicklake.lakehouse.catalog import FAILED_EVENTS, ensure_tables, ingest_tables, open_catalog, table_id
from clicklake.lakehouse.checkpoint import read_checkpoint
from clicklake.lakehouse.sink import TableSink


def rows(stream: str, offsets: list[int]) -> pa.Table:
    n = len(offsets)
    cols: dict[str, Any] = {
        "source_stream": pa.array([stream] * n, pa.large_string()),
        "source_offset": pa.array(offsets, pa.int64()),
        "source_index": pa.array([0] * n, pa.int32()),
        "error_type": pa.array(["invalid_json"] * n, pa.large_string()),
        "collector_tstamp": pa.array([1_795_690_800_000_000] * n, pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        ),
    }
    return pa.table([cols.get(f.name, pa.nulls(n, f.type)) for f in FAILED_ARROW], schema=FAILED_ARROW)


def sink(settings: Settings, pipeline_id: str) -> TableSink:
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings, ingest_tables(settings))
    return TableSink(
        catalog.load_table(table_id(settings, FAILED_EVENTS)), pipeline_id, "test", "failed_tstamp"
    )


def scan(settings: Settings) -> pa.Table:
    return open_catalog(settings).load_table(table_id(settings, FAILED_EVENTS)).scan().to_arrow()


def test_rows_the_checkpoint_holds_are_skipped(settings: Settings) -> None:
    s = sink(settings, "p")
    assert s.add(rows("a", [0, 10, 20])) == 3
    s.commit({"a": 30})
    # A restart re-reads from offset 0 of "a" and a new stream "b".
    s2 = sink(settings, "p")
    assert s2.checkpoint == {"a": 30}
    assert s2.add(rows("a", [0, 10, 20, 30])) == 1
    assert s2.add(rows("b", [0])) == 1
    s2.commit({"a": 40, "b": 10})
    t = scan(settings)
    assert sorted(zip(t["source_stream"].to_pylist(), t["source_offset"].to_pylist(), strict=True)) == [
        ("a", 0),
        ("a", 10),
        ("a", 20),
        ("a", 30),
        ("b", 0),
    ]
    assert t["failed_tstamp"].null_count == 0


def test_two_writers_committing_concurrently_lose_nothing(settings: Settings) -> None:
    sinks = [sink(settings, "writer-a"), sink(settings, "writer-b")]
    commits = 15
    errors: list[BaseException] = []

    def work(s: TableSink, stream: str) -> None:
        try:
            for i in range(commits):
                s.add(rows(stream, [i * 10, i * 10 + 5]))
                s.commit({stream: i * 10 + 10})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, n)) for s, n in zip(sinks, ["sa", "sb"], strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    t = scan(settings)
    assert t.num_rows == 2 * 2 * commits
    got = sorted(zip(t["source_stream"].to_pylist(), t["source_offset"].to_pylist(), strict=True))
    want = sorted((st, o) for st in ("sa", "sb") for i in range(commits) for o in (i * 10, i * 10 + 5))
    assert got == want
    table = open_catalog(settings).load_table(table_id(settings, FAILED_EVENTS))
    for pid, stream in (("writer-a", "sa"), ("writer-b", "sb")):
        cp = read_checkpoint(table, pid)
        assert cp is not None and cp.positions == {stream: commits * 10}
    # The race really happened: some commits had to be retried, or they interleaved.
    assert len(table.metadata.snapshots) == 2 * commits


def test_an_ambiguous_commit_that_landed_is_not_committed_twice(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = sink(settings, "p")
    s.add(rows("a", [0, 1]))
    original = type(s.table).transaction
    calls = {"n": 0}

    def flaky(self: Any) -> Any:
        txn = original(self)
        real_commit = txn.commit_transaction

        def commit_then_fail() -> Any:
            result = real_commit()
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError("connection reset after the catalog accepted the commit")
            return result

        txn.commit_transaction = commit_then_fail
        return txn

    monkeypatch.setattr(type(s.table), "transaction", flaky)
    s.commit({"a": 2})
    monkeypatch.undo()
    assert scan(settings).num_rows == 2
    assert calls["n"] == 1


def test_same_pipeline_id_twice_is_refused(settings: Settings) -> None:
    a, b = sink(settings, "same"), sink(settings, "same")
    a.add(rows("x", [0]))
    a.commit({"x": 1})
    b.add(rows("x", [0]))
    with pytest.raises(TerminalError, match="another process committed"):
        b.commit({"x": 1})
    assert scan(settings).num_rows == 1
