"""Buffered, checkpointed, exactly-once writes into one Iceberg table.

A :class:`TableSink` buffers rows (``add``) and commits them (``commit``) in one snapshot whose
summary carries the source position reached, so data and position land together or not at all.
Rows at positions the table's own checkpoint already covers are skipped on ``add``: after a crash
the pipeline re-reads from the smallest checkpoint of all tables, and each table takes only what
it lacks.

Data files are written once per commit; a lost race (``CommitFailedException``) refreshes the
table and re-commits the same files with backoff. Any other failure during the commit call is
ambiguous: the table is reloaded and the commit is looked up by its id before trying again.
"""

from __future__ import annotations

import errno
import logging
import random
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from clicklake.exceptions import CommitConflictError, StorageError, TerminalError
from clicklake.lakehouse.checkpoint import (
    CHECKPOINT_KEY,
    COMMIT_ID_KEY,
    PIPELINE_KEY,
    Checkpoint,
    find_commit,
    read_checkpoint,
)
from clicklake.lakehouse.write import write_data_files
from clicklake.metrics import PipelineMetrics

log = logging.getLogger("clicklake.sink")

# Retrying cannot fix these: the disk is full, read-only or forbidden.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


@dataclass(frozen=True)
class CommitResult:
    table: str
    snapshot_id: int | None
    rows: int
    files: int
    seconds: float
    retries: int


