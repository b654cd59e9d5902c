"""The in-memory dedup window judges exactly like the DuckDB table it replaced, kept here as the
reference: random batches with resends, reused ids, NULL keys and fingerprints, windows rebuilt
from committed rows (some without fingerprints), expiry, and hash collisions forced by a weak
hash."""

from __future__ import annotations

import itertools
import random
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from clicklake.enrich import dedup
from clicklake.enrich.dedup import DedupState
from clicklake.events.schema import EVENTS_ARROW

HOUR_US = 3_600_000_000
T0 = 1_700_000_000_000_000


class Reference:
    """The window as a DuckDB table, as it was before the sorted runs (judged by a LEFT JOIN of
    each batch against the whole table)."""

    def __init__(self, window_hours: float) -> None:
        self.window_us = int(window_hours * HOUR_US)
        self.con = duckdb.connect(config={"threads": 1})
        self.con.execute("CREATE TABLE seen (k VARCHAR, fp VARCHAR, ts BIGINT)").fetchall()

    def load(self, committed: pa.Table) -> None:
        self.con.register("committed_in", committed)
        self.con.execute(
            """INSERT INTO seen
               SELECT c.k, c.fp, c.ts FROM (
                 SELECT app_id || chr(31) || event_id AS k, event_fingerprint AS fp,
                        epoch_us(collector_tstamp) AS ts
                 FROM committed_in WHERE event_id IS NOT NULL
                 QUALIFY row_number() OVER (PARTITION BY app_id, event_id ORDER BY collector_tstamp) = 1
               ) c ANTI JOIN seen s ON s.k = c.k"""
        ).fetchall()
        self.con.unregister("committed_in")

    def judge_keys(self, key: pa.Array, fp: pa.Array, ts: pa.Array) -> list[Any]:
        self.con.register("b", pa.table({"k": key, "fp": fp, "ts": ts}))
        out = self.con.sql(
            """WITH x AS (
                  SELECT row_number() OVER () AS i, k, fp, epoch_us(ts) AS ts FROM b),
                firsts AS (
                  SELECT i, k, fp, ts,
                         first_value(fp) OVER (PARTITION BY k ORDER BY i) AS first_fp,
                         row_number() OVER (PARTITION BY k ORDER BY i) AS nth
                  FROM x)
                SELECT f.i,
                  CASE WHEN f.k IS NULL THEN 'new'
                       WHEN s.k IS NOT NULL AND (s.fp IS NULL OR s.fp = f.fp) THEN 'dup'
                       WHEN s.k IS NOT NULL THEN 'conflict'
                       WHEN f.nth > 1 AND f.first_fp = f.fp THEN 'dup'
                       WHEN f.nth > 1 THEN 'conflict'
                       ELSE 'new' END AS verdict,
                  f.k, f.fp, f.ts
                FROM firsts f LEFT JOIN seen s ON s.k = f.k
                ORDER BY f.i"""
        ).to_arrow_table()
        self.con.register("judged", out)
        self.con.execute(
            "INSERT INTO seen SELECT k, fp, ts FROM judged WHERE verdict = 'new' AND k IS NOT NULL"
        ).fetchall()
        self.con.unregister("judged")
        self.con.unregister("b")
        return out.column("verdict").to_pylist()

    def expire(self, now_us: int) -> None:
        self.con.execute("DELETE FROM seen WHERE ts < ?", [now_us - self.window_us]).fetchall()

    def size(self) -> int:
        # Rows loaded with a NULL app_id have a NULL key that never matches; the new window
        # does not keep them.
        return int(self.con.execute("SELECT count(k) FROM seen").fetchall()[0][0])


