"""DuckDB over the current snapshots of the clicklake Iceberg tables.

Each table becomes one view. When the current snapshot has no delete files, the view reads the
snapshot's Parquet data files directly with ``read_parquet([...], union_by_name=true)``: DuckDB
then prunes columns and row groups itself, which is much faster than materializing a PyIceberg
scan. Columns of the Iceberg schema that no data file holds yet (added by schema evolution) are
selected as typed ``NULL``. A snapshot with delete files falls back to a PyIceberg scan
(``scan().to_arrow()``) registered as an Arrow table, which applies the deletes. An empty table
(no snapshot, or no files) is a view with the right columns and no rows.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.manifest import ManifestContent
from pyiceberg.table import Table

from clicklake.config import Settings
from clicklake.lakehouse.catalog import open_catalog, table_id

log = logging.getLogger("clicklake.query")

ALL_TABLES: tuple[str, ...] = (
    "events",
    "failed_events",
    "page_views",
    "sessions",
    "users",
    "user_mapping",
    "daily_kpis",
)


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a single-quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def local_path(uri: str) -> str:
    """A data file location as DuckDB reads it (``file://`` URIs become plain paths)."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


@dataclass(frozen=True)
class DataFiles:
    """The data files of one snapshot of a table.

    Attributes:
        paths: Locations of the Parquet data files, as DuckDB reads them.
        partitions: The partition record of each data file (same order as ``paths``).
        has_deletes: Whether any file has delete files (then read through PyIceberg).
        collector_max_us: Each file's largest ``collector_tstamp`` (microseconds since the
            epoch) from the manifest's column bounds; ``None`` where unknown (or no such column).
    """

    paths: tuple[str, ...]
    partitions: tuple[tuple[object, ...], ...]
    has_deletes: bool
    collector_max_us: tuple[int | None, ...] = ()


#: One data file of a manifest: its local path, partition values and largest collector time.
ManifestFiles = tuple[tuple[str, tuple[object, ...], int | None], ...]


def snapshot_files(
    table: Table, snapshot_id: int | None = None, manifests: dict[str, ManifestFiles] | None = None
) -> DataFiles:
    """The data files of ``snapshot_id`` (default: the current snapshot) of ``table``.

    Args:
        table: The table.
        snapshot_id: The snapshot (default: the current one).
        manifests: Files already read per manifest path (manifest files never change): only the
            manifests not in it are read; afterwards it holds those of this snapshot. Used when
            the snapshot has no delete manifests; otherwise the files are planned as a scan would.
    """
    if snapshot_id is None and table.current_snapshot() is None:
        return DataFiles((), (), False)
    try:
        collector_id: int | None = table.schema().find_field("collector_tstamp").field_id
    except ValueError:
        collector_id = None

    def high(data_file: Any) -> int | None:
        raw = (data_file.upper_bounds or {}).get(collector_id) if collector_id is not None else None
        # Iceberg's single-value form of a timestamp: 8 bytes, little-endian microseconds.
        return int.from_bytes(raw, "little", signed=True) if raw and len(raw) == 8 else None

    if manifests is not None:
        snap = table.current_snapshot() if snapshot_id is None else table.snapshot_by_id(snapshot_id)
        listed = snap.manifests(table.io) if snap is not None else []
        if snap is not None and all(m.content == ManifestContent.DATA for m in listed):
            files: list[tuple[str, tuple[object, ...], int | None]] = []
            for m in listed:
                known = manifests.get(m.manifest_path)
                if known is None:
                    known = tuple(
                        (
                            local_path(e.data_file.file_path),
                            tuple(e.data_file.partition),  # type: ignore[arg-type]  # Record is iterable
                            high(e.data_file),
                        )
                        for e in m.fetch_manifest_entry(table.io, discard_deleted=True)
                    )
                    manifests[m.manifest_path] = known
                files.extend(known)
            for gone in set(manifests) - {m.manifest_path for m in listed}:
                del manifests[gone]
            highs = tuple(h for _, _, h in files) if collector_id is not None else ()
            return DataFiles(tuple(f[0] for f in files), tuple(f[1] for f in files), False, highs)
    scan = table.scan(snapshot_id=snapshot_id) if snapshot_id is not None else table.scan()
    paths: list[str] = []
    parts: list[tuple[object, ...]] = []
    highs_list: list[int | None] = []
    deletes = False
    for task in scan.plan_files():
        paths.append(local_path(task.file.file_path))
        parts.append(tuple(task.file.partition))  # type: ignore[arg-type]  # Record is iterable
        deletes = deletes or bool(task.delete_files)
        if collector_id is not None:
            highs_list.append(high(task.file))
    return DataFiles(tuple(paths), tuple(parts), deletes, tuple(highs_list))


def duck_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type name of an Arrow type (for typed ``NULL`` columns)."""
    con = duckdb.connect()
    try:
        con.register("t", pa.table({"c": pa.array([], type=arrow_type)}))
        return str(con.execute("DESCRIBE t").fetchall()[0][1])
    finally:
        con.close()


#: The column :func:`parquet_relation` adds with ``row_key``: a row's place in the file list.
ROW_KEY = "_row"


def parquet_relation(
    con: duckdb.DuckDBPyConnection,
    paths: Sequence[str],
    schema: pa.Schema,
    file_numbers: Sequence[int] | None = None,
) -> str:
    """A ``SELECT`` over ``paths`` giving exactly the columns of ``schema``, in order.

    Columns no file holds are typed ``NULL``; an empty ``paths`` gives no rows. With
    ``file_numbers`` (one per path, below 2^31), a last BIGINT column ``_row`` (:data:`ROW_KEY`)
    names each row by its place: its file's number times 2^32 plus its row number in the file.
    Numbered the same way, every read of a file gives its rows the same keys, so a second read
    can find the rows of a first one by them.
    """
    if not paths:
        cols = ", ".join(f"CAST(NULL AS {duck_type(f.type)}) AS {quote_ident(f.name)}" for f in schema)
        if file_numbers is not None:
            cols += f", CAST(NULL AS BIGINT) AS {ROW_KEY}"
        return f"SELECT {cols} WHERE false"
    files = "[" + ", ".join(quote_literal(p) for p in paths) + "]"
    source = f"read_parquet({files}, union_by_name=true)"
    present = {str(r[0]) for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    cols = ", ".join(
        quote_ident(f.name)
        if f.name in present
        else f"CAST(NULL AS {duck_type(f.type)}) AS {quote_ident(f.name)}"
        for f in schema
    )
    if file_numbers is not None:
        if len(file_numbers) != len(paths):
            raise ValueError("parquet_relation: one file number per path")
        numbers = "[" + ", ".join(str(int(n)) for n in file_numbers) + "]"
        # file_index: the file's place in ``paths`` (DuckDB's virtual column), from 0.
        cols += f", (CAST({numbers}[CAST(file_index AS BIGINT) + 1] AS BIGINT) << 32) | CAST(file_row_number AS BIGINT) AS {ROW_KEY}"
    return f"SELECT {cols} FROM {source}"


def register_table(con: duckdb.DuckDBPyConnection, table: Table, view: str) -> None:
    """Create the view ``view`` over the current snapshot of ``table``."""
    schema = table.schema().as_arrow()
    files = snapshot_files(table)
    if files.has_deletes:
        # Delete files: only PyIceberg applies them correctly.
        con.register(f"__arrow_{view}", table.scan().to_arrow())
        con.execute(
            f"CREATE OR REPLACE VIEW {quote_ident(view)} AS SELECT * FROM {quote_ident('__arrow_' + view)}"
        )
        return
    con.execute(f"CREATE OR REPLACE VIEW {quote_ident(view)} AS {parquet_relation(con, files.paths, schema)}")


# Bounded, so a large model build spills to disk instead of taking the machine's memory.
MEMORY_LIMIT = "10GB"


def new_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with clicklake's session settings (UTC, bounded memory)."""
    spill = Path(tempfile.gettempdir()) / "clicklake-duckdb"
    con = duckdb.connect(
        ":memory:",
        config={"memory_limit": MEMORY_LIMIT, "temp_directory": str(spill), "threads": os.cpu_count() or 2},
    )
    con.execute("SET TimeZone = 'UTC'").fetchall()
    return con


def load_tables(catalog: Catalog, settings: Settings, names: Iterable[str]) -> dict[str, Table]:
    """The existing tables among ``names``, by name."""
    out: dict[str, Table] = {}
    for name in names:
        try:
            out[name] = catalog.load_table(table_id(settings, name))
        except NoSuchTableError:
            continue
    return out


def connect(settings: Settings, tables: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per clicklake table, over its current snapshot.

    Args:
        settings: The settings (catalog location).
        tables: Names of the tables to expose; default all clicklake tables that exist.

    Returns:
        An in-memory connection; views are named after the tables (``events``, ``sessions``...).
    """
    catalog = open_catalog(settings, write=False)
    con = new_connection()
    for name, table in load_tables(catalog, settings, ALL_TABLES if tables is None else tables).items():
        register_table(con, table, name)
    return con


def run_sql(settings: Settings, sql: str) -> pa.Table:
    """Run one read-only statement over the current snapshots of the clicklake tables.

    It runs in the same locked-down DuckDB as the API (:mod:`clicklake.query.secure`), as the
    local role (every app, PII visible, ``audit_log`` readable).

    Args:
        settings: The settings.
        sql: One ``SELECT`` (or ``WITH ... SELECT``) statement.

    Returns:
        The result as an Arrow table.

    Raises:
        InputError: ``sql`` is not exactly one read-only statement over the clicklake tables
            (:class:`~clicklake.query.access.AccessDenied`), or DuckDB rejects it.
    """
    from clicklake.query.access import LOCAL_ROLE
    from clicklake.query.secure import SecureQueries

    return SecureQueries(settings).run(LOCAL_ROLE, sql, max_rows=2**62).table
