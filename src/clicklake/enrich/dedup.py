"""Dedup of client retries: the same ``event_id`` landed twice within a window.

An SDK that gets no answer resends the same call with the same ``messageId``. Within
``enrich.dedup.window_hours`` (default 24 h, by collector time) a second copy is dropped, one
row per ``(app_id, event_id)`` reaches ``events``. An ``event_fingerprint`` (MD5 of the event
minus its send-time fields) tells a true resend from a different event that reuses an id: the
latter is not dropped silently but marked ``duplicate_id_conflict`` and goes to
``failed_events``.

The window is in memory: a few runs of remembered ids, each sorted by a 64-bit hash of the key
(``app_id``, ``event_id``) with the id's first collector time, its key and its fingerprint
alongside. A batch is judged by binary search of its distinct keys' hashes in each run, so its
cost grows with the batch and the log of the window, not with the window; a hash match is only a
candidate, confirmed by comparing the real keys, so a collision never makes a false ``dup``. New
ids go in as a run of their own; neighbouring runs merge while one is less than twice the next
(at most log2(ids) runs; an id is copied O(log ids) times over its life). Memory is what the
window remembers: 16 bytes (hash, time) + 8 + the key's length + 8 + 16 (fingerprint) per id,
about 100 bytes for UUID ids, so 1M ids take ~100 MB (and twice the largest run during a merge).
Ids older than the window are forgotten every :data:`EXPIRE_EVERY` batches, counted in event
time: back from the newest collector time seen, so a backfill of old data dedups like live
traffic. The window is rebuilt from ``events`` when the pipeline starts, so it holds exactly
what is committed; anything processed but not committed before a crash is processed again in
the same order and gets the same verdict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.enrich.base import Step, append_columns, thread_connection
from clicklake.events.schema import Column

log = logging.getLogger("clicklake.enrich.dedup")

FINGERPRINT = Column("event_fingerprint", "string", "hash of the event without send-time fields")
VERDICT = "dedup_verdict"  # transient column: "dup" rows are dropped, "conflict" rows fail
KEY = "dedup_key"  # transient column: what the window is keyed on, when judging comes later
EXPIRE_EVERY = 50  # batches judged between two sweeps of ids older than the window
_NEW, _DUP, _CONFLICT = 0, 1, 2  # indices into _VERDICTS
_VERDICTS = pa.array(["new", "dup", "conflict"], pa.string())
# A NULL collector time never expires (as ``NULL < cutoff`` is never true in SQL).
_NO_TS = np.iinfo(np.int64).max

# What a resend changes: when it was sent and received, and from where. Everything else a
# client sent is the same in a true resend.
# A 64-bit hash is plenty: fingerprints are only ever compared between events with the same id.
_FINGERPRINT_SQL = """printf('%016x', hash(app_id, event_id, event_type, event_name, user_id, anonymous_id,
    session_id, group_id, previous_id, dvce_created_tstamp, page_url, page_referrer,
    page_title, properties, traits, context))"""


@dataclass
class _Run:
    """Remembered ids sorted by key hash, with what judging needs, row-aligned."""

    h: np.ndarray[Any, np.dtype[np.uint64]]  # hash of the key, ascending
    ts: np.ndarray[Any, np.dtype[np.int64]]  # first collector time, µs (_NO_TS when unknown)
    key: pa.Array  # large_string, the real key: a hash match is only a candidate
    fp: pa.Array  # large_string, NULL for rows committed before fingerprints existed

    def __len__(self) -> int:
        return len(self.h)

    @classmethod
    def of(cls, h: np.ndarray[Any, Any], ts: np.ndarray[Any, Any], key: pa.Array, fp: pa.Array) -> _Run:
        order = np.argsort(h, kind="stable")
        taken = pa.array(order)
        return cls(h[order], ts[order], key.take(taken), fp.take(taken))

    def merged(self, other: _Run) -> _Run:
        """Both runs as one, in hash order: a linear merge, ``other``'s ids placed after
        ``self``'s equal hashes."""
        n = len(self) + len(other)
        slots = np.searchsorted(self.h, other.h, side="right") + np.arange(len(other))
        from_other = np.zeros(n, dtype=bool)
        from_other[slots] = True
        order = np.empty(n, dtype=np.int64)
        order[~from_other] = np.arange(len(self))
        order[slots] = np.arange(len(self), n)
        taken = pa.array(order)
        return _Run(
            np.concatenate([self.h, other.h])[order],
            np.concatenate([self.ts, other.ts])[order],
            pa.concat_arrays([self.key, other.key]).take(taken),
            pa.concat_arrays([self.fp, other.fp]).take(taken),
        )

    def kept(self, keep: np.ndarray[Any, np.dtype[np.bool_]]) -> _Run:
        mask = pa.array(keep)
        return _Run(self.h[keep], self.ts[keep], self.key.filter(mask), self.fp.filter(mask))