class TableSink:
    """Exactly-once writer of one table for one pipeline.

    Args:
        table: The Iceberg table.
        pipeline_id: Whose checkpoint to read and write.
        source: The source name recorded with the checkpoint.
        load_column: Timestamp column set to the commit time (``load_tstamp``), if any.
        retries: How often a conflicting commit is retried.
        metrics: Where commit durations, sizes and retries are recorded (none by default).
        presorted: Rows come to :meth:`add` with each batch sorted by partition
            (:func:`~clicklake.lakehouse.write.sort_by_partition`), so the commit writes them
            without a sorted copy. Unsorted rows would still land in the right partitions.
    """

    def __init__(
        self,
        table: Table,
        pipeline_id: str,
        source: str,
        load_column: str | None,
        retries: int = 8,
        metrics: PipelineMetrics | None = None,
        presorted: bool = False,
    ):
        self.table = table
        self.presorted = presorted
        self.name = table.name()[-1]
        self.pipeline_id = pipeline_id
        self.source = source
        self.load_column = load_column
        self.retries = retries
        self.metrics = metrics
        cp = read_checkpoint(table, pipeline_id)
        self.checkpoint: dict[str, int] = dict(cp.positions) if cp else {}
        self._pending: list[pa.Table] = []
        self.pending_rows = 0
        self.pending_bytes = 0

    def add(self, rows: pa.Table) -> int:
        """Buffer the rows this table's checkpoint does not hold yet; returns how many."""
        if rows.num_rows == 0:
            return 0
        if self.checkpoint:
            streams = pc.unique(rows.column("source_stream")).to_pylist()
            keep = None
            for s in streams:
                done = self.checkpoint.get(s, 0)
                m = pc.and_(
                    pc.equal(rows.column("source_stream"), s),
                    pc.greater_equal(rows.column("source_offset"), done),
                )
                keep = m if keep is None else pc.or_(keep, m)
            # Only a replay after a restart holds rows the checkpoint covers; otherwise the
            # filter would copy every batch for nothing.
            if pc.all(keep, skip_nulls=False).as_py() is not True:
                rows = rows.filter(keep)
        if rows.num_rows:
            self._pending.append(rows)
            self.pending_rows += rows.num_rows
            self.pending_bytes += rows.nbytes
        return int(rows.num_rows)

    def needs_commit(self, position: dict[str, int]) -> bool:
        return bool(self.pending_rows) or position != self.checkpoint

    def detach(self) -> pa.Table | None:
        """Take the buffered rows out (for :meth:`commit_rows` on another thread)."""
        df = pa.concat_tables(self._pending) if self._pending else None
        self._pending = []
        self.pending_rows = 0
        self.pending_bytes = 0
        return df

    def commit(self, position: dict[str, int]) -> CommitResult:
        """Write the buffered rows and ``position`` in one snapshot (see :meth:`commit_rows`)."""
        return self.commit_rows(self.detach(), position)

    def commit_rows(self, df: pa.Table | None, position: dict[str, int]) -> CommitResult:
        """Write ``df`` and ``position`` in one snapshot.

        Raises:
            CommitConflictError: Retries ran out.
            TerminalError: Another process committed for the same pipeline id meanwhile.
            StorageError: Data files could not be written.
        """
        t0 = time.monotonic()
        log.info("event=commit_begin table=%s rows=%d", self.name, df.num_rows if df is not None else 0)
        if df is not None and self.load_column:
            now = pa.scalar(int(time.time() * 1_000_000), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
            idx = df.schema.get_field_index(self.load_column)
            df = df.set_column(idx, self.load_column, pa.repeat(now, df.num_rows))
        files = []
        if df is not None and df.num_rows:
            try:
                files = write_data_files(self.table, df, presorted=self.presorted)
            except OSError as exc:
                raise StorageError(
                    f"cannot write data files of {self.name}: {exc}; nothing of this batch was "
                    "committed, committed data is intact: fix the storage and run again"
                ) from exc
        commit_id = str(uuid.uuid4())
        props = {
            PIPELINE_KEY: self.pipeline_id,
            CHECKPOINT_KEY: Checkpoint(self.source, dict(position)).to_json(),
            COMMIT_ID_KEY: commit_id,
        }
        retries = 0
        expected = dict(self.checkpoint)
        while True:
            try:
                with (
                    self.table.transaction() as txn,
                    txn.update_snapshot(snapshot_properties=props).fast_append() as fa,
                ):
                    for f in files:
                        fa.append_data_file(f)
                break
            except CommitFailedException as exc:
                err: Exception = exc
            except (SQLAlchemyError, OSError) as exc:
                err = exc
                # Ambiguous: did it land before the error?
                self._refresh()
                if find_commit(self.table, commit_id) is not None:
                    break
                if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
                    raise StorageError(
                        f"cannot commit to {self.name}: {exc}; the commit did not land and committed "
                        "data is intact: fix the storage and run again"
                    ) from exc
            retries += 1
            if self.metrics is not None:
                self.metrics.commit_retries.labels(self.name).inc()
            if retries > self.retries:
                raise CommitConflictError(f"commit to {self.name} failed {retries} times: {err}") from err
            self._refresh()
            current = read_checkpoint(self.table, self.pipeline_id)
            if (current.positions if current else {}) != expected:
                raise TerminalError(
                    f"another process committed to {self.name} as pipeline {self.pipeline_id!r}; "
                    "run one pipeline per id (set pipeline.pipeline_id to run several)"
                ) from err
            delay = min(5.0, 0.05 * 2**retries) * (0.5 + random.random())
            log.warning(
                "event=commit_retry table=%s attempt=%d delay_s=%.2f error=%r",
                self.name,
                retries,
                delay,
                str(err)[:200],
            )
            time.sleep(delay)
        snap = self.table.current_snapshot()
        rows = df.num_rows if df is not None else 0
        self.checkpoint = dict(position)
        result = CommitResult(
            self.name, snap.snapshot_id if snap else None, rows, len(files), time.monotonic() - t0, retries
        )
        if self.metrics is not None:
            self.metrics.commit_seconds.labels(self.name).observe(result.seconds)
            self.metrics.commit_rows.labels(self.name).observe(rows)
            self.metrics.rows.labels(self.name).inc(rows)
        log.info(
            "event=commit table=%s snapshot=%s rows=%d files=%d retries=%d seconds=%.3f",
            self.name,
            result.snapshot_id,
            rows,
            len(files),
            retries,
            result.seconds,
        )
        return result

    def _refresh(self) -> None:
        try:
            self.table = self.table.refresh()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("event=refresh_failed table=%s error=%r", self.name, str(exc)[:200])
