"""Dedup of client retries: the same ``event_id`` landed twice within a window.

An SDK that gets no answer resends the same call with the same ``messageId``. Within
``enrich.dedup.window_hours`` (default 24 h, by collector time) a second copy is dropped, one
row per ``(app_id, event_id)`` reaches ``events``. An ``event_fingerprint`` (a 64-bit hash of the event
minus its send-time fields) tells a true resend from a different event that reuses an id: the
latter is not dropped silently but marked ``duplicate_id_conflict`` and goes to
``failed_events``.

The window is in memory: a few runs of remembered ids, each sorted by a 64-bit hash of the key
(``app_id``, ``event_id``) with the id's first collector time and where its key and fingerprint
are stored (appended a batch at a time, never moved by a merge). A batch is judged by binary
search of its distinct keys' hashes in each run, so its cost grows with the batch and the log of
the window, not with the window; a hash match is only a candidate, confirmed by comparing the
real keys, so a collision never makes a false ``dup``. New ids go in as a run of their own;
neighbouring runs merge while one is less than twice the next (at most log2(ids) runs; an id's
24 bytes are copied O(log ids) times over its life). Memory is what the window remembers:
24 bytes (hash, time, place) + 8 + the key's length + 8 + 16 (fingerprint) per id, about 100
bytes for UUID ids, so 1M ids take ~100 MB; the keys of forgotten ids are dropped when they
outnumber the remembered ones (so at most twice that, between two sweeps).
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
from clicklake.enrich import kernels
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
# client sent is the same in a true resend: the columns, and in context what they do not hold
# (the decoder drops a context member a column holds, so the columns it came from are here).
# A 64-bit hash is plenty: fingerprints are only ever compared between events with the same id.
# Written as 16 lower-case hex digits (what ``printf('%016x', ...)`` gives), formatted in numpy.
_FINGERPRINT_SQL = """hash(app_id, event_id, event_type, event_name, user_id, anonymous_id,
    session_id, group_id, previous_id, dvce_created_tstamp, page_url, page_path, page_referrer,
    page_title, user_agent, library_name, library_version, properties, traits, context)"""
_FINGERPRINT_COLUMNS = [c.strip() for c in _FINGERPRINT_SQL[len("hash(") : -1].split(",")]
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


@dataclass
class _Run:
    """Remembered ids sorted by key hash: numbers only, so merging runs moves 24 bytes an id."""

    h: np.ndarray[Any, np.dtype[np.uint64]]  # hash of the key, ascending
    ts: np.ndarray[Any, np.dtype[np.int64]]  # first collector time, µs (_NO_TS when unknown)
    ref: np.ndarray[Any, np.dtype[np.int64]]  # where the key and fingerprint are stored

    def __len__(self) -> int:
        return len(self.h)

    @classmethod
    def of(
        cls,
        h: np.ndarray[Any, Any],
        ts: np.ndarray[Any, Any],
        ref: np.ndarray[Any, Any],
        order: np.ndarray[Any, Any] | None = None,
    ) -> _Run:
        """A run of these ids; ``order``: the argsort of ``h``, when the caller has it."""
        if order is None:
            order = np.argsort(h, kind="stable")
        return cls(h[order], ts[order], ref[order])

    def merged(self, other: _Run) -> _Run:
        """Both runs as one, in hash order: a linear merge, ``other``'s ids placed after
        ``self``'s equal hashes."""
        n = len(self) + len(other)
        slots = np.searchsorted(self.h, other.h, side="right") + np.arange(len(other))
        mine = np.ones(n, dtype=bool)
        mine[slots] = False
        out = _Run(np.empty(n, np.uint64), np.empty(n, np.int64), np.empty(n, np.int64))
        for name in ("h", "ts", "ref"):
            merged = getattr(out, name)
            merged[mine] = getattr(self, name)
            merged[slots] = getattr(other, name)
        return out

    def kept(self, keep: np.ndarray[Any, np.dtype[np.bool_]]) -> _Run:
        return _Run(self.h[keep], self.ts[keep], self.ref[keep])


