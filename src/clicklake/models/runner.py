"""Build the model tables from ``events``: incremental by whole days, deterministic.

``page_views`` and ``sessions`` are recomputed per *window* of whole local days. A window
``[d0, d1)`` starts and ends at local midnights that are **safe boundaries**: no session key
(client session id, else device key) has two consecutive events across the boundary less than
``session_gap`` apart. Sessions never cross a safe boundary (a gap starts a new run; max-length
pieces are counted from a run's first event), so the sessions of a window computed from the
window's events alone are exactly those a full refresh computes, and their days are exactly the
window's days. An incremental run:

1. diffs the data files of the current ``events`` snapshot against the snapshot recorded in the
   model tables (``clicklake.models.events_snapshot`` in their snapshot summaries),
2. takes the local days of the events in added files (and of the partitions of removed files),
3. widens each run of days backwards and forwards to safe boundaries (the look-back a session
   can span), reading events with one extra day on each side so that dedup picks the same copy
   of an event as a full refresh,
4. recomputes the window and replaces those days (an Iceberg overwrite filtered on the identity
   date partition column, so a day that became empty is emptied too).

``user_mapping``, ``users`` and ``daily_kpis`` depend on all history (latest identity, first
session ever), so they are recomputed whole from ``events`` (two columns) and ``sessions``
(small) at every run that changed something. With ``--full-refresh`` everything is recomputed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from clicklake.config import Settings
from clicklake.lakehouse.catalog import open_catalog, table_id
from clicklake.lakehouse.duckdb_write import commit_files, write_data_files
from clicklake.models.render import (
    ModelOptions,
    local_date_sql,
    options_from_settings,
    render,
    template_values,
)
from clicklake.query.engine import (
    ROW_KEY,
    DataFiles,
    duck_type,
    new_connection,
    parquet_relation,
    quote_ident,
    quote_literal,
    register_table,
    snapshot_files,
)

log = logging.getLogger("clicklake.models")

EVENTS_SNAPSHOT_KEY = "clicklake.models.events_snapshot"

#: Model table -> its identity partition column (``None``: unpartitioned).
MODEL_TABLES: dict[str, str | None] = {
    "page_views": "page_view_date",
    "sessions": "session_date",
    "user_mapping": None,
    "users": None,
    "daily_kpis": "date",
}

#: How the rows of each model table's files are sorted (within one partition value). Page views
#: are not: at 10M events sorting them cost ~2 CPU s of the write (a quarter, and the sorted
#: COPY runs on one core) for files 8% smaller and queries within noise (one session's page views
#: 0.13 s instead of 0.22 s CPU, daily aggregates the same). Sessions are, although it costs ~1 CPU
#: s: daily_kpis and users sum doubles read from the sessions files in file order, and over
#: DuckDB's unsorted output the daily revenue and average duration came out different in their
#: last bits from the sorted files' (the previous build's), an order that varies between runs.
FILE_ORDER: dict[str, tuple[str, ...]] = {
    "page_views": (),
    "sessions": ("app_id", "start_tstamp", "session_id"),
    "user_mapping": ("app_id", "anonymous_id"),
    "users": ("app_id", "user_key"),
    "daily_kpis": ("app_id",),
}

#: Enrichment columns the models read; selected as NULL while ``events`` lacks them.
OPTIONAL_EVENT_COLUMNS: dict[str, pa.DataType] = {
    **{
        name: pa.string()
        for name in (
            "page_urlhost",
            "page_urlpath",
            "page_urlquery",
            "refr_urlhost",
            "refr_medium",
            "refr_source",
            "refr_term",
            "mkt_source",
            "mkt_medium",
            "mkt_campaign",
            "mkt_term",
            "mkt_content",
            "mkt_clickid",
            "mkt_network",
            "default_channel_group",
            "bot_reason",
            "br_family",
            "br_version",
            "os_family",
            "os_version",
            "dvce_family",
            "dvce_class",
            "geo_country",
            "geo_region",
            "geo_city",
            "event_fingerprint",
        )
    },
    "is_bot": pa.bool_(),
}

#: Partitions of a model table written at once (see write_data_files): one per core here.
_WRITE_LANES = 2
_MAX_WIDEN_DAYS = 400
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Window:
    """Local days ``[start, end)`` recomputed together; ``end`` ``None`` means open-ended."""

    start: date
    end: date | None


class _Events:
    """The current snapshot of ``events`` as DuckDB relations, pruned by day partition.

    Each relation ends with the BIGINT column ``_row`` (:data:`ROW_KEY`), naming a row by its
    place in the snapshot's files (or in the scanned table, when PyIceberg applies deletes), the
    same in every relation. The models find the chosen copy of an event again by it, reading
    only that copy's row, instead of joining on ``event_id``; so the relations a union reads
    must not overlap (see :meth:`_Builder._window_sql`).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, table: Table, files: DataFiles) -> None:
        self.con = con
        schema = table.schema().as_arrow()
        self.schema = schema
        self.files = files
        self._day_index = _day_partition_index(table)
        if files.has_deletes:
            rows = table.scan().to_arrow()
            rows = rows.append_column(ROW_KEY, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
            con.register("__events_arrow", rows)
            self._arrow = True
        else:
            self._arrow = False
        extra = [n for n in OPTIONAL_EVENT_COLUMNS if n not in schema.names]
        self._extra = ", ".join(
            f"CAST(NULL AS {duck_type(OPTIONAL_EVENT_COLUMNS[n])}) AS {quote_ident(n)}" for n in extra
        )

    def relation(self, lo_us: int | None = None, hi_us: int | None = None) -> str:
        """SQL selecting the events with ``lo_us <= derived_tstamp < hi_us`` (epoch microseconds)."""
        if self._arrow:
            base = "SELECT * FROM __events_arrow"
        else:
            # Files keep their number in the whole snapshot, whichever of them a range reads.
            numbered = list(enumerate(self.files.paths))
            if self._day_index is not None and (lo_us is not None or hi_us is not None):
                lo_day = -(10**9) if lo_us is None else lo_us // _DAY_US
                hi_day = 10**9 if hi_us is None else hi_us // _DAY_US
                numbered = [
                    (i, p)
                    for (i, p), part in zip(numbered, self.files.partitions, strict=True)
                    if (d := _as_day(part[self._day_index])) is None or lo_day <= d <= hi_day
                ]
            base = parquet_relation(
                self.con, [p for _, p in numbered], self.schema, file_numbers=[i for i, _ in numbered]
            )
        conds = []
        if lo_us is not None:
            conds.append(f"derived_tstamp >= {_ts_literal(lo_us)}")
        if hi_us is not None:
            conds.append(f"derived_tstamp < {_ts_literal(hi_us)}")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        extra = f", {self._extra}" if self._extra else ""
        return f"SELECT *{extra} FROM ({base}) AS ev{where}"


def create_copies(con: duckdb.DuckDBPyConnection) -> None:
    """The temp table ``copies``: copies.sql's rows over ``src_events``, found by sorting the
    hashes of ``event_id`` in NumPy. A hash aggregate over millions of distinct values, as
    copies.sql does it (and Spark runs it), cost DuckDB three times the CPU: 3.2-4.0 against
    1.1-1.2 CPU s at 10M events, nearly all of it reading and hashing the ids. The hash is
    DuckDB's ``hash(event_id)``, as in copies.sql."""
    hashes = con.execute("SELECT hash(event_id) AS event_h FROM src_events").fetchnumpy()["event_h"]
    dups = duplicated(np.asarray(hashes, dtype=np.uint64))
    con.register("__copies", pa.table({"event_h": pa.array(dups, pa.uint64())}))
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE copies AS SELECT event_h FROM __copies")
    finally:
        con.unregister("__copies")


def duplicated(values: np.ndarray) -> np.ndarray:
    """The values that occur more than once in ``values`` (unsigned 64-bit), each once, sorted.

    ``values`` is sorted in place: a repeated value then sits next to itself. NumPy sorts 10M
    integers in ~0.15 s (vectorized); splitting them to sort on two threads was slower.
    """
    values.sort()
    return np.unique(values[1:][values[1:] == values[:-1]])


def _as_day(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, date):
        return (value - date(1970, 1, 1)).days
    return None


def _day_partition_index(table: Table) -> int | None:
    source = table.schema().find_field("derived_tstamp").field_id
    for i, field in enumerate(table.spec().fields):
        if field.source_id == source and str(field.transform) == "day":
            return i
    return None


def _ts_literal(us: int) -> str:
    ts = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return f"CAST({quote_literal(ts.isoformat())} AS TIMESTAMPTZ)"


def _midnight_us(day: date, tz: str) -> int:
    local = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))
    delta = local.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _read_checkpoint(table: Table) -> int | None:
    snap = table.current_snapshot()
    if snap is None or snap.summary is None:
        return None
    raw = snap.summary.additional_properties.get(EVENTS_SNAPSHOT_KEY)
    return int(raw) if raw else None


