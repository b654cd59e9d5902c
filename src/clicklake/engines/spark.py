"""The Spark engine: the same pipeline on PySpark Structured Streaming and the Iceberg Spark runtime.

``clicklake run --engine spark --source files|kafka``:

- **Read**: NDJSON files as whole files (Spark's ``binaryFile`` source, one file per task, so the
  byte offsets of lines are the local engine's), or Kafka (``spark-sql-kafka``), one message per
  line, offsets per ``<topic>/<partition>``.
- **Decode, validate, enrich** on the Python workers, through ``mapInArrow``, with the very
  functions the local engine calls (:func:`clicklake.events.decode.lines_of`, ``decode``,
  ``split``, :func:`clicklake.enrich.chain.run_chain`). Good rows and failures leave the workers
  as one Arrow stream (``error_type`` tells them apart).
- **Dedup** of resends cannot keep a window in one process's memory on a cluster, so the dedup
  step's fingerprint is computed on the workers (the same DuckDB expression) and the verdict on
  the driver, per micro-batch: within the batch (first copy in source order wins) and against
  the ``events`` rows whose collector time is within ``enrich.dedup.window_hours`` of the batch's
  newest one. Same verdicts as the local engine, except near the window's edge: the local engine
  forgets ids only every 50 batches, so it may still drop a resend a little older than the window.
- **Write** ``events`` and ``failed_events`` in ``foreachBatch`` through the Iceberg Spark runtime
  (fanout writers, so no sort by partition), each append carrying ``clicklake.pipeline`` and
  ``clicklake.spark-batch`` (streaming query id and batch id) in its snapshot summary. Spark's
  checkpoint holds the source positions; a batch replayed after a crash finds its marker in a
  table's snapshots and skips that table, so every table gets each batch exactly once.
"""

from __future__ import annotations

import gzip
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.enrich.base import Step, append_columns
from clicklake.enrich.chain import build_chain, run_chain
from clicklake.enrich.dedup import FINGERPRINT, fingerprints
from clicklake.events.decode import decode, lines_of, split
from clicklake.events.failures import rows_to_failures
from clicklake.events.options import DecodeOptions
from clicklake.events.schema import EVENT_COLUMNS, FAILED_ARROW, FAILED_COLUMNS
from clicklake.exceptions import ConfigError, InputError
from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, ensure_tables, evolve_schema, ingest_tables
from clicklake.lakehouse.catalog import open_catalog as _open_catalog
from clicklake.lakehouse.checkpoint import PIPELINE_KEY
from clicklake.sources.base import Chunk, EnvelopeMode

try:
    from pyspark.sql import DataFrame, SparkSession, Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
except ImportError as exc:  # pragma: no cover - the registry reports the missing extra
    raise ImportError(f"pyspark is not installed: {exc}") from exc

from clicklake.engines.head_start import decode_options
from clicklake.engines.local import RunStats
from clicklake.engines.spark_session import spark_session, table_name

log = logging.getLogger("clicklake.spark")

BATCH_KEY = "clicklake.spark-batch"
QUERY_KEY = "clicklake.spark-query"
#: The columns of a failure that an event row does not have; with the event columns, the
#: schema of what the workers send to the driver.
_FAILURE_ONLY = ("stage", "error_type", "error_message", "raw")
#: Where a row left the decoder: the start of its chunk and its place in the decoder's output.
#: The local dedup step takes the first copy of an id in that order (fast-path rows come before
#: exact-path rows of the same chunk), so the driver orders by it too.
ORDER_COLUMNS = (pa.field("_chunk", pa.int64()), pa.field("_row", pa.int64()))
_CONFLICT_MESSAGE = "this messageId was already used by a different event within the dedup window"
_FILE_GLOB = "{*.ndjson,*.jsonl,*.json,*.ndjson.gz,*.jsonl.gz,*.json.gz,*.gz}"

_SPARK_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "timestamptz": T.TimestampType(),
    "long": T.LongType(),
    "int": T.IntegerType(),
    "binary": T.BinaryType(),
    "boolean": T.BooleanType(),
    "double": T.DoubleType(),
    "float": T.FloatType(),
    "date": T.DateType(),
}
_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.large_string(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "long": pa.int64(),
    "int": pa.int32(),
    "binary": pa.large_binary(),
    "boolean": pa.bool_(),
    "double": pa.float64(),
    "float": pa.float32(),
    "date": pa.date32(),
}