@dataclass
class DedupState:
    """The ids seen within the window: a few sorted runs of (key hash, seen time, place of key
    and fingerprint), probed with binary search and merged as they grow (a log-structured set)."""

    window_us: int
    con: duckdb.DuckDBPyConnection
    # The window follows event time (the newest collector time seen), not the wall clock, so
    # backfills and replays of old data dedup like live traffic.
    high_us: int = 0
    _calls: int = 0
    # Each run is at least twice the size of the next one, so there are at most log2(ids) runs
    # and an id is copied O(log ids) times over its life. A key is in at most one run.
    _runs: list[_Run] = field(default_factory=list)
    # Keys and fingerprints (large_string), appended a batch at a time and never moved but by a
    # rebuild: an id's ``ref`` is its place, counted across segments from ``_bases``.
    _segments: list[tuple[pa.Array, pa.Array]] = field(default_factory=list)
    _bases: list[int] = field(default_factory=list)
    _stored: int = 0  # entries in the segments, expired ones included until a rebuild

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
        rows = np.arange(n, dtype=np.int64)
        h, order = _distinct_hashes(self.con, key)
        if h is not None:
            # The usual batch: no NULL and no repeated key (distinct hashes prove it), so the
            # rows are the distinct keys, in order, with no dictionary of the strings to build.
            distinct, idx = key, rows
        else:
            # Row -> its key among the batch's distinct keys (-1: NULL key), exact string equality.
            encoded = pc.dictionary_encode(key)
            distinct = _large(encoded.dictionary)
            idx = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            if len(distinct) == 0:
                return pa.array(["new"] * n, pa.string())
            h, order = _key_hash(self.con, distinct), None
        valid = idx >= 0
        first = np.full(len(distinct), n, dtype=np.int64)
        np.minimum.at(first, idx[valid], rows[valid])
        at = np.where(valid, idx, 0)
        is_first = valid & (first[at] == rows)
        found, seen_fp = self._probe(distinct, h, order)

        seen_r = valid & found[at]
        repeat = valid & ~is_first
        code = np.full(n, _NEW, dtype=np.int8)
        # Resends are rare: fingerprints are compared only when some row is seen or repeated.
        if seen_r.any():
            seen_fp_r = seen_fp.take(pa.array(at))
            same = _true(pc.equal(fp, seen_fp_r)) | _true(pc.is_null(seen_fp_r))
            code[seen_r] = np.where(same[seen_r], _DUP, _CONFLICT)
        later = repeat & ~seen_r
        if later.any():
            same = _true(pc.equal(fp, fp.take(pa.array(first[at]))))
            code[later] = np.where(same[later], _DUP, _CONFLICT)
        fresh = np.flatnonzero(is_first & ~seen_r)
        if len(fresh):
            ts = _epoch_us(collector_tstamp)
            if len(fresh) == n:  # the usual batch: every row a new id, no copy of the strings
                # (and, when the rows are the distinct keys, their hashes already sorted once)
                self._remember(h[idx], ts, key, fp, order)
            else:
                picked = pa.array(fresh)
                self._remember(h[idx[fresh]], ts[fresh], key.take(picked), fp.take(picked))
        return _VERDICTS.take(pa.array(code))

    def _probe(
        self,
        key: pa.Array,
        h: np.ndarray[Any, np.dtype[np.uint64]],
        order: np.ndarray[Any, np.dtype[np.intp]] | None = None,
    ) -> tuple[np.ndarray[Any, np.dtype[np.bool_]], pa.Array]:
        """For distinct ``key`` (hashed ``h``, ``order`` its argsort when known): whether each is
        remembered, and its remembered fingerprint (NULL when not remembered or remembered
        without one)."""
        cand_q: list[np.ndarray[Any, Any]] = []
        cand_ref: list[np.ndarray[Any, Any]] = []
        # Searched in hash order, each search starts near the last one (cache-friendly).
        if order is None:
            order = np.argsort(h)
        sorted_h = h[order]
        for run in self._runs:
            lo = np.empty(len(h), dtype=np.int64)
            lo[order] = np.searchsorted(run.h, sorted_h, side="left")
            last = len(run) - 1
            q = np.flatnonzero((lo <= last) & (run.h[np.minimum(lo, last)] == h))
            if not len(q):
                continue
            # Every remembered id with that hash is a candidate (several: a 64-bit collision).
            start = lo[q]
            count = np.searchsorted(run.h, h[q], side="right") - start
            within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
            cand_q.append(np.repeat(q, count))
            cand_ref.append(run.ref[np.repeat(start, count) + within])
        found = np.zeros(len(key), dtype=bool)
        if not cand_q:
            return found, pa.nulls(len(key), pa.large_string())
        qs, refs = np.concatenate(cand_q), np.concatenate(cand_ref)
        stored_key, stored_fp = self._gather(refs)
        # Keys are unique in the window: at most one candidate of a key is the key itself.
        same = _true(pc.equal(stored_key, key.take(pa.array(qs))))
        hits = qs[same]
        found[hits] = True
        where = np.full(len(key), -1, dtype=np.int64)
        where[hits] = np.arange(len(hits))
        return found, stored_fp.filter(pa.array(same)).take(pa.array(where, mask=where < 0))

    def _gather(self, refs: np.ndarray[Any, np.dtype[np.int64]]) -> tuple[pa.Array, pa.Array]:
        """The stored keys and fingerprints at ``refs``, in that order."""
        bases = np.asarray(self._bases, dtype=np.int64)
        seg = np.searchsorted(bases, refs, side="right") - 1
        order = np.argsort(seg, kind="stable")
        keys: list[pa.Array] = []
        fps: list[pa.Array] = []
        bounds = np.flatnonzero(np.diff(seg[order])) + 1
        for part in np.split(order, bounds):
            s = int(seg[part[0]])
            local = pa.array(refs[part] - bases[s])
            keys.append(self._segments[s][0].take(local))
            fps.append(self._segments[s][1].take(local))
        back = np.empty(len(refs), dtype=np.int64)
        back[order] = np.arange(len(refs))
        unsort = pa.array(back)
        return pa.concat_arrays(keys).take(unsort), pa.concat_arrays(fps).take(unsort)

    def _remember(
        self,
        h: np.ndarray[Any, Any],
        ts: np.ndarray[Any, Any],
        key: pa.Array,
        fp: pa.Array,
        order: np.ndarray[Any, Any] | None = None,
    ) -> None:
        """Add ids known to be new to the window (``order``: the argsort of ``h``, if known)."""
        if len(h) == 0:
            return
        ref = np.arange(self._stored, self._stored + len(h), dtype=np.int64)
        self._segments.append((key, fp))
        self._bases.append(self._stored)
        self._stored += len(h)
        self._runs.append(_Run.of(h.astype(np.uint64), ts.astype(np.int64), ref, order))
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
        live = self.size()
        if self._stored - live > live:  # more forgotten than remembered in the segments
            self._rebuild()

    def _rebuild(self) -> None:
        """Keep only the remembered ids' keys and fingerprints, in one segment."""
        refs = [run.ref for run in self._runs]
        if not refs:
            self._segments, self._bases, self._stored = [], [], 0
            return
        key, fp = self._gather(np.concatenate(refs))
        at = 0
        for run in self._runs:
            run.ref = np.arange(at, at + len(run), dtype=np.int64)
            at += len(run)
        self._segments, self._bases, self._stored = [(key, fp)], [0], at

    def size(self) -> int:
        """How many ids the window remembers."""
        return sum(len(run) for run in self._runs)

    def nbytes(self) -> int:
        """Bytes the window holds: runs and stored keys and fingerprints."""
        runs = sum(int(r.h.nbytes + r.ts.nbytes + r.ref.nbytes) for r in self._runs)
        return runs + sum(int(k.nbytes + f.nbytes) for k, f in self._segments)


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


