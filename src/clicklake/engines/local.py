"""The embedded engine: decode and validate Arrow micro-batches in-process, commit to Iceberg.

One loop: read chunks from the source (starting at the smallest checkpoint of all tables),
decode them, hand good rows to the ``events`` sink and failures to the ``failed_events`` sink,
and commit both every ``commit_interval_s`` or ``commit_max_events``. Each commit carries the
position reached; the spool deletes segments every table has passed.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from clicklake.config import Settings
from clicklake.engines.head_start import HeadStart, Raw, decode_chunk, decode_options, use_jemalloc
from clicklake.enrich.base import Step
from clicklake.enrich.chain import build_chain, run_chain
from clicklake.enrich.dedup import KEY, DedupState, key_step
from clicklake.events.decode import split
from clicklake.events.failures import rows_to_failures
from clicklake.events.schema import EVENT_COLUMNS, FAILED_ARROW
from clicklake.exceptions import ClickLakeError, StorageError
from clicklake.lakehouse.catalog import (
    EVENTS,
    FAILED_EVENTS,
    ensure_tables,
    evolve_schema,
    ingest_tables,
    open_catalog,
)
from clicklake.lakehouse.sink import TableSink
from clicklake.lakehouse.write import sort_by_partition
from clicklake.metrics import PipelineMetrics
from clicklake.sources.base import Chunk, Position, Source, min_position

log = logging.getLogger("clicklake.pipeline")


@dataclass
class RunStats:
    """What a run did, for the CLI summary and tests."""

    lines_bytes: int = 0
    events: int = 0
    failed: int = 0
    skipped: int = 0
    duplicates: int = 0
    commits: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Decoded:
    """A decoded and enriched chunk: where it ends in its stream, how many bytes and lines it
    had, its good rows (not judged by dedup yet) and its failures, each sorted by its table's
    partition, and which row of the chunk each good row was (``order``, for dedup's verdict).
    ``judged``: what dedup's verdict reads, in source order (its key, ``event_fingerprint`` and
    ``collector_tstamp``), or None when the chain has no dedup (or failed)."""

    stream: str
    end: int
    nbytes: int
    rows: int
    good: pa.Table
    bad: pa.Table
    order: np.ndarray
    judged: tuple[pa.Array, pa.Array, pa.Array] | None = None


class PipelineLock:
    """One process per pipeline id and data directory (two would both skip and both write)."""

    def __init__(self, settings: Settings):
        self.path = Path(settings.storage.data_dir) / f"pipeline-{settings.pipeline.pipeline_id}.lock"
        self._f: IO[str] | None = None

    def __enter__(self) -> PipelineLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = self.path.open("a+")
        except OSError as exc:
            raise StorageError(f"cannot create lock file {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            holder = self._f.read().strip() or "another process"
            self._f.close()
            raise ClickLakeError(
                f"pipeline {self.path.stem.removeprefix('pipeline-')!r} is already running (pid {holder}); "
                "stop it first, or give this run another pipeline.pipeline_id"
            ) from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(str(os.getpid()))
        self._f.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()


class Pipeline:
    """The embedded pipeline over one source.

    Args:
        settings: The settings.
        source: Where lines come from.
        app_id: App id for file events without a known write key (``--app-id``).
        progress: Called with the number of bytes consumed after each chunk.
        metrics: Where batch sizes, commits, failures and log lag are recorded (a registry of
            its own by default; ``clicklake serve`` passes the collector's).
    """

    def __init__(
        self,
        settings: Settings,
        source: Source,
        app_id: str | None = None,
        progress: Callable[[int], None] | None = None,
        metrics: PipelineMetrics | None = None,
    ):
        self.settings = settings
        self.metrics = metrics if metrics is not None else PipelineMetrics()
        self.source = source
        self.options = decode_options(settings, app_id)
        self.progress = progress
        self.stats = RunStats()
        use_jemalloc()
        self._stop = threading.Event()  # leave the loop (after a last pass when draining)
        self._halt = threading.Event()  # leave it now, after the current chunk
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clicklake-commit")
        self._inflight: Future[None] | None = None
        self._rounds = 0
        self._started_at = time.monotonic()
        self._committed_at: dict[str, float] = {}  # sink name -> when its last commit was sent
        catalog = open_catalog(settings)
        tables = ensure_tables(catalog, settings, ingest_tables(settings))
        self.steps = build_chain(settings)
        added = tuple(col for step in self.steps for col in step.columns)
        tables[EVENTS] = evolve_schema(tables[EVENTS], (*EVENT_COLUMNS, *added))
        dedup = next((s.state for s in self.steps if isinstance(s.state, DedupState)), None)
        self._dedup: DedupState | None = dedup
        # What the decode workers run, several chunks at once: the chain with dedup's verdict
        # left to this thread (it must see chunks in order), each step behind a lock of its own
        # (steps keep caches, plugins may not be thread-safe; two chunks still overlap, each in
        # another step).
        self._worker_steps = [_for_workers(step) for step in self.steps]
        pid = settings.pipeline.pipeline_id
        retries = settings.pipeline.commit_retries
        # Rows reach the sinks sorted by partition (on the decode workers), so that a commit
        # holds one copy of its rows, not a second sorted one: room for bigger commits.
        self.sinks = {
            EVENTS: TableSink(
                tables[EVENTS], pid, source.name, "load_tstamp", retries, self.metrics, presorted=True
            ),
            FAILED_EVENTS: TableSink(
                tables[FAILED_EVENTS],
                pid,
                source.name,
                "failed_tstamp",
                retries,
                self.metrics,
                presorted=True,
            ),
        }

    def _rebuild_dedup_window(self) -> None:
        """Load the ids ``events`` holds within the dedup window (what is committed, exactly)."""
        if self._dedup is None:
            return
        table = self.sinks[EVENTS].table
        if table.current_snapshot() is None:
            return
        newest = _newest_collector_time(table) or datetime.now(UTC)
        since = newest - timedelta(hours=self.settings.enrich.dedup.window_hours)
        cols = ["app_id", "event_id", "collector_tstamp"]
        if "event_fingerprint" in table.schema().column_names:
            cols.append("event_fingerprint")
        seen = table.scan(
            row_filter=f"collector_tstamp >= '{since.isoformat()}'", selected_fields=tuple(cols)
        ).to_arrow()
        if "event_fingerprint" not in seen.column_names:
            seen = seen.append_column("event_fingerprint", pa.nulls(seen.num_rows, pa.large_string()))
        self._dedup.load(seen)
        log.info("event=dedup_window_loaded ids=%d", self._dedup.size())

    def stop(self, drain: bool = False) -> None:
        """Ask the loop to finish: it commits what it holds and returns.

        Args:
            drain: First read the source to its current end (``clicklake serve`` on SIGTERM,
                after the collector stopped accepting); otherwise stop after the current chunk.
        """
        if not drain:
            self._halt.set()
        self._stop.set()

    def resume_position(self) -> Position:
        return min_position(s.checkpoint for s in self.sinks.values())

    def run(self, once: bool = False, poll_s: float = 0.2, head_start: HeadStart | None = None) -> RunStats:
        """Process the source; with ``once``, up to what is readable now, then commit and return.

        ``head_start``: chunks decoded while the process started, taken when the run resumes at
        the start of the source (see :mod:`clicklake.engines.head_start`).
        """
        cfg = self.settings.pipeline
        position = self.resume_position()
        head: list[Raw] = []
        read_from = position
        if head_start is not None:
            head, read_from = head_start.take(position)
        self._rebuild_dedup_window()
        log.info(
            "event=start source=%s pipeline=%s resume=%s", self.source.name, cfg.pipeline_id, _short(position)
        )
        # One pool for the whole run: each worker keeps its DuckDB connection and scratch file
        # from pass to pass. Workers decode and enrich; this thread judges dedup and buffers.
        workers = DECODE_WORKERS
        decoders = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clicklake-decode")
        try:
            self._loop(position, decoders, workers, once, poll_s, head, read_from)
        finally:
            decoders.shutdown(wait=True, cancel_futures=True)
        log.info(
            "event=finish events=%d failed=%d skipped=%d commits=%d",
            self.stats.events,
            self.stats.failed,
            self.stats.skipped,
            self.stats.commits,
        )
        return self.stats

    def _loop(
        self,
        position: Position,
        decoders: ThreadPoolExecutor,
        workers: int,
        once: bool,
        poll_s: float,
        head: list[Raw],
        read_from: Position,
    ) -> None:
        cfg = self.settings.pipeline
        last_commit = time.monotonic()
        while True:
            stopping = self._stop.is_set()  # a pass that starts after the stop is the last
            # The first pass starts with the head start's chunks (already decoded) and reads on
            # after them; later passes read on from the position reached.
            items: Iterator[Chunk | Raw] = itertools.chain(head, self.source.chunks(read_from))
            head, read_from = [], position
            decoded = _prefetched(items, self._decode_chunk, self._halt, decoders, ahead=workers)
            for chunk in decoded:
                self._process(chunk)
                position[chunk.stream] = chunk.end
                if self._due(last_commit):
                    self._commit(position)
                    last_commit = time.monotonic()
                if self._halt.is_set():
                    break
            if once or self._halt.is_set() or stopping:
                break
            if time.monotonic() - last_commit >= cfg.commit_interval_s:
                self._commit(position)
                last_commit = time.monotonic()
            self._update_lag()
            if not self._stop.is_set():
                self._stop.wait(poll_s)
        self._commit(position, wait=True)

    def _decode_chunk(self, item: Chunk | Raw) -> _Decoded:
        """Decode (unless the head start did), split, enrich and sort one chunk, on a decode
        worker: the decoder, DuckDB and most of Arrow run without the GIL, so two chunks are
        decoded and enriched at once while this thread judges and buffers the one before."""
        raw = item if isinstance(item, Raw) else decode_chunk(item, self.options)
        decoded = raw.decoded
        good, bad = split(decoded)
        judged: tuple[pa.Array, pa.Array, pa.Array] | None = None
        if self._worker_steps and good.num_rows:
            good, enrich_failed = self._enrich(good)
            if enrich_failed.num_rows:
                bad = pa.concat_tables([bad, enrich_failed])
            if KEY in good.column_names:
                # Kept aside as they are, in source order, where the verdict reads them: not
                # sorted with the rows and put back in order again (the key is not stored).
                judged = (
                    good.column(KEY).combine_chunks(),
                    good.column("event_fingerprint").combine_chunks(),
                    good.column("collector_tstamp").combine_chunks(),
                )
                good = good.drop_columns([KEY])
        good, order = sort_by_partition(self.sinks[EVENTS].table, good)
        bad, _ = sort_by_partition(self.sinks[FAILED_EVENTS].table, bad)
        # The chunk's bytes are not kept: decoded rows waiting their turn hold only their own.
        return _Decoded(raw.stream, raw.end, raw.nbytes, decoded.num_rows, good, bad, order, judged)

    def _enrich(self, good: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Run the chain (dedup's verdict excepted); failed batches become failures."""
        batch = good.combine_chunks().to_batches()[0]
        enriched, failures = run_chain(self._worker_steps, batch)
        failed = [rows_to_failures(f.batch, f.stage, f.error_type, f.message) for f in failures]
        bad = pa.concat_tables(failed) if failed else FAILED_ARROW.empty_table()
        return pa.Table.from_batches([enriched]), bad

    def _process(self, chunk: _Decoded) -> None:
        self.metrics.batch_rows.observe(chunk.rows)
        self.metrics.bytes_read.inc(chunk.nbytes)
        good, bad = chunk.good, chunk.bad
        if chunk.judged is not None:
            good, conflicts = self._judge(good, chunk.order, chunk.judged)
            if conflicts.num_rows:
                conflicts, _ = sort_by_partition(self.sinks[FAILED_EVENTS].table, conflicts)
                bad = pa.concat_tables([bad, conflicts])
        took_good = self.sinks[EVENTS].add(good)
        took_bad = self.sinks[FAILED_EVENTS].add(bad)
        self.stats.events += took_good
        self.stats.failed += took_bad
        self.stats.skipped += good.num_rows + bad.num_rows - took_good - took_bad
        if took_bad:
            counts = bad.column("error_type").value_counts().to_pylist()
            for item in counts:
                self.stats.failed_by_reason[item["values"]] = (
                    self.stats.failed_by_reason.get(item["values"], 0) + item["counts"]
                )
        self.stats.lines_bytes += chunk.nbytes
        if self.progress:
            self.progress(chunk.nbytes)

    def _judge(
        self, enriched: pa.Table, order: np.ndarray, judged: tuple[pa.Array, pa.Array, pa.Array]
    ) -> tuple[pa.Table, pa.Table]:
        """Dedup's verdict, in source order: drop resends, fail id conflicts.

        ``enriched`` is sorted by partition; row ``i`` was row ``order[i]`` of its chunk. Dedup
        judges the chunk's rows in source order (the first of two copies is the new one): on
        ``judged`` (key, fingerprint, collector time, kept in that order), and the verdict is
        then sorted like the rows."""
        assert self._dedup is not None
        verdict_in_source_order = self._dedup.judge_keys(*judged)
        verdict = verdict_in_source_order.take(pa.array(order))
        out = enriched
        failed = FAILED_ARROW.empty_table()
        conflict = pc.equal(verdict_in_source_order, "conflict")
        if pc.any(conflict).as_py():
            back = np.empty_like(order)  # source row -> its place among the sorted rows
            back[order] = np.arange(len(order), dtype=order.dtype)
            failed = rows_to_failures(
                out.take(pa.array(back[np.flatnonzero(conflict.to_numpy(zero_copy_only=False))])),
                "enrich",
                "duplicate_id_conflict",
                "this messageId was already used by a different event within the dedup window",
            )
        dups = pc.sum(pc.cast(pc.equal(verdict, "dup"), pa.int64())).as_py() or 0
        self.stats.duplicates += dups
        self.metrics.duplicates.inc(dups)
        new = pc.equal(verdict, "new")
        if pc.all(new).as_py() is not True:  # resends are rare: no copy of the batch without them
            out = out.filter(new)
        return out, failed

    def _due(self, last_commit: float) -> bool:
        cfg = self.settings.pipeline
        pending = sum(s.pending_rows for s in self.sinks.values())
        pending_bytes = sum(s.pending_bytes for s in self.sinks.values())
        return (
            pending >= cfg.commit_max_events
            or pending_bytes >= cfg.commit_max_bytes
            or (time.monotonic() - last_commit) >= cfg.commit_interval_s
        )

    def _commit(self, position: Position, wait: bool = False) -> None:
        """Commit what the sinks hold, up to ``position``, on the commit thread.

        One commit is in flight at most: the loop decodes the next chunks meanwhile, and waits
        for it before starting the next one. Commits run in order, each table's data with its
        position, so a crash at any instant leaves every table at a consistent checkpoint.
        """
        self._wait_commit()
        position = self.source.prune(position)
        now = time.monotonic()
        jobs = [
            (sink, sink.detach())
            for sink in self.sinks.values()
            if self._commits_now(sink, position, now, wait)
        ]
        for sink, _ in jobs:
            self._committed_at[sink.name] = now
        if jobs:
            self.stats.commits += len(jobs)
            self._inflight = self._committer.submit(self._commit_jobs, jobs, dict(position))
            self._rounds += 1
            every = self.settings.models.build_every_commits
            if every and self._rounds % every == 0:
                self._wait_commit()
                self._build_models()
        if wait:
            self._wait_commit()

    def _commits_now(self, sink: TableSink, position: Position, now: float, final: bool) -> bool:
        """Whether ``sink`` commits in this round. With rows, always. With only a newer
        position (mostly ``failed_events`` while every event is good), at the end of a pass,
        or once its last commit is ``commit_interval_s`` old: such a snapshot only moves the
        position, and rounds come as often as the buffers fill (several a second in a backfill).
        A table whose position lags reads a little again after a crash and skips what it holds,
        as every table does, and the spool keeps a segment that much longer."""
        if not sink.needs_commit(position):
            return False
        if sink.pending_rows or final:
            return True
        last = self._committed_at.get(sink.name, self._started_at)
        return now - last >= self.settings.pipeline.commit_interval_s

    def _build_models(self) -> None:
        from clicklake.models.runner import build_models

        t0 = time.monotonic()
        counts = build_models(self.settings)
        log.info(
            "event=models_built seconds=%.2f %s",
            time.monotonic() - t0,
            " ".join(f"{k}={v}" for k, v in counts.items()),
        )

    def _commit_jobs(self, jobs: list[tuple[TableSink, pa.Table | None]], position: Position) -> None:
        while jobs:
            # Popped, so each batch's memory is released as soon as its table has it.
            sink, rows = jobs.pop(0)
            failures = _failure_counts(rows) if sink is self.sinks[FAILED_EVENTS] else []
            sink.commit_rows(rows, position)
            del rows
            for stage, error_type, n in failures:
                self.metrics.failed.labels(stage, error_type).inc(n)
        self.source.committed(min_position(s.checkpoint for s in self.sinks.values()))
        self._update_lag()

    def _update_lag(self) -> None:
        """Set the log-lag gauge, for sources that can tell (a capability, not every source has it)."""
        lag = getattr(self.source, "lag", None)
        if lag is not None:
            self.metrics.lag_bytes.set(lag(min_position(s.checkpoint for s in self.sinks.values())))

    def _wait_commit(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()


def _for_workers(step: Step) -> Step:
    """``step`` as the decode workers run it: dedup only keys and fingerprints (the verdict is
    the loop's), any other step one batch at a time."""
    if isinstance(step.state, DedupState):
        return key_step(step.state)
    lock = threading.Lock()
    fn = step.fn

    def locked(batch: pa.RecordBatch) -> pa.RecordBatch:
        with lock:
            return fn(batch)

    return Step(step.name, locked, step.columns, step.state)


def _newest_collector_time(table: Table) -> datetime | None:
    """The newest ``collector_tstamp`` in ``table``, from the data files' column statistics
    (manifests only, no data read)."""
    field_id = table.schema().find_field("collector_tstamp").field_id
    newest: int | None = None
    for bounds in table.inspect.files().column("upper_bounds").to_pylist():
        for fid, raw in bounds or ():
            if fid == field_id and raw is not None and len(raw) == 8:
                value = int.from_bytes(raw, "little", signed=True)
                newest = value if newest is None else max(newest, value)
    return None if newest is None else datetime.fromtimestamp(newest / 1_000_000, UTC)


def _failure_counts(rows: pa.Table | None) -> list[tuple[str, str, int]]:
    """``(stage, error_type, rows)`` of a batch of failed events."""
    if rows is None or rows.num_rows == 0:
        return []
    counts = rows.group_by(["stage", "error_type"]).aggregate([([], "count_all")])
    return list(
        zip(
            counts.column("stage").to_pylist(),
            counts.column("error_type").to_pylist(),
            counts.column("count_all").to_pylist(),
            strict=True,
        )
    )


_T = TypeVar("_T")
_R = TypeVar("_R")

# Chunks decoded at once. Decoding is most of the pipeline's CPU and runs in DuckDB without the
# GIL; two workers keep both cores of a small machine busy while the loop enriches and buffers.
DECODE_WORKERS = 2


def _prefetched(
    items: Iterator[_T],
    fn: Callable[[_T], _R],
    stop: threading.Event,
    pool: ThreadPoolExecutor,
    ahead: int = 2,
) -> Iterator[_R]:
    """``fn(item)`` for each item, computed ahead on ``pool`` and yielded in order (reading and
    decoding the next chunks overlaps processing this one). At most ``ahead`` items are submitted
    beyond the one the caller holds, which bounds memory. Errors surface in the caller, in order."""
    q: queue.Queue[tuple[str, object]] = queue.Queue()
    done = threading.Event()
    slots = threading.Semaphore(ahead)
    pending: set[Future[_R]] = set()  # submitted, not yet taken by the caller

    def halted() -> bool:
        return stop.is_set() or done.is_set()

    def produce() -> None:
        try:
            for item in items:
                while not slots.acquire(timeout=0.1):
                    if halted():
                        return
                if halted():
                    return
                future = pool.submit(fn, item)
                pending.add(future)
                q.put(("item", future))
            q.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(("error", exc))

    reader = threading.Thread(target=produce, name="clicklake-reader", daemon=True)
    reader.start()
    try:
        while True:
            try:
                kind, value = q.get(timeout=0.1)
            except queue.Empty:
                if reader.is_alive():
                    continue
                if q.empty():
                    return  # the reader gave up because stop was set
                continue
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            assert isinstance(value, Future)
            pending.discard(value)
            yield value.result()
            slots.release()  # the caller is done with it
    finally:
        done.set()
        reader.join()
        # What was read ahead and not taken is dropped (the next pass reads it again); wait for
        # what is running, so that no decode outlives the pass.
        for future in pending:
            future.cancel()
        wait(pending)


def _short(position: Position) -> str:
    if len(position) <= 3:
        return ",".join(f"{k}:{v}" for k, v in sorted(position.items()))
    return f"{len(position)} streams"


def install_signal_handlers(pipeline: Pipeline, drain: bool = False) -> None:
    """SIGTERM and SIGINT finish the current chunk (or, with ``drain``, the whole source as it
    is now), commit and exit."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("event=signal signal=%d", signum)
        pipeline.stop(drain=drain)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
