"""Locked-down DuckDB for the API and ``clicklake sql``: a role sees only its rows, masked.

For each role the only relations a statement can name are views over the current Iceberg
snapshots with the role's ``app_id`` row filter and PII masks applied. Whatever the SQL says
(``UNION``, subqueries, CTEs, catalog functions), it cannot reach anything else:

1. **One read-only statement**: DuckDB's own parser splits and types the text
   (``extract_statements``); only ``SELECT`` passes.
2. **Only the role's views**: the statement's syntax tree (``json_serialize_sql``) is walked;
   every table reference must be a role view or a CTE of the statement (and a CTE may not
   shadow a system relation), qualified names (``information_schema.tables``,
   ``main.x``), time travel, table functions (``read_csv``, ``duckdb_views()``, ``query``...)
   and functions that read settings or files are refused.
3. **No file or network access**: the database may read only the warehouse folder
   (``allowed_directories``), then ``enable_external_access = false``, extension
   auto-install/auto-load off, and ``lock_configuration`` so no ``SET``/``PRAGMA`` can undo it.
4. **Bounded**: a memory limit, a thread count, a statement timeout (the statement is
   interrupted from a timer), and at most ``api.max_rows`` rows returned.

One database per role scope (apps, PII, admin) lives as long as the process; a relation is
replaced when its table gets a commit. Model tables are copied in (filtered and masked);
``events`` and ``failed_events`` stay views over the snapshot's files. Requests use cursors.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.transforms import DayTransform

from clicklake.config import Settings
from clicklake.exceptions import ClickLakeError, InputError, StorageError
from clicklake.lakehouse.audit import AUDIT_LOG
from clicklake.lakehouse.catalog import open_catalog
from clicklake.query.access import AccessDenied, Role
from clicklake.query.engine import (
    ALL_TABLES,
    ManifestFiles,
    load_tables,
    local_path,
    parquet_relation,
    quote_ident,
    quote_literal,
    snapshot_files,
)

log = logging.getLogger("clicklake.query")

#: Columns replaced by a salted hash for roles without ``pii`` (VARCHAR), else NULL.
HASHED_COLUMNS = frozenset(
    {
        "user_id",
        "anonymous_id",
        "user_key",
        "device_key",
        "previous_id",
        "stitched_user_key",
        "user_ipaddress",
        "client_session_id",
    }
)
#: Columns that hold free-form PII (traits, the raw payload, the context with the IP): NULL.
NULLED_COLUMNS = frozenset({"traits", "context", "raw"})

#: Table functions a statement may use (they read nothing outside the statement).
SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
#: Scalar functions refused: they read settings, the catalog, files, or run other SQL.
_DENIED_FUNCTION = re.compile(
    r"^(duckdb_|pragma_|read_|sniff_|parquet_|iceberg_|delta_|glob$|query$|query_table$|current_setting$|"
    r"getvariable$|getenv$|which_secret$|json_serialize|json_deserialize|sql_auto_complete$|"
    r"current_schemas?$|current_database$|current_catalog$|checkpoint$|force_checkpoint$|"
    r"icu_|install|load|enable_|disable_|has_.*privilege$|pg_|col_description$|obj_description$|"
    r"shobj_description$|format_pg_type$|map_type_id|set_|txid_)",
)
_ALLOWED_REF_TYPES = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST", "PIVOT"})


#: What a trusted query may narrow a table's files to: a day range, or "collected since".
Narrow = tuple[date, date] | datetime


class QueryTimeout(InputError):
    """The statement ran longer than ``api.statement_timeout_s`` and was interrupted."""


def _is_pii(name: str) -> bool:
    return (
        name in HASHED_COLUMNS
        or name in NULLED_COLUMNS
        or name.endswith(("_user_id", "_anonymous_id", "_user_key", "_ipaddress"))
        or (name.startswith("user_") and name != "user_agent")
    )


@dataclass(frozen=True)
class TableState:
    """One table's current snapshot as DuckDB reads it.

    Attributes:
        name: The table name (the view name).
        snapshot_id: The snapshot read (``None``: no snapshot yet).
        relation: A ``SELECT`` over the snapshot's data files (or over ``arrow``).
        columns: ``(name, DuckDB type)`` of each column.
        arrow: The snapshot's rows, when delete files force a PyIceberg scan.
        paths: The data files ``relation`` reads.
        days: Each file's day partition (days since 1970-01-01), when the table has one.
        collector_max_us: Each file's largest ``collector_tstamp`` (microseconds), when known.
    """

    name: str
    snapshot_id: int | None
    relation: str
    columns: tuple[tuple[str, str], ...]
    arrow: pa.Table | None = None
    paths: tuple[str, ...] = ()
    days: tuple[int | None, ...] = ()
    collector_max_us: tuple[int | None, ...] = ()

    def none_since(self, since: datetime) -> bool:
        """Whether the manifests prove that no row was collected at or after ``since``."""
        if self.arrow is not None or len(self.collector_max_us) != len(self.paths):
            return False
        at = int(since.timestamp() * 1_000_000)
        return all(h is not None and h < at for h in self.collector_max_us)

    def pruned(self, bounds: Narrow) -> str | None:
        """``relation`` over only the files that can hold rows of ``bounds``; ``None`` when that prunes nothing.

        ``bounds`` is a day range ``(first, last)`` of the day partition, or a ``datetime``:
        only files whose largest ``collector_tstamp`` is at or after it.
        """
        if self.arrow is not None or not self.paths:
            return None
        if isinstance(bounds, datetime):
            if len(self.collector_max_us) != len(self.paths):
                return None
            since = int(bounds.timestamp() * 1_000_000)
            keep = [
                p for p, h in zip(self.paths, self.collector_max_us, strict=True) if h is None or h >= since
            ]
        else:
            if not self.days:
                return None
            first, last = bounds
            lo, hi = (first - _EPOCH).days, (last - _EPOCH).days
            keep = [p for p, d in zip(self.paths, self.days, strict=True) if d is None or lo <= d <= hi]
        if len(keep) == len(self.paths):
            return None
        if not keep:
            # No file can hold such rows: the columns, typed, and no rows (no file is opened).
            cols = ", ".join(f"CAST(NULL AS {t}) AS {quote_ident(c)}" for c, t in self.columns)
            return f"SELECT {cols} WHERE false"
        return self.relation.replace(self._all_files, _file_list(keep))

    @cached_property
    def _all_files(self) -> str:
        return _file_list(self.paths)


class SnapshotCache:
    """The current snapshot of every clicklake table, re-read at most every ``api.refresh_s``.

    Args:
        settings: The settings.
    """

    def __init__(self, settings: Settings, background: bool = False):
        self.settings = settings
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._states: dict[str, TableState] = {}
        # Per table, the files of each manifest read so far: a new snapshot reads only its new
        # manifests (the audit log gets one every few seconds, with a manifest per append).
        self._manifests: dict[str, dict[str, ManifestFiles]] = {}
        self._checked = 0.0
        self._loaded = False
        self._background = background
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(max(self.settings.api.refresh_s, 0.05)):
            try:
                self.states(force=True)
            except ClickLakeError as exc:
                log.error("event=snapshot_refresh_failed error=%r", str(exc))

    def close(self) -> None:
        """Stop the background refresh (if any)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def states(self, force: bool = False) -> dict[str, TableState]:
        """The tables that exist, by name, as of at most about ``api.refresh_s`` ago.

        One caller re-reads the catalog while the others go on with the states it replaces
        (never older than one refresh), so a slow catalog does not stall every request.
        """
        if self._background and self._loaded and not force:
            # A background thread keeps the states fresh: requests never read the catalog.
            return self._states
        due = force or not self._loaded or time.monotonic() - self._checked >= self.settings.api.refresh_s
        if due and self._lock.acquire(blocking=force or not self._loaded):
            try:
                if (
                    force
                    or not self._loaded
                    or time.monotonic() - self._checked >= self.settings.api.refresh_s
                ):
                    self._refresh()
                    self._checked = time.monotonic()
                    self._loaded = True
                    if self._background and self._thread is None and not self._stop.is_set():
                        self._thread = threading.Thread(
                            target=self._loop, name="clicklake-snapshots", daemon=True
                        )
                        self._thread.start()
            finally:
                self._lock.release()
        return self._states

    def _refresh(self) -> None:
        fresh = not self.settings.storage.catalog_uri and not self.settings.storage.catalog_db.exists()
        if fresh:
            self._states = {}
            return
        if self._catalog is None:
            self._catalog = open_catalog(self.settings, write=False)
        tables = load_tables(self._catalog, self.settings, (*ALL_TABLES, AUDIT_LOG))
        states: dict[str, TableState] = {}
        scratch: duckdb.DuckDBPyConnection | None = None
        try:
            for name, table in tables.items():
                snap = table.current_snapshot()
                snap_id = snap.snapshot_id if snap else None
                old = self._states.get(name)
                if old is not None and old.snapshot_id == snap_id and snap_id is not None:
                    states[name] = old
                    continue
                scratch = scratch or duckdb.connect(":memory:")
                states[name] = _table_state(
                    scratch, name, table, snap_id, self._manifests.setdefault(name, {})
                )
        finally:
            if scratch is not None:
                scratch.close()
        self._states = states