# --- the workers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """What a Python worker needs (pickled into the ``mapInArrow`` function).

    Attributes:
        settings: The settings (enrichment steps, limits).
        options: Decode options.
        out_schema: Arrow schema of the rows sent to the driver: ``events`` columns, then
            :data:`_FAILURE_ONLY`.
        chunk_bytes: How much of a file one decode call takes (``pipeline.read_chunk_bytes``).
        envelope: Envelope of Kafka messages (files are bare Segment lines).
    """

    settings: Settings
    options: DecodeOptions
    out_schema: pa.Schema
    chunk_bytes: int
    envelope: EnvelopeMode = "spool"


class _Worker:
    """The chain of one Python worker process, built once and kept across batches."""

    def __init__(self, plan: WorkerPlan):
        import duckdb

        self.plan = plan
        self._con = duckdb.connect(config={"threads": 1, "memory_limit": "256MB"})
        self.steps = build_chain(plan.settings, loader=self._load)

    def _load(self, name: str, settings: Settings) -> Step | None:
        from clicklake.enrich.chain import _load_builtin

        if name != "dedup":
            return _load_builtin(name, settings)
        con = self._con

        def fingerprint(batch: pa.RecordBatch) -> pa.RecordBatch:
            return append_columns(batch, {FINGERPRINT.name: fingerprints(batch, con)})

        # Same place, same column as the dedup step; the verdict is the driver's.
        return Step("dedup", fingerprint, (FINGERPRINT,))

    def process(
        self, lines: pa.RecordBatch, bad_utf8: pa.Table | None, mode: EnvelopeMode, chunk_start: int
    ) -> pa.Table:
        decoded = decode(lines, mode, self.plan.options, int(time.time() * 1_000_000))
        if bad_utf8 is not None:
            decoded = pa.concat_tables([decoded, bad_utf8])
        good, bad = split(decoded)
        parts = [bad]
        if self.steps and good.num_rows:
            batch = good.combine_chunks().to_batches()[0]
            enriched, failures = run_chain(self.steps, batch)
            parts.extend(rows_to_failures(f.batch, f.stage, f.error_type, f.message) for f in failures)
            good = pa.Table.from_batches([enriched])
        out = pa.concat_tables([_conform(t, self.plan.out_schema) for t in (good, *parts)])
        n = out.num_rows
        out = out.set_column(
            out.schema.get_field_index("_chunk"),
            ORDER_COLUMNS[0],
            pa.array(np.full(n, chunk_start, np.int64)),
        )
        return out.set_column(out.schema.get_field_index("_row"), ORDER_COLUMNS[1], pa.array(np.arange(n)))


_WORKERS: dict[int, _Worker] = {}
_WORKERS_LOCK = threading.Lock()


def _worker(plan: WorkerPlan) -> _Worker:
    key = hash((id(type(plan)), plan.out_schema.to_string(), plan.settings.model_dump_json()))
    with _WORKERS_LOCK:
        worker = _WORKERS.get(key)
        if worker is None:
            worker = _WORKERS[key] = _Worker(plan)
        return worker


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t`` with exactly ``schema``'s columns (missing ones NULL), cast to its types."""
    n = t.num_rows
    arrays = []
    for f in schema:
        if f.name in t.column_names:
            col = t.column(f.name)
            arrays.append(col if col.type == f.type else col.cast(f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def stream_of(path: str) -> str:
    """The local engine's stream name of a file Spark lists as ``file:/abs/path``."""
    return unquote(path.removeprefix("file://").removeprefix("file:"))


def decode_files(plan: WorkerPlan) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of the files source: ``(path, content)`` rows, one per file."""

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker = _worker(plan)
        for batch in batches:
            paths = batch.column("path").to_pylist()
            contents = batch.column("content")
            for i, path in enumerate(paths):
                if path.rsplit("/", 1)[-1] == "manifest.json":
                    continue  # the generator's counts, not events
                data = contents[i].as_buffer()
                raw = bytes(data) if data is not None else b""
                if path.endswith(".gz"):
                    raw = gzip.decompress(raw)
                stream = stream_of(path)
                for chunk in _chunks(stream, raw, plan.chunk_bytes):
                    lines, bad_utf8 = lines_of(chunk)
                    yield from worker.process(lines, bad_utf8, "segment", chunk.start).to_batches()

    return run


def _chunks(stream: str, data: bytes, size: int) -> Iterator[Chunk]:
    """The chunks the files source reads from ``data``: reads of ``size`` bytes, each cut after
    its last newline (the rest carried into the next read), the last line even without one."""
    n = len(data)
    start = read_to = 0
    while read_to < n:
        read_to = min(n, read_to + size)
        cut = data.rfind(b"\n", start, read_to)
        if cut < 0:
            continue
        yield Chunk(stream, start, data[start : cut + 1], "segment")
        start = cut + 1
    if start < n:
        yield Chunk(stream, start, data[start:n], "segment")


def decode_kafka(plan: WorkerPlan) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of the Kafka source: ``(value, topic, partition, offset)`` rows.

    Each message is one line (a collector envelope, or a bare Segment call with
    ``kafka.envelope = "segment"``); rows carry the stream ``<topic>/<partition>`` and the
    message offset, as the local Kafka source writes them.
    """

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker = _worker(plan)
        for batch in batches:
            table = pa.Table.from_batches([batch])
            keys = table.select(["topic", "partition"]).group_by(["topic", "partition"]).aggregate([])
            for topic, part in zip(
                keys.column("topic").to_pylist(), keys.column("partition").to_pylist(), strict=True
            ):
                mask = pc.and_(
                    pc.equal(table.column("topic"), topic), pc.equal(table.column("partition"), part)
                )
                sub = table.filter(mask).sort_by("offset")
                values = [v if v is not None else b"" for v in sub.column("value").to_pylist()]
                offsets = np.asarray(sub.column("offset").to_numpy(), dtype=np.int64)
                lines, bad_utf8 = _message_lines(f"{topic}/{part}", values, offsets, plan.envelope)
                yield from worker.process(lines, bad_utf8, plan.envelope, int(offsets[0])).to_batches()

    return run


def _message_lines(
    stream: str, values: list[bytes], offsets: np.ndarray, mode: EnvelopeMode
) -> tuple[pa.RecordBatch, pa.Table | None]:
    """Messages as lines (via :func:`lines_of`), their ``source_offset`` the message offsets."""
    # A message never holds a newline (the collector writes one line per message); joined with
    # newlines they split back into one line per message.
    data = b"\n".join(v.replace(b"\n", b" ") for v in values) + b"\n"
    lengths = np.fromiter((len(v) + 1 for v in values), dtype=np.int64, count=len(values))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    lines, bad_utf8 = lines_of(Chunk(stream, 0, data, mode))

    def remap(col: pa.Array | pa.ChunkedArray) -> pa.Array:
        byte_offsets = np.asarray(pc.fill_null(col, 0).to_numpy(), dtype=np.int64)
        return pa.array(offsets[np.searchsorted(starts, byte_offsets, side="right") - 1], pa.int64())

    i = lines.schema.get_field_index("source_offset")
    lines = lines.set_column(i, "source_offset", remap(lines.column(i)))
    if bad_utf8 is not None:
        j = bad_utf8.schema.get_field_index("source_offset")
        bad_utf8 = bad_utf8.set_column(j, "source_offset", remap(bad_utf8.column(j).combine_chunks()))
    return lines, bad_utf8


def failures_of_conflicts(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow``: enriched rows whose id a different event already used -> failures."""
    for batch in batches:
        if batch.num_rows:
            yield from rows_to_failures(
                batch, "enrich", "duplicate_id_conflict", _CONFLICT_MESSAGE
            ).to_batches()


# --- the driver -------------------------------------------------------------------------------


def spark_schema(arrow: pa.Schema) -> T.StructType:
    """Spark's schema of an Arrow schema made of :data:`_ARROW_TYPES`."""
    by_arrow = {str(v): k for k, v in _ARROW_TYPES.items()}
    return T.StructType([T.StructField(f.name, _SPARK_TYPES[by_arrow[str(f.type)]], True) for f in arrow])


def iceberg_arrow(table: Any) -> pa.Schema:
    """Arrow schema (Spark's large types) of an Iceberg table's current schema."""
    fields = []
    for f in table.schema().fields:
        kind = str(f.field_type)
        if kind not in _ARROW_TYPES:
            raise ConfigError(f"column {f.name} has type {kind}, which the Spark engine does not write")
        fields.append(pa.field(f.name, _ARROW_TYPES[kind]))
    return pa.schema(fields)


def find_batch(table: Any, pipeline_id: str, marker: str) -> Any | None:
    """The snapshot of ``table`` that committed micro-batch ``marker`` for ``pipeline_id``."""
    meta = table.metadata
    by_id = {s.snapshot_id: s for s in meta.snapshots}
    sid = meta.current_snapshot_id
    while sid is not None and sid in by_id:
        snap = by_id[sid]
        props = snap.summary.additional_properties if snap.summary else {}
        if props.get(PIPELINE_KEY) == pipeline_id and props.get(BATCH_KEY) == marker:
            return snap
        sid = snap.parent_snapshot_id
    return None


@dataclass
class SparkRunStats(RunStats):
    batches: int = 0
    replayed_tables: int = 0
    per_batch: list[dict[str, int]] = field(default_factory=list)


class SparkPipeline:
    """One streaming query: source -> workers -> ``foreachBatch`` writes.

    Args:
        settings: The settings.
        source: ``files`` or ``kafka``.
        paths: For ``files``: one directory (every NDJSON file in it, new ones as they come).
        app_id: App id of file events without a known write key.
    """

    def __init__(
        self, settings: Settings, source: str, paths: tuple[str, ...] = (), app_id: str | None = None
    ):
        if source not in ("files", "kafka"):
            raise ConfigError(
                f"the Spark engine reads --source files or kafka, not {source!r} "
                "(the spool is a local log: run it with --engine local)"
            )
        self.settings = settings
        self.source = source
        self.paths = paths
        self.stats = SparkRunStats()
        self.pipeline_id = settings.pipeline.pipeline_id
        self._query: Any = None
        self._query_id = threading.Event()
        self._query_id_value = ""
        self._stop = threading.Event()
        catalog = _open_catalog(settings)
        self.catalog = catalog
        tables = ensure_tables(catalog, settings, ingest_tables(settings))
        steps = build_chain(settings, loader=_columns_only)
        added = tuple(col for step in steps for col in step.columns)
        events = evolve_schema(tables[EVENTS], (*EVENT_COLUMNS, *added))
        self.events_arrow = iceberg_arrow(events)
        self.failed_arrow = FAILED_ARROW
        out = self.events_arrow
        for name in _FAILURE_ONLY:
            out = out.append(FAILED_ARROW.field(name))
        for f in ORDER_COLUMNS:
            out = out.append(f)
        self.plan = WorkerPlan(
            settings=settings,
            options=decode_options(settings, app_id),
            out_schema=out,
            chunk_bytes=settings.pipeline.read_chunk_bytes,
            envelope=getattr(settings.kafka, "envelope", "spool"),
        )
        self.dedup = settings.enrich.dedup.enabled
        self.spark: SparkSession = spark_session(settings, f"clicklake-{self.pipeline_id}")

    def checkpoint_location(self) -> str:
        cfg = self.settings.spark
        if cfg.checkpoint_dir:
            return cfg.checkpoint_dir
        return str(
            (
                self.settings.storage.data_dir / "spark-checkpoints" / f"{self.pipeline_id}-{self.source}"
            ).resolve()
        )

    def _input(self) -> DataFrame:
        spark = self.spark
        out_struct = spark_schema(self.plan.out_schema)
        if self.source == "files":
            folder = _one_directory(self.paths)
            reader = (
                spark.readStream.format("binaryFile")
                .schema("path STRING, modificationTime TIMESTAMP, length BIGINT, content BINARY")
                .option("pathGlobFilter", _FILE_GLOB)
            )
            if self.settings.spark.max_files_per_trigger:
                reader = reader.option("maxFilesPerTrigger", self.settings.spark.max_files_per_trigger)
            df = reader.load(folder).select("path", "content")
            return df.mapInArrow(decode_files(self.plan), out_struct)
        kafka = self.settings.kafka
        reader = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
            .option("subscribe", kafka.topic)
            .option("startingOffsets", "earliest")
            .option("failOnDataLoss", "true")
        )
        if self.settings.spark.max_offsets_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", self.settings.spark.max_offsets_per_trigger)
        df = reader.load().select("value", "topic", "partition", "offset")
        return df.mapInArrow(decode_kafka(self.plan), out_struct)

    def run(self, once: bool = False) -> SparkRunStats:
        """Start the query; with ``once``, process what is there now (``availableNow``) and return.

        Otherwise run until :meth:`stop` (SIGTERM/SIGINT): the batch in flight is finished first.
        """
        writer = (
            self._input()
            .writeStream.foreachBatch(self._batch)
            .option("checkpointLocation", self.checkpoint_location())
            .queryName(f"clicklake_{self.pipeline_id}_{self.source}".replace("-", "_").replace(".", "_"))
        )
        if once:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{self.settings.spark.trigger_interval_s} seconds")
        self._query = writer.start()
        self._query_id_value = str(self._query.id)
        self._query_id.set()
        log.info(
            "event=start engine=spark source=%s pipeline=%s query=%s checkpoint=%s",
            self.source,
            self.pipeline_id,
            self._query_id_value,
            self.checkpoint_location(),
        )
        try:
            while not self._query.awaitTermination(1):
                if self._stop.is_set():
                    self._query.stop()
        finally:
            if self._query.isActive:
                self._query.stop()
        exc = self._query.exception()
        if exc is not None:
            raise RuntimeError(f"the Spark streaming query failed: {exc}")
        log.info(
            "event=finish engine=spark events=%d failed=%d duplicates=%d batches=%d",
            self.stats.events,
            self.stats.failed,
            self.stats.duplicates,
            self.stats.batches,
        )
        return self.stats

    def stop(self) -> None:
        self._stop.set()

    # -- one micro-batch ------------------------------------------------------------------------

    def _batch(self, df: DataFrame, batch_id: int) -> None:
        self._query_id.wait()
        marker = f"{self._query_id_value}:{batch_id}"
        settings = self.settings
        events_t = self.catalog.load_table(f"{settings.storage.namespace}.{EVENTS}")
        failed_t = self.catalog.load_table(f"{settings.storage.namespace}.{FAILED_EVENTS}")
        events_done = find_batch(events_t, self.pipeline_id, marker)
        failed_done = find_batch(failed_t, self.pipeline_id, marker)
        if events_done is not None and failed_done is not None:
            log.info("event=batch_skipped batch=%s reason=committed", marker)
            self.stats.replayed_tables += 2
            return
        df = df.persist()
        try:
            good = df.where(F.col("error_type").isNull())
            bad = df.where(F.col("error_type").isNotNull())
            if self.dedup:
                # On a replay whose events commit landed, judge against events as it was before.
                current = events_t.current_snapshot()
                seen_at = (
                    events_done.parent_snapshot_id
                    if events_done is not None
                    else (current.snapshot_id if current is not None else None)
                )
                new, conflicts, dups = self._dedup(good, seen_at)
            else:
                new, conflicts, dups = good, None, 0
            failed = bad.select(*[F.col(c.name) for c in FAILED_COLUMNS if c.name != "failed_tstamp"])
            if conflicts is not None:
                fails = conflicts.select(*[F.col(f.name) for f in self.events_arrow]).mapInArrow(
                    failures_of_conflicts, spark_schema(FAILED_ARROW)
                )
                failed = failed.unionByName(fails.drop("failed_tstamp"))
            props = {PIPELINE_KEY: self.pipeline_id, BATCH_KEY: marker, QUERY_KEY: self._query_id_value}
            n_events = n_failed = 0
            if events_done is None:
                out = new.select(
                    *[
                        F.current_timestamp().alias(f.name) if f.name == "load_tstamp" else F.col(f.name)
                        for f in self.events_arrow
                    ]
                )
                n_events = self._append(out, EVENTS, props)
            else:
                self.stats.replayed_tables += 1
            if failed_done is None:
                out = failed.select(
                    *[
                        F.current_timestamp().alias(c.name) if c.name == "failed_tstamp" else F.col(c.name)
                        for c in FAILED_COLUMNS
                    ]
                )
                n_failed = self._append(out, FAILED_EVENTS, props)
            else:
                self.stats.replayed_tables += 1
        finally:
            df.unpersist()
        self.stats.events += n_events
        self.stats.failed += n_failed
        self.stats.duplicates += dups
        self.stats.batches += 1
        self.stats.per_batch.append({"batch": batch_id, "events": n_events, "failed": n_failed})

    def _dedup(self, good: DataFrame, seen_at: int | None) -> tuple[DataFrame, DataFrame, int]:
        """``(new, conflicts, duplicates dropped)``, as the local dedup step judges them."""
        hi = good.agg(F.max("collector_tstamp")).first()
        newest = hi[0] if hi is not None else None
        key = ["app_id", "event_id"]
        order = Window.partitionBy(*key).orderBy("source_stream", "_chunk", "_row")
        judged = good.withColumn("_nth", F.row_number().over(order)).withColumn(
            "_first_fp", F.first("event_fingerprint").over(order)
        )
        if seen_at is not None and newest is not None:
            window_us = int(self.settings.enrich.dedup.window_hours * 3_600_000_000)
            since = F.timestamp_micros(F.lit(int(newest.timestamp() * 1_000_000) - window_us))
            seen = (
                self.spark.read.option("versionAsOf", seen_at)
                .table(table_name(self.settings, EVENTS))
                .where(F.col("collector_tstamp") >= since)
                .where(F.col("app_id").isNotNull() & F.col("event_id").isNotNull())
                .groupBy(*key)
                .agg(F.min_by("event_fingerprint", "collector_tstamp").alias("_seen_fp"))
                .withColumn("_seen", F.lit(True))
            )
            judged = judged.join(seen, on=key, how="left")
        else:
            judged = judged.withColumn("_seen_fp", F.lit(None).cast("string")).withColumn(
                "_seen", F.lit(None).cast("boolean")
            )
        fp = F.col("event_fingerprint")
        seen_hit = F.col("_seen").isNotNull()
        verdict = (
            F.when(F.col("app_id").isNull() | F.col("event_id").isNull(), F.lit("new"))
            .when(seen_hit & (F.col("_seen_fp").isNull() | (F.col("_seen_fp") == fp)), F.lit("dup"))
            .when(seen_hit, F.lit("conflict"))
            .when((F.col("_nth") > 1) & (F.col("_first_fp") == fp), F.lit("dup"))
            .when(F.col("_nth") > 1, F.lit("conflict"))
            .otherwise(F.lit("new"))
        )
        judged = judged.withColumn("_verdict", verdict).persist()
        counts = {r["_verdict"]: int(r["count"]) for r in judged.groupBy("_verdict").count().collect()}
        new = judged.where(F.col("_verdict") == "new")
        conflicts = judged.where(F.col("_verdict") == "conflict")
        return new, conflicts, counts.get("dup", 0)

    def _append(self, df: DataFrame, table: str, props: dict[str, str]) -> int:
        df = df.persist()
        try:
            n = df.count()
            if n == 0:
                return 0
            writer = df.writeTo(table_name(self.settings, table)).option("fanout-enabled", "true")
            for k, v in props.items():
                writer = writer.option(f"snapshot-property.{k}", v)
            t0 = time.monotonic()
            writer.append()
            self.stats.commits += 1
            log.info(
                "event=commit engine=spark table=%s batch=%s rows=%d seconds=%.3f",
                table,
                props[BATCH_KEY],
                n,
                time.monotonic() - t0,
            )
            return int(n)
        finally:
            df.unpersist()


def _columns_only(name: str, settings: Settings) -> Step | None:
    """The chain's steps as the driver needs them: only for the columns they add."""
    from clicklake.enrich.chain import _load_builtin

    return _load_builtin(name, settings)


def _one_directory(paths: tuple[str, ...]) -> str:
    if len(paths) != 1 or not Path(paths[0]).is_dir():
        raise InputError(
            "the Spark engine reads one directory of NDJSON files (every file in it, and new ones "
            "as they arrive): pass exactly one directory"
        )
    return str(Path(paths[0]).resolve())


def install_signal_handlers(pipeline: SparkPipeline) -> None:
    """SIGTERM and SIGINT stop the query after the batch in flight."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("event=signal signal=%d", signum)
        pipeline.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
