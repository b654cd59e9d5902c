"""Dedup of client retries: the same ``event_id`` landed twice within a window.

An SDK that gets no answer resends the same call with the same ``messageId``. Within
``enrich.dedup.window_hours`` (default 24 h, by collector time) a second copy is dropped, one
row per ``(app_id, event_id)`` reaches ``events``. An ``event_fingerprint`` (MD5 of the event
minus its send-time fields) tells a true resend from a different event that reuses an id: the
latter is not dropped silently but marked ``duplicate_id_conflict`` and goes to
``failed_events``.

The window is a DuckDB table (bounded: it spills past its memory limit and forgets ids older
than the window, counted in event time: back from the newest collector time seen, so a backfill
of old data dedups like live traffic). It is rebuilt from ``events`` when the pipeline starts, so it holds exactly
what is committed; anything processed but not committed before a crash is processed again in
the same order and gets the same verdict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb
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

# What a resend changes: when it was sent and received, and from where. Everything else a
# client sent is the same in a true resend.
# A 64-bit hash is plenty: fingerprints are only ever compared between events with the same id.
_FINGERPRINT_SQL = """printf('%016x', hash(app_id, event_id, event_type, event_name, user_id, anonymous_id,
    session_id, group_id, previous_id, dvce_created_tstamp, page_url, page_referrer,
    page_title, properties, traits, context))"""


@dataclass
class DedupState:
    """The ids seen within the window, in a DuckDB table of (key, fingerprint, seen time)."""

    window_us: int
    con: duckdb.DuckDBPyConnection
    # The window follows event time (the newest collector time seen), not the wall clock, so
    # backfills and replays of old data dedup like live traffic.
    high_us: int = 0
    _calls: int = 0

    @classmethod
    def empty(cls, window_hours: float) -> DedupState:
        con = duckdb.connect(config={"threads": 1, "memory_limit": "256MB"})
        # No key constraint: only ids new to both the table and the batch are inserted.
        con.execute("CREATE TABLE seen (k VARCHAR, fp VARCHAR, ts BIGINT)").fetchall()
        return cls(int(window_hours * 3_600_000_000), con)

    def load(self, committed: pa.Table) -> None:
        """Add committed events (``app_id``, ``event_id``, ``event_fingerprint``, ``collector_tstamp``)."""
        self._advance(committed.column("collector_tstamp"))
        self.con.register("committed_in", committed)
        try:
            self.con.execute(
                """INSERT INTO seen
                   SELECT c.k, c.fp, c.ts FROM (
                     SELECT app_id || chr(31) || event_id AS k, event_fingerprint AS fp,
                            epoch_us(collector_tstamp) AS ts
                     FROM committed_in WHERE event_id IS NOT NULL
                     QUALIFY row_number() OVER (PARTITION BY app_id, event_id ORDER BY collector_tstamp) = 1
                   ) c ANTI JOIN seen s ON s.k = c.k"""
            ).fetchall()
        finally:
            self.con.unregister("committed_in")

    def _advance(self, ts: pa.Array | pa.ChunkedArray) -> None:
        import pyarrow.compute as pc

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
        ones. Batches must come in order: each is judged against every one before it."""
        self._calls += 1
        if self._calls % EXPIRE_EVERY == 0:
            self.expire()
        self._advance(collector_tstamp)
        self.con.register("b", pa.table({"k": key, "fp": fp, "ts": collector_tstamp}))
        try:
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
        finally:
            self.con.unregister("b")
        return out.column("verdict").combine_chunks()

    def expire(self, now_us: int | None = None) -> None:
        """Forget ids older than the window, counted back from ``now_us`` (default: the newest
        collector time seen)."""
        now_us = now_us if now_us is not None else self.high_us
        self.con.execute("DELETE FROM seen WHERE ts < ?", [now_us - self.window_us]).fetchall()

    def size(self) -> int:
        rows = self.con.execute("SELECT count(*) FROM seen").fetchall()
        return int(rows[0][0])


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