def _ancestor_ids(table: Table) -> list[int]:
    by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
    out: list[int] = []
    sid = table.metadata.current_snapshot_id
    while sid is not None and sid in by_id:
        out.append(sid)
        sid = by_id[sid].parent_snapshot_id
    return out


def _retention_cutoff(table: Table, since: int) -> int:
    """The latest first-day-kept (days since epoch) of retention snapshots after ``since``."""
    from clicklake.lakehouse.maintenance import RETENTION_CUTOFF_KEY

    by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
    cutoff = -(10**9)
    sid = table.metadata.current_snapshot_id
    while sid is not None and sid != since and sid in by_id:
        snap = by_id[sid]
        raw = snap.summary.additional_properties.get(RETENTION_CUTOFF_KEY) if snap.summary else None
        if raw is not None:
            cutoff = max(cutoff, int(raw))
        sid = snap.parent_snapshot_id
    return cutoff


@contextmanager
def _timed(step: str) -> Iterator[None]:
    """Log the wall and process CPU seconds (all threads) of one build step."""
    t0, c0 = time.monotonic(), time.process_time()
    try:
        yield
    finally:
        log.debug(
            "event=models_step step=%s seconds=%.3f cpu_seconds=%.3f",
            step,
            time.monotonic() - t0,
            time.process_time() - c0,
        )


