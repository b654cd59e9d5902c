"""Dedup of client retries: resends dropped, reused ids with other content refused, the window
rebuilt from what is committed."""

from __future__ import annotations

import time

import pyarrow as pa

from clicklake.enrich.dedup import DedupState
from clicklake.events.schema import EVENTS_ARROW

NOW_US = int(time.time() * 1_000_000)


def batch(ids: list[str | None], props: list[str], app: str = "a", at_us: int = NOW_US) -> pa.RecordBatch:
    n = len(ids)
    cols = {f.name: pa.nulls(n, f.type) for f in EVENTS_ARROW}
    cols["event_id"] = pa.array(ids, pa.large_string())
    cols["app_id"] = pa.array([app] * n, pa.large_string())
    cols["properties"] = pa.array(props, pa.large_string())
    cols["collector_tstamp"] = pa.array([at_us] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.RecordBatch.from_pydict(cols, schema=EVENTS_ARROW)


def test_resends_within_a_batch_and_across_batches() -> None:
    st = DedupState.empty(24)
    fp, verdict = st.judge(batch(["1", "2", "1", "3", "3", None], ["x", "y", "x", "z", "other", "n"]))
    # "1" again with the same content: a resend; "3" again with other content: a conflict
    assert verdict.to_pylist() == ["new", "new", "dup", "new", "conflict", "new"]
    assert fp[0] == fp[2] and fp[3] != fp[4]
    _, verdict = st.judge(batch(["1", "2", "4"], ["x", "changed", "w"]))
    assert verdict.to_pylist() == ["dup", "conflict", "new"]
    # the same id in another app is another event
    _, verdict = st.judge(batch(["1"], ["x"], app="b"))
    assert verdict.to_pylist() == ["new"]


def test_the_window_rebuilt_from_committed_rows_judges_like_the_original_run() -> None:
    first = DedupState.empty(24)
    b1 = batch(["1", "2"], ["x", "y"])
    fp, _ = first.judge(b1)
    committed = pa.table(
        {
            "app_id": b1.column("app_id"),
            "event_id": b1.column("event_id"),
            "event_fingerprint": fp.cast(pa.large_string()),
            "collector_tstamp": b1.column("collector_tstamp"),
        }
    )
    after_restart = DedupState.empty(24)
    after_restart.load(committed)
    _, verdict = after_restart.judge(batch(["1", "2", "5"], ["x", "changed", "v"]))
    assert verdict.to_pylist() == ["dup", "conflict", "new"]
    # rows committed before fingerprints existed count as resends
    legacy = DedupState.empty(24)
    legacy.load(committed.set_column(2, "event_fingerprint", pa.nulls(2, pa.large_string())))
    _, verdict = legacy.judge(batch(["1"], ["anything"]))
    assert verdict.to_pylist() == ["dup"]


def test_ids_older_than_the_window_are_forgotten() -> None:
    st = DedupState.empty(1)
    st.judge(batch(["old"], ["x"], at_us=NOW_US - 2 * 3_600_000_000))
    st.judge(batch(["recent"], ["x"]))
    st.expire(NOW_US)
    assert st.size() == 1
    _, verdict = st.judge(batch(["old", "recent"], ["x", "x"]))
    assert verdict.to_pylist() == ["new", "dup"]


def test_the_window_follows_event_time_so_backfills_dedup_too() -> None:
    week_ago = NOW_US - 7 * 24 * 3_600_000_000
    st = DedupState.empty(24)
    st.judge(batch(["old"], ["x"], at_us=week_ago))
    st.expire()  # counted back from the newest collector time seen, not from the wall clock
    _, verdict = st.judge(batch(["old"], ["x"], at_us=week_ago + 60_000_000))
    assert verdict.to_pylist() == ["dup"]
    st.judge(batch(["later"], ["x"], at_us=week_ago + 2 * 24 * 3_600_000_000))
    st.expire()
    _, verdict = st.judge(batch(["old"], ["x"], at_us=week_ago + 2 * 24 * 3_600_000_000))
    assert verdict.to_pylist() == ["new"]


def test_a_key_hashes_the_same_in_any_batch() -> None:
    """The window finds a key by its hash: the hash of a key must not depend on the other keys of
    its batch (one length or several, contiguous or sliced, with NULLs)."""
    from clicklake.enrich.dedup import _key_hash

    keys = ["a\x1f1", "a\x1f22", "a\x1f333", "a\x1f4444", "é\x1f€" * 5, "", "a\x1f12345678", "b\x1f1"]
    alone = {k: int(_key_hash(None, pa.array([k], pa.large_string()))[0]) for k in keys}
    assert len(set(alone.values())) == len(keys)
    mixed = pa.array(keys * 3 + [None], pa.large_string())
    for piece in (mixed, mixed.slice(1), mixed.slice(5, 9), pa.array(["a\x1f1"] * 4, pa.large_string())):
        got = _key_hash(None, piece).tolist()
        expected = [0 if k is None else alone[k] for k in piece.to_pylist()]
        assert got == expected