def _stamps(values: list[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _random_batch(rng: random.Random, ids: int, at_us: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    n = rng.randint(0, 40)
    keys: list[str | None] = []
    fps: list[str | None] = []
    stamps: list[int | None] = []
    for _ in range(n):
        keys.append(None if rng.random() < 0.08 else f"app{rng.randint(0, 1)}\x1fid{rng.randint(0, ids)}")
        # Few fingerprints: repeats are mostly resends, sometimes reused ids; some NULL.
        fps.append(None if rng.random() < 0.05 else f"{rng.randint(0, 2):016x}")
        stamps.append(None if rng.random() < 0.02 else at_us + rng.randint(0, 60_000_000))
    key_type = rng.choice([pa.string(), pa.large_string()])
    return pa.array(keys, key_type), pa.array(fps, key_type), _stamps(stamps)


def _random_committed(rng: random.Random, ids: int, at_us: int) -> pa.Table:
    n = rng.randint(0, 60)
    app = [None if rng.random() < 0.05 else f"app{rng.randint(0, 1)}" for _ in range(n)]
    event = [None if rng.random() < 0.05 else f"id{rng.randint(0, ids)}" for _ in range(n)]
    fps = [None if rng.random() < 0.3 else f"{rng.randint(0, 2):016x}" for _ in range(n)]
    # Distinct times: which copy of an id is "first" must not depend on row order.
    stamps = rng.sample(range(at_us - 2 * HOUR_US, at_us), n)
    return pa.table(
        {
            "app_id": pa.array(app, pa.large_string()),
            "event_id": pa.array(event, pa.large_string()),
            "event_fingerprint": pa.array(fps, pa.large_string()),
            "collector_tstamp": _stamps(list(stamps)),
        }
    )


_REAL_HASH = dedup._key_hash


def _weak_hash(con: duckdb.DuckDBPyConnection, key: pa.Array) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Four hash values for all keys: nearly every lookup meets a collision."""
    return _REAL_HASH(con, key) % np.uint64(4)


@pytest.mark.parametrize("collide", [False, True], ids=["hash", "colliding-hash"])
@pytest.mark.parametrize("seed", range(8))
def test_verdicts_and_window_match_the_duckdb_reference(
    seed: int, collide: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if collide:
        monkeypatch.setattr(dedup, "_key_hash", _weak_hash)
    rng = random.Random(seed)
    ids = rng.choice([5, 30, 300])
    new, ref = DedupState.empty(1), Reference(1)
    at = T0
    if rng.random() < 0.6:
        committed = _random_committed(rng, ids, at)
        new.load(committed)
        ref.load(committed)
        assert new.size() == ref.size()
    for step in range(80):
        at += rng.randint(0, 20 * 60_000_000)  # up to 20 min a batch: ids age out of 1 h
        key, fp, ts = _random_batch(rng, ids, at)
        if (new._calls + 1) % dedup.EXPIRE_EVERY == 0:
            ref.expire(new.high_us)  # the sweep the new state makes before judging this batch
        assert new.judge_keys(key, fp, ts).to_pylist() == ref.judge_keys(key, fp, ts), step
        if rng.random() < 0.1:
            now = at + rng.randint(-HOUR_US, HOUR_US)
            new.expire(now)
            ref.expire(now)
        if rng.random() < 0.05:  # a second load into a window that is not empty
            committed = _random_committed(rng, ids, at)
            new.load(committed)
            ref.load(committed)
        assert new.size() == ref.size(), step


def test_a_colliding_hash_is_not_taken_for_a_resend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "_key_hash", lambda con, key: np.zeros(len(key), np.uint64))
    st = DedupState.empty(24)
    fp = pa.array(["f", "f", "f"], pa.large_string())
    ts = _stamps([T0] * 3)
    verdict = st.judge_keys(pa.array(["a\x1f1", "a\x1f2", "a\x1f1"], pa.large_string()), fp, ts)
    assert verdict.to_pylist() == ["new", "new", "dup"]
    verdict = st.judge_keys(pa.array(["a\x1f3", "a\x1f2", "a\x1f1"], pa.large_string()), fp, ts)
    assert verdict.to_pylist() == ["new", "dup", "dup"]
    assert st.size() == 3


def test_runs_stay_few_as_the_window_grows() -> None:
    st = DedupState.empty(24)
    for b in range(64):
        keys = pa.array([f"a\x1f{b}-{i}" for i in range(100)], pa.large_string())
        st.judge_keys(keys, keys, _stamps([T0] * 100))
    assert st.size() == 6400
    # Each run at least twice the next: at most log2(64) + 1 runs of 100-id batches.
    assert len(st._runs) <= 7
    sizes = [len(r) for r in st._runs]
    assert all(a >= 2 * b for a, b in itertools.pairwise(sizes))


def test_keys_and_fingerprints_are_what_the_sql_gave() -> None:
    """The key joined and the fingerprint formatted outside DuckDB are the strings the SQL
    (``app_id || chr(31) || event_id``, ``printf('%016x', hash(...))``) made, NULLs included."""
    rng = random.Random(7)
    n = 400
    cols = {f.name: pa.nulls(n, f.type) for f in EVENTS_ARROW}
    cols["app_id"] = pa.array([None if i % 17 == 0 else f"app{i % 3}" for i in range(n)], pa.large_string())
    cols["event_id"] = pa.array([None if i % 13 == 0 else f"id{i}" for i in range(n)], pa.large_string())
    cols["properties"] = pa.array([f'{{"v": {rng.random()}}}' for _ in range(n)], pa.large_string())
    cols["collector_tstamp"] = _stamps([T0 + i for i in range(n)])
    batch = pa.RecordBatch.from_pydict(cols, schema=EVENTS_ARROW)
    con = duckdb.connect()
    con.register("fp_in", pa.Table.from_batches([batch]))
    expected = con.sql(
        f"SELECT app_id || chr(31) || event_id AS k, printf('%016x', {dedup._FINGERPRINT_SQL}) AS fp FROM fp_in"
    ).to_arrow_table()
    key, fp = dedup.keys(batch, con)
    assert key.to_pylist() == expected.column("k").to_pylist()
    assert fp.to_pylist() == expected.column("fp").to_pylist()
    assert any(v.startswith("0") for v in fp.to_pylist())  # leading zeros kept