class _Builder:
    def __init__(self, settings: Settings, catalog: Catalog, events: Table, opts: ModelOptions) -> None:
        self.settings = settings
        self.catalog = catalog
        self.events_table = events
        self.opts = opts
        self.con = new_connection()
        # Rows are sorted when their files are written (FILE_ORDER); not keeping insertion order
        # lets DuckDB materialize the temp tables in parallel without re-ordering them.
        self.con.execute("SET preserve_insertion_order = false")
        # The models read the events files several times (dedup, rows, descriptive columns).
        self.con.execute("SET parquet_metadata_cache = true")
        snap = events.current_snapshot()
        # -1: events has no snapshot yet (stored as such, so an empty build is up to date too).
        self.snapshot_id: int = snap.snapshot_id if snap else -1
        self.files = snapshot_files(events)
        self.events = _Events(self.con, events, self.files)
        # Iceberg commits run on this thread, in order, while DuckDB computes and writes the next
        # table (a commit is ~0.2 s of Python and small files; five of them in turn left a core
        # idle for ~1 s). Catalog calls of both threads take the lock.
        self.committer = ThreadPoolExecutor(1, thread_name_prefix="clicklake-commit")
        self.catalog_lock = threading.Lock()
        self._commit_failed = False

    # -- planning -------------------------------------------------------------------------

    def plan(self, full_refresh: bool) -> list[Window] | None:
        """Windows to recompute; ``None`` means a full refresh, ``[]`` nothing to do."""
        if full_refresh or self.files.has_deletes:
            return None
        checkpoints = []
        for name in MODEL_TABLES:
            try:
                table = self.catalog.load_table(table_id(self.settings, name))
            except NoSuchTableError:
                return None
            checkpoints.append(_read_checkpoint(table))
        ancestors = _ancestor_ids(self.events_table)
        if all(cp == self.snapshot_id for cp in checkpoints):
            return []
        if any(cp is None or cp not in ancestors for cp in checkpoints):
            return None
        # The oldest checkpoint: a crash between model commits leaves some tables behind.
        oldest = max(checkpoints, key=lambda cp: ancestors.index(cp))  # type: ignore[arg-type]
        if oldest == self.snapshot_id:
            return []
        assert oldest is not None
        old = snapshot_files(self.events_table, oldest)
        if old.has_deletes:
            return None
        current = set(self.files.paths)
        added = sorted(current - set(old.paths))
        removed = [part for p, part in zip(old.paths, old.partitions, strict=True) if p not in current]
        index = self.events._day_index
        if removed and index is None:
            return None
        removed_days = {
            d for part in removed if index is not None and (d := _as_day(part[index])) is not None
        }
        # Days that events retention dropped keep their model rows (models have their own
        # retention, maintenance.retention_models_days).
        keep_from = _retention_cutoff(self.events_table, oldest)
        removed_days = {d for d in removed_days if d >= keep_from}
        days: set[date] = set()
        if added:
            rel = parquet_relation(self.con, added, self.events.schema)
            rows = self.con.execute(
                f"SELECT DISTINCT {local_date_sql('derived_tstamp', self.opts.timezone)} "
                f"FROM ({rel}) WHERE derived_tstamp IS NOT NULL"
            ).fetchall()
            days.update(r[0] for r in rows)
        epoch = date(1970, 1, 1)
        for d in removed_days:
            utc_day = epoch + timedelta(days=d)
            days.update(utc_day + timedelta(days=k) for k in (-1, 0, 1))
        return self._windows(days)

    def _windows(self, days: set[date]) -> list[Window] | None:
        runs: list[list[date]] = []
        for d in sorted(days):
            if runs and d - runs[-1][1] <= timedelta(days=1):
                runs[-1][1] = d
            else:
                runs.append([d, d])
        windows: list[Window] = []
        for first, last in runs:
            start = first
            steps = 0
            while not self._safe(start):
                start -= timedelta(days=1)
                steps += 1
                if steps > _MAX_WIDEN_DAYS:
                    return None
            end: date | None = last + timedelta(days=1)
            steps = 0
            while end is not None and not self._safe(end):
                end += timedelta(days=1)
                steps += 1
                if steps > _MAX_WIDEN_DAYS:
                    end = None
            if windows and (windows[-1].end is None or windows[-1].end >= start):
                prev = windows.pop()
                start = prev.start
                end = None if prev.end is None or end is None else max(prev.end, end)
            windows.append(Window(start, end))
        return windows

    def _safe(self, day: date) -> bool:
        """Whether local midnight of ``day`` is a boundary no session crosses."""
        if self.opts.split_at_midnight:
            return True
        t = _midnight_us(day, self.opts.timezone)
        gap = self.opts.gap_us
        rel = self.events.relation(t - gap, t + gap)
        row = self.con.execute(
            f"""
            SELECT count(*) FROM (
                SELECT
                    epoch_us(derived_tstamp) AS ts,
                    lag(epoch_us(derived_tstamp)) OVER (
                        PARTITION BY app_id, k ORDER BY derived_tstamp, event_id
                    ) AS prev
                FROM (
                    SELECT *,
                        CASE WHEN session_id IS NOT NULL THEN 's:' || session_id
                             ELSE 'd:' || coalesce(anonymous_id, user_id) END AS k
                    FROM ({rel}) AS r
                    WHERE event_type IN ('page', 'screen', 'track')
                ) AS keyed
            ) AS pairs
            WHERE prev < {t} AND ts >= {t} AND ts - prev < {gap}
            """
        ).fetchone()
        return row is not None and int(row[0]) == 0

    # -- computing ------------------------------------------------------------------------

    def _window_sql(
        self, windows: Sequence[Window] | None, margin_days: int = 0
    ) -> tuple[str, list[tuple[int | None, int | None]]]:
        if windows is None:
            return "true", [(None, None)]
        tz = self.opts.timezone
        ranges: list[tuple[int | None, int | None]] = []
        conds = []
        for w in windows:
            lo = _midnight_us(w.start, tz)
            hi = None if w.end is None else _midnight_us(w.end, tz)
            conds.append(
                f"(derived_tstamp >= {_ts_literal(lo)}"
                + ("" if hi is None else f" AND derived_tstamp < {_ts_literal(hi)}")
                + ")"
            )
            lo_m, hi_m = lo - margin_days * _DAY_US, None if hi is None else hi + margin_days * _DAY_US
            if ranges and (ranges[-1][1] is None or ranges[-1][1] >= lo_m):
                # Margins that meet: one range, so that no event is read twice. (The rows
                # inside windows never are, and only those reach sessionized, which finds them
                # again by _row; but a key should name one row, and the days are read once.)
                prev_lo, prev_hi = ranges.pop()
                hi_m = None if prev_hi is None or hi_m is None else max(prev_hi, hi_m)
                lo_m = lo_m if prev_lo is None else prev_lo
            ranges.append((lo_m, hi_m))
        return " OR ".join(conds), ranges

    def _create(self, name: str, sql: str, temp: bool = True) -> None:
        """Materialize ``sql`` as ``name``; ``temp=False``: a table of the in-memory database,
        which other cursors of the connection see too (temp tables are the connection's own)."""
        with _timed(name):
            kind = "TEMP TABLE" if temp else "TABLE"
            self.con.execute(f"CREATE OR REPLACE {kind} {quote_ident(name)} AS {sql}")

    def _drop(self, name: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")

    def build_windowed(self, windows: Sequence[Window] | None) -> dict[str, Future[int]]:
        """Compute and write ``page_views`` and ``sessions`` of ``windows``; their commits (rows).

        The tables the writes read are database tables, not temp ones: their days are written by
        two cursors at once (see :func:`write_data_files`), and a cursor does not see another's
        temp tables. The two model tables' rows are views (page_views.sql, sessions.sql) joining
        the narrow computed rows (page_view_stats, session_stats) to the descriptive columns of
        sessionized, read once, as each day is written.
        """
        window, ranges = self._window_sql(windows, margin_days=1)
        src = " UNION ALL ".join(self.events.relation(lo, hi) for lo, hi in ranges)
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW src_events AS {src}")
        values = template_values(self.opts, window)
        self._create("key_clashes", render("key_clashes", values))
        with _timed("copies"):
            create_copies(self.con)
        self._create("base_events", render("base_events", values))
        self._drop("key_clashes")
        self._drop("copies")
        stats = ("sessionized", "page_view_stats", "session_stats")
        views = {name: f"{name}_new" for name in ("page_views", "sessions")}
        try:
            for name in stats:
                self._create(name, render(name, values), temp=False)
            # Each intermediate is dropped once read for the last time: at 10M events they are GBs.
            self._drop("base_events")
            for name, view in views.items():
                self.con.execute(f"CREATE OR REPLACE VIEW {view} AS {render(name, values)}")
            return self.write_all(
                views,
                windows,
                # One row per row of these (the views' inner joins find each one's row), and the
                # same day column: counting them skips the joins.
                counted_in={"page_views": "page_view_stats", "sessions": "session_stats"},
            )
        finally:
            for view in views.values():
                self.con.execute(f"DROP VIEW IF EXISTS {view}")
            for name in stats:
                self._drop(name)

    def compute_global(self, sessions: Callable[[], Table]) -> dict[str, str]:
        """Compute ``user_mapping``, ``users`` and ``daily_kpis``; ``sessions`` gives the
        ``sessions`` table once its commit is done (user_mapping needs only events)."""
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW src_events AS {self.events.relation()}")
        values = template_values(self.opts)
        self._create("user_mapping_new", render("user_mapping", values), temp=False)
        register_table(self.con, sessions(), "sessions_all")
        self._create("users_new", render("users", values), temp=False)
        self._create("daily_kpis_new", render("daily_kpis", values), temp=False)
        return {"user_mapping": "user_mapping_new", "users": "users_new", "daily_kpis": "daily_kpis_new"}

    # -- writing --------------------------------------------------------------------------

    def table_for(self, name: str, schema: pa.Schema) -> Table:
        ident = table_id(self.settings, name)
        try:
            table = self.catalog.load_table(ident)
        except NoSuchTableError:
            table = self.catalog.create_table(
                ident, schema=schema, properties={"write.parquet.compression-codec": "zstd"}
            )
            part = MODEL_TABLES[name]
            if part is not None:
                with table.update_spec() as spec:
                    spec.add_identity(part)
            return table
        if set(schema.names) - set(table.schema().column_names):
            with table.update_schema() as update:
                update.union_by_name(schema)
        return table

    def write_all(
        self,
        relations: dict[str, str],
        windows: Sequence[Window] | None,
        counted_in: dict[str, str] | None = None,
    ) -> dict[str, Future[int]]:
        """Replace the rows of ``windows`` (all rows: ``None``) of each model table with its
        relation's: the files are written here, in turn; each table's commit is queued on
        :attr:`committer` once its files are written. Returns each table's commit (rows).
        ``counted_in``: per table, a cheaper table with its row counts per day (see
        :func:`write_data_files`)."""
        # Every table is created or evolved first, so that no catalog call of this thread waits
        # for a commit of the other.
        tables = {name: self._table(name, relation) for name, relation in relations.items()}
        commits: dict[str, Future[int]] = {}
        for name, relation in relations.items():
            with _timed(f"write {name}"):
                files = write_data_files(
                    self.con,
                    quote_ident(relation),
                    tables[name],
                    FILE_ORDER[name],
                    workers=_WRITE_LANES,
                    counted_in=(counted_in or {}).get(name),
                )
            commits[name] = self.committer.submit(self._commit, name, tables[name], files, windows)
        return commits

    def _table(self, name: str, relation: str) -> Table:
        """The model table ``name``, created or evolved to ``relation``'s columns."""
        # Only the schema is fetched: DuckDB writes the rows into the table's files itself.
        schema = self.con.sql(f"SELECT * FROM {quote_ident(relation)} LIMIT 0").to_arrow_table().schema
        with self.catalog_lock:
            return self.table_for(name, schema)

    def _commit(
        self, name: str, table: Table, files: list[DataFile], windows: Sequence[Window] | None
    ) -> int:
        """Commit ``files`` to ``table``, replacing the rows of ``windows``; rows committed.

        After a failed commit the tables queued behind it are not committed: the build stops
        there, as if it had crashed between two commits (the next build starts from the oldest
        checkpoint)."""
        if self._commit_failed:
            raise RuntimeError(f"{name} not committed: an earlier model table's commit failed")
        try:
            with _timed(f"commit {name}"), self.catalog_lock:
                return self._commit_locked(name, table, files, windows)
        except BaseException:
            self._commit_failed = True
            raise

    def _commit_locked(
        self, name: str, table: Table, files: list[DataFile], windows: Sequence[Window] | None
    ) -> int:
        props = {EVENTS_SNAPSHOT_KEY: str(self.snapshot_id)}
        part = MODEL_TABLES[name]
        flt: BooleanExpression | str | None = None
        if table.current_snapshot() is not None:
            flt = AlwaysTrue()
            if windows is not None and part is not None:
                col = part
                flt = " OR ".join(
                    f"({col} >= '{w.start.isoformat()}'"
                    + ("" if w.end is None else f" AND {col} < '{w.end.isoformat()}'")
                    + ")"
                    for w in windows
                )
        commit_files(table, files, flt, props)
        return sum(f.record_count for f in files)


def build_models(settings: Settings, full_refresh: bool = False) -> dict[str, int]:
    """Build or update ``page_views``, ``sessions``, ``user_mapping``, ``users`` and ``daily_kpis``.

    Args:
        settings: The settings (catalog, ``[models]`` options).
        full_refresh: Recompute every table from all events instead of only the affected days.

    Returns:
        Rows written per model table in this run (0 for every table when nothing was new).

    Raises:
        ConfigError: A ``[models]`` option is invalid.
    """
    opts = options_from_settings(settings)
    catalog = open_catalog(settings)
    try:
        events = catalog.load_table(table_id(settings, "events"))
    except NoSuchTableError:
        return dict.fromkeys(MODEL_TABLES, 0)
    t0 = time.monotonic()
    builder = _Builder(settings, catalog, events, opts)
    try:
        windows = builder.plan(full_refresh)
        if windows == []:
            log.info("event=models_up_to_date events_snapshot=%s", builder.snapshot_id)
            return dict.fromkeys(MODEL_TABLES, 0)
        commits = builder.build_windowed(windows)

        def sessions() -> Table:
            for commit in commits.values():
                commit.result()  # raises a failed commit's error here, before more work
            with builder.catalog_lock:
                return catalog.load_table(table_id(settings, "sessions"))

        relations = builder.compute_global(sessions)
        try:
            commits.update(builder.write_all(relations, None))
        finally:
            for relation in relations.values():
                builder._drop(relation)
        counts = {name: commits[name].result() for name in MODEL_TABLES}
    finally:
        # A commit under way completes (its files are whole) before the build returns or raises.
        builder.committer.shutdown(wait=True)
        builder.con.close()
    log.info(
        "event=models_built mode=%s windows=%s events_snapshot=%s rows=%s seconds=%.3f",
        "full" if windows is None else "incremental",
        "all" if windows is None else ",".join(f"{w.start}..{w.end or ''}" for w in windows),
        builder.snapshot_id,
        ",".join(f"{k}:{v}" for k, v in counts.items()),
        time.monotonic() - t0,
    )
    return counts