_EPOCH = date(1970, 1, 1)


def _file_list(paths: Sequence[str]) -> str:
    # The same text parquet_relation writes, so a file list can be swapped for another.
    return "[" + ", ".join(quote_literal(p) for p in paths) + "]"


def _day_index(table: Any) -> int | None:
    for i, f in enumerate(table.spec().fields):
        if isinstance(f.transform, DayTransform):
            return i
    return None


def _as_day(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, date):
        return (value - _EPOCH).days
    return None


def _table_state(
    con: duckdb.DuckDBPyConnection,
    name: str,
    table: Any,
    snap_id: int | None,
    manifests: dict[str, ManifestFiles] | None = None,
) -> TableState:
    schema = table.schema().as_arrow()
    files = snapshot_files(table, manifests=manifests)
    arrow: pa.Table | None = None
    if files.has_deletes:
        arrow = table.scan().to_arrow()
        con.register("__state", arrow)
        relation = "SELECT * FROM {arrow}"
        cols = con.execute("DESCRIBE SELECT * FROM __state").fetchall()
        con.unregister("__state")
    else:
        relation = parquet_relation(con, files.paths, schema)
        if len(files.paths) > 1 and _same_schema(con, files.paths):
            # Every file has the same columns: binding then reads one footer instead of all.
            relation = relation.replace(", union_by_name=true)", ")")
        cols = con.execute(f"DESCRIBE {relation}").fetchall()
    day = _day_index(table)
    days: tuple[int | None, ...] = ()
    if arrow is None and day is not None and _file_list(files.paths) in relation:
        days = tuple(_as_day(p[day]) for p in files.partitions)
    return TableState(
        name,
        snap_id,
        relation,
        tuple((str(c[0]), str(c[1])) for c in cols),
        arrow,
        files.paths,
        days,
        files.collector_max_us if arrow is None else (),
    )