@dataclass
class DedupState:
    """The ids seen within the window: a few sorted runs of (key hash, seen time, key,
    fingerprint), probed with binary search and merged as they grow (a log-structured set)."""

    window_us: int
    con: duckdb.DuckDBPyConnection
    # The window follows event time (the newest collector time seen), not the wall clock, so
    # backfills and replays of old data dedup like live traffic.
    high_us: int = 0
    _calls: int = 0
    # Each run is at least twice the size of the next one, so there are at most log2(ids) runs
    # and an id is copied O(log ids) times over its life. A key is in at most one run.
    _runs: list[_Run] = field(default_factory=list)

    @classmethod
    def empty(cls, window_hours: float) -> DedupState:
        # Only hashes keys and rebuilds the window from committed rows: no state in it.
        con = duckdb.connect(config={"threads": 1, "memory_limit": "256MB"})
        return cls(int(window_hours * 3_600_000_000), con)

    def load(self, committed: pa.Table) -> None:
        """Add committed events (``app_id``, ``event_id``, ``event_fingerprint``, ``collector_tstamp``)."""
        self._advance(committed.column("collector_tstamp"))
        self.con.register("committed_in", committed)
        try:
            # The first copy of each key, as judging would have remembered it.
            firsts = self.con.sql(
                """SELECT k, fp, ts FROM (
                     SELECT app_id || chr(31) || event_id AS k, event_fingerprint AS fp,
                            epoch_us(collector_tstamp) AS ts
                     FROM committed_in WHERE event_id IS NOT NULL)
                   WHERE k IS NOT NULL
                   QUALIFY row_number() OVER (PARTITION BY k ORDER BY ts) = 1"""
            ).to_arrow_table()
        finally:
            self.con.unregister("committed_in")
        if firsts.num_rows == 0:
            return
        key = _large(firsts.column("k"))
        h = _key_hash(self.con, key)
        found, _ = self._probe(key, h)
        fresh = np.flatnonzero(~found)
        ts = firsts.column("ts").combine_chunks().fill_null(_NO_TS).to_numpy(zero_copy_only=False)
        taken = pa.array(fresh)
        self._remember(h[fresh], ts[fresh], key.take(taken), _large(firsts.column("fp")).take(taken))

    def _advance(self, ts: pa.Array | pa.ChunkedArray) -> None:
        newest = pc.max(ts).as_py()
        if newest is not None:
            self.high_us = max(self.high_us, int(newest.timestamp() * 1_000_000))

    def judge(self, batch: pa.RecordBatch) -> tuple[pa.Array, pa.Array]:
        """Fingerprint each row and say ``new``, ``dup`` or ``conflict``; remember the new ones."""
        key, fp = keys(batch, self.con)
        return fp, self.judge_keys(key, fp, batch.column("collector_tstamp"))

    def judge_keys(
        self, key: pa.Array, fp: pa.Array, collector_tstamp: pa.Array | pa.ChunkedArray
    ) -> pa.Array:
        """Say ``new``, ``dup`` or ``conflict`` for rows already keyed and fingerprinted by
        :func:`keys` (which needs no state, so it can run anywhere), in order; remember the new
        ones. Batches must come in order: each is judged against every one before it.

        A row with a NULL key is new. A row whose key is remembered is a ``dup`` when the
        remembered fingerprint is NULL or equal to its own, else a ``conflict``. Otherwise the
        first row of its key in the batch is new (and remembered) and a later one is a ``dup``
        when its fingerprint equals that first row's, else a ``conflict`` (a NULL fingerprint
        equals nothing)."""
        self._calls += 1
        if self._calls % EXPIRE_EVERY == 0:
            self.expire()
        self._advance(collector_tstamp)
        n = len(key)
        if n == 0:
            return pa.array([], pa.string())
        key, fp = _large(key), _large(fp)
        # Row -> its key among the batch's distinct keys (-1: NULL key), exact string equality.
        encoded = pc.dictionary_encode(key)
        distinct = _large(encoded.dictionary)
        idx = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        valid = idx >= 0
        if len(distinct) == 0:
            return pa.array(["new"] * n, pa.string())
        rows = np.arange(n, dtype=np.int64)
        first = np.full(len(distinct), n, dtype=np.int64)
        np.minimum.at(first, idx[valid], rows[valid])
        at = np.where(valid, idx, 0)
        is_first = valid & (first[at] == rows)
        h = _key_hash(self.con, distinct)
        found, seen_fp = self._probe(distinct, h)

        taken = pa.array(at)
        seen_r = valid & found[at]
        seen_fp_r = seen_fp.take(taken)
        same_as_seen = _true(pc.equal(fp, seen_fp_r)) | (seen_r & _true(pc.is_null(seen_fp_r)))
        same_as_first = _true(pc.equal(fp, fp.take(pa.array(first[at]))))
        code = np.where(
            seen_r,
            np.where(same_as_seen, _DUP, _CONFLICT),
            np.where(is_first | ~valid, _NEW, np.where(same_as_first, _DUP, _CONFLICT)),
        )
        fresh = np.flatnonzero(is_first & ~seen_r)
        if len(fresh):
            ts = _epoch_us(collector_tstamp)
            picked = pa.array(fresh)
            self._remember(h[idx[fresh]], ts[fresh], key.take(picked), fp.take(picked))
        return _VERDICTS.take(pa.array(code.astype(np.int8)))

    def _probe(
        self, key: pa.Array, h: np.ndarray[Any, np.dtype[np.uint64]]
    ) -> tuple[np.ndarray[Any, np.dtype[np.bool_]], pa.Array]:
        """For distinct ``key`` (hashed ``h``): whether each is remembered, and its remembered
        fingerprint (NULL when not remembered or remembered without one)."""
        found = np.zeros(len(key), dtype=bool)
        parts: list[pa.Array] = []
        where = np.full(len(key), -1, dtype=np.int64)  # into the concatenation of parts
        offset = 0
        # Searched in hash order, each search starts near the last one (cache-friendly).
        order = np.argsort(h)
        sorted_h = h[order]
        for run in self._runs:
            lo = np.empty(len(h), dtype=np.int64)
            lo[order] = np.searchsorted(run.h, sorted_h, side="left")
            last = len(run) - 1
            hit = (lo <= last) & (run.h[np.minimum(lo, last)] == h) & ~found
            if not hit.any():
                continue
            more = hit & (lo < last) & (run.h[np.minimum(lo + 1, last)] == h)
            hit_q: list[np.ndarray[Any, Any]] = []
            hit_p: list[np.ndarray[Any, Any]] = []
            one = np.flatnonzero(hit & ~more)
            if len(one):
                same = _true(pc.equal(run.key.take(pa.array(lo[one])), key.take(pa.array(one))))
                hit_q.append(one[same])
                hit_p.append(lo[one][same])
            # Several remembered keys share this hash (a 64-bit collision): compare each.
            for q in np.flatnonzero(more):
                wanted = key[int(q)].as_py()
                p = int(lo[q])
                while p <= last and run.h[p] == h[q]:
                    if run.key[p].as_py() == wanted:
                        hit_q.append(np.array([q]))
                        hit_p.append(np.array([p]))
                        break
                    p += 1
            if not hit_q:
                continue
            q_all, p_all = np.concatenate(hit_q), np.concatenate(hit_p)
            if not len(q_all):
                continue
            found[q_all] = True
            where[q_all] = offset + np.arange(len(q_all))
            parts.append(run.fp.take(pa.array(p_all)))
            offset += len(q_all)
        fps = pa.concat_arrays(parts) if parts else pa.array([], pa.large_string())
        return found, fps.take(pa.array(where, mask=where < 0))

    def _remember(
        self, h: np.ndarray[Any, Any], ts: np.ndarray[Any, Any], key: pa.Array, fp: pa.Array
    ) -> None:
        """Add ids known to be new to the window."""
        if len(h) == 0:
            return
        self._runs.append(_Run.of(h.astype(np.uint64), ts.astype(np.int64), key, fp))
        self._settle()

    def _settle(self) -> None:
        """Merge neighbouring runs until each is at least twice the next."""
        runs = self._runs
        i = len(runs) - 1
        while i >= 1:
            if len(runs[i - 1]) < 2 * len(runs[i]):
                runs[i - 1 : i + 1] = [runs[i - 1].merged(runs[i])]
                i = min(i, len(runs) - 1)
            else:
                i -= 1

    def expire(self, now_us: int | None = None) -> None:
        """Forget ids older than the window, counted back from ``now_us`` (default: the newest
        collector time seen)."""
        now_us = now_us if now_us is not None else self.high_us
        cutoff = now_us - self.window_us
        runs: list[_Run] = []
        for run in self._runs:
            keep = run.ts >= cutoff
            if keep.all():
                runs.append(run)
            elif keep.any():
                runs.append(run.kept(keep))
        self._runs = runs
        self._settle()

    def size(self) -> int:
        """How many ids the window remembers."""
        return sum(len(run) for run in self._runs)

    def nbytes(self) -> int:
        """Bytes the window's runs hold."""
        return sum(r.h.nbytes + r.ts.nbytes + r.key.nbytes + r.fp.nbytes for r in self._runs)