_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _key_hash(con: duckdb.DuckDBPyConnection | None, key: pa.Array) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """A 64-bit hash of each key's UTF-8 bytes: where to look, never proof of a match.

    Computed in numpy, a word of 8 bytes at a time over all keys of one length at once (keys
    are ``app_id`` + ``event_id``, nearly all of one length), mixed with splitmix64's finalizer.
    The window only ever compares hashes made by this function in this process (it is rebuilt
    from ``events`` at start), so any good 64-bit hash serves. NULL keys hash to 0. ``con`` is
    not used (the hash was DuckDB's; tests swap in weaker hashes with this signature).
    """
    del con
    key = _large(key)
    n = len(key)
    out = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return out
    _, offsets_buf, data_buf = key.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[key.offset : key.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    valid = np.ones(n, dtype=bool) if key.null_count == 0 else _true(key.is_valid())
    for length in np.unique(lengths[valid]).tolist():
        rows = np.flatnonzero((lengths == length) & valid)
        width = -(-length // 8) * 8
        padded = np.zeros((len(rows), width), dtype=np.uint8)
        if length:
            starts = offsets[rows]
            if len(rows) == n and starts[-1] - starts[0] == (n - 1) * length:  # contiguous
                padded[:, :length] = data[starts[0] : starts[0] + n * length].reshape(n, length)
            else:
                padded[:, :length] = data[starts[:, None] + np.arange(length)]
        words = padded.view("<u8")
        h = np.full(len(rows), (length * _GOLDEN) & _MASK64, dtype=np.uint64)
        for j in range(words.shape[1]):
            h = (h ^ words[:, j]) * _MUL1
            h ^= h >> 31
        h ^= h >> 30
        h *= _MUL1
        h ^= h >> 27
        h *= _MUL2
        h ^= h >> 31
        out[rows] = h
    return out


def _distinct_hashes(
    con: duckdb.DuckDBPyConnection, key: pa.Array
) -> tuple[np.ndarray[Any, np.dtype[np.uint64]], np.ndarray[Any, np.dtype[np.intp]]] | tuple[None, None]:
    """``(hashes, their argsort)`` of ``key`` when it has no NULL and no two equal hashes (so no
    two equal keys), else ``(None, None)``."""
    if key.null_count:
        return None, None
    h = _key_hash(con, key)
    order = np.argsort(h)
    sorted_h = h[order]
    if len(h) > 1 and bool((sorted_h[1:] == sorted_h[:-1]).any()):
        return None, None
    return h, order


def keys(batch: pa.RecordBatch, con: duckdb.DuckDBPyConnection) -> tuple[pa.Array, pa.Array]:
    """``(key, fingerprint)`` of each row: what :meth:`DedupState.judge_keys` judges. Pure, on
    any connection (one per thread)."""
    hashed = batch.select(_FINGERPRINT_COLUMNS)
    # The compiled kernel computes DuckDB's hash() in place; without it, only the hashed
    # columns go to DuckDB (binding every column of the batch costs as much as hashing a few
    # of them), as a relation rather than a registered view.
    h = kernels.duckdb_hash(hashed.columns)
    if h is None:
        h = _duckdb_fingerprint(hashed, con)
    sep = pa.scalar(chr(31), pa.large_string())
    key = pc.binary_join_element_wise(_large(batch.column("app_id")), _large(batch.column("event_id")), sep)
    return key, _hex16(h)


def _duckdb_fingerprint(hashed: pa.RecordBatch, con: duckdb.DuckDBPyConnection) -> np.ndarray[Any, Any]:
    """:data:`_FINGERPRINT_SQL` of each row of ``hashed`` (its columns), by DuckDB: the
    definition the compiled kernel reproduces."""
    out = con.from_arrow(hashed).select(f"{_FINGERPRINT_SQL} AS h").to_arrow_table()
    return np.asarray(out.column("h").combine_chunks().to_numpy(zero_copy_only=False), dtype=np.uint64)


def _hex16(h: np.ndarray[Any, Any]) -> pa.Array:
    """Each 64-bit value as 16 lower-case hex digits, a ``large_string`` array (no NULLs)."""
    compiled = kernels.hex16(h)
    if compiled is not None:
        return compiled
    n = len(h)
    digits = np.asarray(h, dtype=">u8").view(np.uint8).reshape(n, 8)
    text = np.empty((n, 16), np.uint8)
    text[:, 0::2] = _HEX[digits >> 4]
    text[:, 1::2] = _HEX[digits & 15]
    offsets = np.arange(0, 16 * n + 1, 16, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


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