def _same_schema(con: duckdb.DuckDBPyConnection, paths: Sequence[str]) -> bool:
    files = "[" + ", ".join(quote_literal(p) for p in paths) + "]"
    row = con.execute(
        "SELECT count(DISTINCT cols) FROM (SELECT list(name || ':' || coalesce(type, '') ORDER BY name) AS cols "
        f"FROM parquet_schema({files}) GROUP BY file_name)"
    ).fetchone()
    return bool(row and row[0] == 1)


def _masked(col: str, duck_type: str, salt: str) -> str:
    q = quote_ident(col)
    if col in NULLED_COLUMNS or duck_type.upper() != "VARCHAR":
        return f"CAST(NULL AS {duck_type}) AS {q}"
    # A keyed hash: equal values stay equal (counts and joins work), values cannot be read back.
    return f"CASE WHEN {q} IS NULL THEN NULL ELSE 'h:' || left(sha256({quote_literal(salt)} || {q}), 16) END AS {q}"


def view_sql(state: TableState, role: Role, salt: str, source: str) -> str | None:
    """The ``SELECT`` of the role's view of a table, or ``None`` when the role may not see it.

    Args:
        state: The table's snapshot.
        role: The role.
        salt: The key of the PII hash.
        source: The relation to select from (the snapshot's files or registered rows).
    """
    names = [c[0] for c in state.columns]
    if state.name == AUDIT_LOG:
        if not role.admin:
            return None
        filters = ["true"]
    elif "app_id" not in names:
        if role.apps is not None:
            return None
        filters = ["true"]
    elif role.apps is None:
        filters = ["true"]
    elif not role.apps:
        filters = ["false"]
    else:
        filters = [f"app_id IN ({', '.join(quote_literal(a) for a in role.apps)})"]
    cols = ", ".join(
        quote_ident(c) if role.pii or state.name == AUDIT_LOG or not _is_pii(c) else _masked(c, t, salt)
        for c, t in state.columns
    )
    return f"SELECT {cols} FROM ({source}) AS src WHERE {' AND '.join(filters)}"


