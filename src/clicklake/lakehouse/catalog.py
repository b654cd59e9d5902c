"""The Iceberg catalog and the clicklake tables in it."""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import NestedField
from sqlalchemy.exc import SQLAlchemyError

from clicklake.config import Settings
from clicklake.events.schema import (
    EVENTS_SCHEMA,
    FAILED_SCHEMA,
    ICEBERG_TYPES,
    Column,
    events_partition_spec,
    failed_partition_spec,
)
from clicklake.exceptions import ConfigError, StorageError
from clicklake.lakehouse.evolution import evolve_columns, evolve_partitioning

# The sink retries conflicts itself, checking its checkpoint between attempts; PyIceberg's own
# silent retry would bypass that check.
TABLE_PROPERTIES = {"commit.retry.num-retries": "0", "write.parquet.compression-codec": "zstd"}

log = logging.getLogger("clicklake.lakehouse")

EVENTS = "events"
FAILED_EVENTS = "failed_events"


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: Schema
    spec: PartitionSpec


def ingest_tables(settings: Settings) -> tuple[TableSpec, ...]:
    """The tables the pipeline writes, with their partition specs."""
    return (
        TableSpec(EVENTS, EVENTS_SCHEMA, events_partition_spec(settings.pipeline.event_buckets)),
        TableSpec(FAILED_EVENTS, FAILED_SCHEMA, failed_partition_spec()),
    )


def open_catalog(settings: Settings, write: bool = True) -> Catalog:
    """The Iceberg SQL catalog (SQLite in ``data_dir`` unless ``storage.catalog_uri`` is set).

    Args:
        settings: The settings.
        write: Whether the caller will write (then the data directory is created and checked).

    Raises:
        StorageError: The data directory cannot be created or the catalog opened.
    """
    storage = settings.storage
    if not storage.catalog_uri and write:
        try:
            storage.data_dir.mkdir(parents=True, exist_ok=True)
            (storage.data_dir / "warehouse").mkdir(exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create data directory {storage.data_dir}: {exc.strerror or exc}; "
                "set storage.data_dir (or CLICKLAKE_STORAGE__DATA_DIR) to a writable folder"
            ) from exc
        if not os.access(storage.data_dir, os.W_OK):
            raise StorageError(
                f"data directory {storage.data_dir} is not writable; "
                "fix its permissions or point storage.data_dir at a writable folder"
            )
    try:
        catalog = SqlCatalog(
            storage.catalog_name,
            uri=storage.resolved_catalog_uri(),
            warehouse=storage.resolved_warehouse(),
        )
        # Pooled connections to a server (PostgreSQL) are closed when the catalog goes away,
        # not left to the garbage collector.
        weakref.finalize(catalog, catalog.engine.dispose)
        return catalog
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(
            f"cannot open the Iceberg catalog at {storage.resolved_catalog_uri()}: {exc}"
        ) from exc


def table_id(settings: Settings, name: str) -> str:
    return f"{settings.storage.namespace}.{name}"


def ensure_tables(catalog: Catalog, settings: Settings, specs: tuple[TableSpec, ...]) -> dict[str, Table]:
    """Create the namespace and tables that do not exist yet; return them all by name."""
    try:
        catalog.create_namespace_if_not_exists(settings.storage.namespace)
        out = {}
        for spec in specs:
            out[spec.name] = catalog.create_table_if_not_exists(
                table_id(settings, spec.name),
                schema=spec.schema,
                partition_spec=spec.spec,
                properties=TABLE_PROPERTIES,
            )
            out[spec.name] = evolve_partitioning(out[spec.name], spec.spec)
        return out
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"cannot create clicklake tables: {exc}") from exc


def evolve_schema(table: Table, columns: tuple[Column, ...]) -> Table:
    """Add the ``columns`` the table lacks (optional, at the end); a metadata-only commit.

    Raises:
        ConfigError: A column exists with another type; the message says which and what to do.
    """
    # Widens what Iceberg allows (int -> long) and refuses the rest with what to do.
    table = evolve_columns(
        table, [NestedField(-1, c.name, ICEBERG_TYPES[c.kind], required=False, doc=c.doc) for c in columns]
    )
    schema = table.schema()
    missing = []
    for col in columns:
        field = schema.find_field(col.name, case_sensitive=True) if col.name in schema.column_names else None
        if field is None:
            missing.append(col)
        elif field.field_type != ICEBERG_TYPES[col.kind]:
            raise ConfigError(
                f"column {col.name} of {'.'.join(table.name())} is {field.field_type}, but clicklake now "
                f"writes {ICEBERG_TYPES[col.kind]}; a type change that narrows is refused: rename the "
                "column in the enricher, or migrate the table"
            )
    if missing:
        with table.update_schema() as update:
            for col in missing:
                update.add_column(col.name, ICEBERG_TYPES[col.kind], doc=col.doc)
        log.info(
            "event=schema_evolved table=%s added=%s",
            ".".join(table.name()),
            ",".join(c.name for c in missing),
        )
    return table


def load_existing(catalog: Catalog, settings: Settings, name: str) -> Table | None:
    try:
        return catalog.load_table(table_id(settings, name))
    except NoSuchTableError:
        return None