def _large(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one ``large_string`` array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values if values.type == pa.large_string() else pc.cast(values, pa.large_string())


def _true(mask: pa.Array) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """A boolean Arrow array as numpy, NULL as false."""
    return np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _epoch_us(ts: pa.Array | pa.ChunkedArray) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Collector times as µs since the epoch, as DuckDB's ``epoch_us``; NULL as :data:`_NO_TS`."""
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    if pa.types.is_timestamp(ts.type) and ts.type.unit != "us":
        ts = pc.cast(ts, pa.timestamp("us", ts.type.tz), safe=False)
    as_int = pc.cast(ts, pa.int64()).fill_null(_NO_TS)
    return np.asarray(as_int.to_numpy(zero_copy_only=False), dtype=np.int64)


def _key_hash(con: duckdb.DuckDBPyConnection, key: pa.Array) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """A 64-bit hash of each (non-NULL) key: where to look, never proof of a match."""
    con.register("key_in", pa.table({"k": key}))
    try:
        out = con.sql("SELECT hash(k) AS h FROM key_in").to_arrow_table()
    finally:
        con.unregister("key_in")
    return np.asarray(out.column("h").combine_chunks().to_numpy(zero_copy_only=False), dtype=np.uint64)


def keys(batch: pa.RecordBatch, con: duckdb.DuckDBPyConnection) -> tuple[pa.Array, pa.Array]:
    """``(key, fingerprint)`` of each row: what :meth:`DedupState.judge_keys` judges. Pure, on
    any connection (one per thread)."""
    con.register("fp_in", pa.Table.from_batches([batch]))
    try:
        out = con.sql(
            f"SELECT app_id || chr(31) || event_id AS k, {_FINGERPRINT_SQL} AS fp FROM fp_in"
        ).to_arrow_table()
    finally:
        con.unregister("fp_in")
    return out.column("k").combine_chunks(), out.column("fp").combine_chunks()


def fingerprints(batch: pa.RecordBatch, con: duckdb.DuckDBPyConnection) -> pa.Array:
    """The ``event_fingerprint`` of each row, exactly as :meth:`DedupState.judge` computes it
    (the Spark engine fingerprints on its workers and judges on the driver)."""
    return pc.cast(keys(batch, con)[1], pa.large_string())


def key_step(state: DedupState) -> Step:
    """The dedup step split for an engine that enriches batches out of order (several at once)
    and judges them in order afterwards: it appends ``event_fingerprint`` and the transient
    :data:`KEY` column; the engine passes both, with ``collector_tstamp``, to
    :meth:`DedupState.judge_keys` in source order and drops the verdict's losers and
    :data:`KEY`. Rows get the same verdicts as with the step :func:`build` makes."""

    def mark(batch: pa.RecordBatch) -> pa.RecordBatch:
        key, fp = keys(batch, thread_connection())
        return append_columns(
            batch, {FINGERPRINT.name: pc.cast(fp, pa.large_string()), KEY: pc.cast(key, pa.large_string())}
        )

    return Step("dedup", mark, (FINGERPRINT,), state=state)


def build(settings: Settings, state: DedupState | None = None) -> Step:
    """The dedup step; ``state`` is the window (the pipeline rebuilds it from ``events``)."""
    st = state or DedupState.empty(settings.enrich.dedup.window_hours)

    def dedup(batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.num_rows == 0:
            return append_columns(
                batch,
                {FINGERPRINT.name: pa.array([], pa.large_string()), VERDICT: pa.array([], pa.large_string())},
            )
        fp, verdict = st.judge(batch)
        return append_columns(
            batch,
            {FINGERPRINT.name: pc.cast(fp, pa.large_string()), VERDICT: pc.cast(verdict, pa.large_string())},
        )

    return Step("dedup", dedup, (FINGERPRINT,), state=st)