#: Model tables are copied into the role's database (filtered and masked) when they change:
#: they are small next to ``events``, and the dashboard reads them on every call.
MATERIALIZED = frozenset({"page_views", "sessions", "users", "user_mapping", "daily_kpis"})


class RoleDatabase:
    """A locked DuckDB database holding one role scope's relations, kept in step with the snapshots.

    Model tables are materialized (filtered and masked) when their snapshot changes; ``events``,
    ``failed_events`` and ``audit_log`` are views over the snapshot's files. Statements read it
    through cursors; a change replaces a relation in one DDL transaction, so a running
    statement keeps reading the snapshot it started on.

    Args:
        settings: The settings (``api.*`` bounds, the warehouse to allow).
        role: Whose rows and masks.
    """

    def __init__(self, settings: Settings, role: Role):
        self.settings = settings
        self.role = role
        self.snapshots: dict[str, int | None] = {}
        self.states: dict[str, TableState] = {}
        self.views: frozenset[str] = frozenset()
        self._hidden: dict[str, str] = {}
        self._lock = threading.Lock()
        api = settings.api
        spill = Path(settings.storage.data_dir).resolve() / "tmp-duckdb"
        self.con = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": api.memory_limit,
                "threads": api.threads,
                "temp_directory": str(spill),
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            },
        )
        try:
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute("SET parquet_metadata_cache = true")
            self.warehouse = _warehouse_dir(settings)
            if self.warehouse is not None:
                self.con.execute(f"SET allowed_directories = [{quote_literal(self.warehouse)}]")
            self.system_relations = frozenset(
                str(r[0]).lower()
                for r in self.con.execute(
                    "SELECT view_name FROM duckdb_views() UNION ALL SELECT table_name FROM duckdb_tables()"
                ).fetchall()
            )
            self.con.execute("SET enable_external_access = false")
            self.con.execute("SET lock_configuration = true")
        except BaseException:
            self.con.close()
            raise
        self.salt = api.mask_salt.get_secret_value() or _process_salt()

    def sync(self, states: dict[str, TableState]) -> None:
        """Replace the relations whose snapshot changed (and drop those of vanished tables).

        Raises:
            StorageError: The warehouse is not a local folder (the lockdown cannot allow it).
        """
        with self._lock:
            changed = {n: st for n, st in states.items() if self.snapshots.get(n, -1) != st.snapshot_id}
            gone = set(self.snapshots) - set(states)
            if not changed and not gone:
                return
            views = set(self.views)
            for name in gone:
                self._drop(name)
                views.discard(name)
                self.snapshots.pop(name, None)
            for name, state in changed.items():
                if self.warehouse is None and state.arrow is None and "read_parquet" in state.relation:
                    raise StorageError(
                        "the SQL lockdown reads only a local warehouse folder; "
                        f"{self.settings.storage.resolved_warehouse()} is remote"
                    )
                source = state.relation
                old_hidden = self._hidden.pop(name, None)
                if state.arrow is not None:
                    # Registered under a random name: no statement can guess it (and naming it is refused).
                    hidden = f"__rows_{secrets.token_hex(8)}"
                    self.con.register(hidden, state.arrow)
                    self._hidden[name] = hidden
                    source = state.relation.format(arrow=quote_ident(hidden))
                body = view_sql(state, self.role, self.salt, source)
                if body is None:
                    self._drop(name)
                    views.discard(name)
                else:
                    kind = "TABLE" if name in MATERIALIZED else "VIEW"
                    if kind == "TABLE" and state.arrow is not None:
                        self._drop(name)
                    self.con.execute(f"CREATE OR REPLACE {kind} {quote_ident(name)} AS {body}")
                    views.add(name)
                if old_hidden is not None:
                    self.con.unregister(old_hidden)
                self.snapshots[name] = state.snapshot_id
                self.states[name] = state
            for name in gone:
                self.states.pop(name, None)
            self.views = frozenset(views)

    def narrow(self, cur: duckdb.DuckDBPyConnection, days: Mapping[str, Narrow]) -> None:
        """In ``cur`` only, let each table of ``days`` read just the files of those days (or times).

        A temporary view of the same name (private to the cursor) shadows the role's relation;
        it applies the same row filter and masks. Rows outside the days may still appear
        (files hold whole days); callers filter on the day as well.
        """
        for name, bounds in days.items():
            state = self.states.get(name)
            if state is None or name not in self.views or name in MATERIALIZED:
                continue
            source = state.pruned(bounds)
            if source is None:
                continue
            body = view_sql(state, self.role, self.salt, source)
            if body is not None:
                cur.execute(f"CREATE TEMP VIEW {quote_ident(name)} AS {body}")

    def _drop(self, name: str) -> None:
        row = self.con.execute(
            "SELECT 'VIEW' FROM duckdb_views() WHERE view_name = ? AND NOT internal "
            "UNION ALL SELECT 'TABLE' FROM duckdb_tables() WHERE table_name = ?",
            [name, name],
        ).fetchone()
        if row is not None:
            self.con.execute(f"DROP {row[0]} {quote_ident(name)}")


def _warehouse_dir(settings: Settings) -> str | None:
    warehouse = settings.storage.resolved_warehouse()
    if warehouse.startswith("file://") or "://" not in warehouse:
        return str(Path(local_path(warehouse)).resolve()) + "/"
    return None


_SALT: list[str] = []


def _process_salt() -> str:
    # Without api.mask_salt, a random key per process: masked values stay stable while it runs.
    if not _SALT:
        _SALT.append(secrets.token_hex(16))
    return _SALT[0]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            yield cur
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)


def check_statement(sql: str, views: frozenset[str], system_relations: frozenset[str]) -> None:
    """Refuse anything but one ``SELECT`` over ``views`` (and its own CTEs).

    Args:
        sql: The statement text.
        views: The relation names the role may read.
        system_relations: Names of DuckDB's own relations (a CTE may not shadow them).

    Raises:
        AccessDenied: What is refused, and why.
    """
    if len(sql) > 100_000:
        raise AccessDenied("the statement is over 100,000 characters")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InputError(f"cannot parse the SQL: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise AccessDenied(f"give exactly one statement (got {len(statements)})")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise AccessDenied(f"only read-only SELECT statements are allowed (got {kind})")
    parser = duckdb.connect(":memory:")
    try:
        row = parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    except duckdb.Error as exc:
        raise InputError(f"cannot parse the SQL: {str(exc).splitlines()[0]}") from exc
    finally:
        parser.close()
    tree = orjson.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        raise AccessDenied(
            f"only plain read-only SELECT statements are allowed ({tree.get('error_message', 'unparsable')})"
        )
    nodes = list(_walk(tree["statements"]))
    ctes: set[str] = set()
    for node in nodes:
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                ctes.add(str(entry.get("key", "")).lower())
    shadowing = ctes & system_relations
    if shadowing:
        raise AccessDenied(f"a CTE may not be named like a system relation: {', '.join(sorted(shadowing))}")
    allowed = {v.lower() for v in views} | ctes
    for node in nodes:
        ref_type = node.get("type")
        if ref_type == "TABLE_FUNCTION":
            fn = node.get("function") or {}
            name = str(fn.get("function_name", "")).lower()
            if name not in SAFE_TABLE_FUNCTIONS or fn.get("schema") or fn.get("catalog"):
                raise AccessDenied(
                    f"table function {name or '?'}() is not allowed; read the clicklake tables"
                )
            continue
        if node.get("class") == "FUNCTION" or (ref_type == "FUNCTION" and "function_name" in node):
            name = str(node.get("function_name", "")).lower()
            if node.get("schema") or node.get("catalog") or _DENIED_FUNCTION.match(name):
                raise AccessDenied(f"function {name}() is not allowed")
            continue
        if ref_type == "BASE_TABLE":
            table = str(node.get("table_name", "")).lower()
            if node.get("schema_name") or node.get("catalog_name"):
                raise AccessDenied(
                    f"{node.get('schema_name') or node.get('catalog_name')}.{table}: qualified names "
                    "(information_schema, other schemas or databases) are not allowed"
                )
            if node.get("at_clause"):
                raise AccessDenied("time travel (AT) is not allowed")
            if table not in allowed:
                raise AccessDenied(
                    f"relation {table!r} is not readable; this role can read: {', '.join(sorted(views))}"
                )
            continue
        if (
            isinstance(ref_type, str)
            and "alias" in node
            and "sample" in node
            and ref_type not in _ALLOWED_REF_TYPES
        ):
            raise AccessDenied(f"{ref_type.lower().replace('_', ' ')} is not allowed in a query")


@dataclass(frozen=True)
class QueryResult:
    """Rows of one statement (at most ``api.max_rows``)."""

    table: pa.Table
    truncated: bool


class SecureQueries:
    """Runs statements for roles over cached, locked databases (one per role scope and snapshot set).

    Args:
        settings: The settings (``api.*`` bounds, the catalog).
        cache: Snapshot cache to share (a new one by default).
    """

    def __init__(self, settings: Settings, cache: SnapshotCache | None = None):
        self.settings = settings
        self.snapshots = cache or SnapshotCache(settings)
        self._lock = threading.Lock()
        self._dbs: dict[tuple[Any, ...], RoleDatabase] = {}

    def database(self, role: Role) -> RoleDatabase:
        """The locked database of ``role``'s scope, in step with the current snapshots."""
        states = self.snapshots.states()
        key = (role.apps, role.pii, role.admin)
        with self._lock:
            db = self._dbs.get(key)
            if db is None:
                db = RoleDatabase(self.settings, role)
                self._dbs[key] = db
        db.sync(states)
        return db

    def snapshot_key(self, exclude: frozenset[str] = frozenset()) -> tuple[Any, ...]:
        """Identifies the current snapshot set (changes when any table but ``exclude`` gets a commit)."""
        return tuple(
            sorted((n, s.snapshot_id) for n, s in self.snapshots.states().items() if n not in exclude)
        )

    @contextmanager
    def cursor(
        self, role: Role, narrow: Mapping[str, Narrow] | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor on the role's locked database, interrupted after ``api.statement_timeout_s``.

        For clicklake's own multi-step queries (funnels); user statements go through :meth:`run`.

        Raises:
            QueryTimeout: The work ran past the timeout.
        """
        db = self.database(role)
        cur = db.con.cursor()
        timer = threading.Timer(self.settings.api.statement_timeout_s, cur.interrupt)
        timer.daemon = True
        timer.start()
        try:
            if narrow:
                db.narrow(cur, narrow)
            yield cur
        except duckdb.InterruptException as exc:
            raise QueryTimeout(
                f"the query ran over {self.settings.api.statement_timeout_s:g} s and was stopped"
            ) from exc
        finally:
            timer.cancel()
            cur.close()

    def run(
        self,
        role: Role,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        trusted: bool = False,
        max_rows: int | None = None,
        narrow: Mapping[str, Narrow] | None = None,
    ) -> QueryResult:
        """Run one statement as ``role``.

        Args:
            role: Whose views the statement sees.
            sql: The statement.
            params: Values for ``?`` placeholders.
            trusted: The statement is clicklake's own (the dashboard's queries): the syntax
                check is skipped, the role's views, lockdown and bounds still apply.
            max_rows: Rows to return at most (default ``api.max_rows``).
            narrow: Trusted statements only: tables to read only the files of these days of.

        Returns:
            The rows, and whether more were left out.

        Raises:
            AccessDenied: The statement is refused (see :func:`check_statement`).
            QueryTimeout: It ran past ``api.statement_timeout_s``.
            InputError: DuckDB refused it (a wrong column, a type error).
        """
        db = self.database(role)
        if not trusted:
            check_statement(sql, db.views, db.system_relations)
        limit = max_rows or self.settings.api.max_rows
        cur = db.con.cursor()
        timer = threading.Timer(self.settings.api.statement_timeout_s, cur.interrupt)
        timer.daemon = True
        timer.start()
        try:
            if narrow and trusted:
                db.narrow(cur, narrow)
            rel = cur.sql(sql, params=list(params) if params is not None else None)
            if rel is None:
                raise AccessDenied("the statement returned no rows to read")
            reader = rel.to_arrow_reader(min(limit + 1, 100_000))
            batches: list[pa.RecordBatch] = []
            n = 0
            for batch in reader:
                batches.append(batch)
                n += batch.num_rows
                if n > limit:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException as exc:
            raise QueryTimeout(
                f"the statement ran over {self.settings.api.statement_timeout_s:g} s and was stopped"
            ) from exc
        except duckdb.PermissionException as exc:
            raise AccessDenied(f"refused: {str(exc).splitlines()[0]}") from exc
        except duckdb.Error as exc:
            if not timer.is_alive() and "interrupt" in str(exc).lower():
                raise QueryTimeout(
                    f"the statement ran over {self.settings.api.statement_timeout_s:g} s and was stopped"
                ) from exc
            raise InputError(f"query failed: {str(exc).splitlines()[0]}") from exc
        finally:
            timer.cancel()
            cur.close()
        truncated = table.num_rows > limit
        return QueryResult(table.slice(0, limit) if truncated else table, truncated)


def statement_fingerprint(sql: str) -> str:
    """A short hash of a statement (to group audit rows)."""
    return hashlib.sha256(sql.encode()).hexdigest()[:12]
