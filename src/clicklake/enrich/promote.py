"""Promote event properties to typed columns (``pipeline.promote_properties``).

``promote_properties = {revenue = "double", "order.id" = "string"}`` adds ``prop_revenue``
(double) and ``prop_order_id`` (string) to ``events``, filled from ``properties`` (dots walk into
nested objects). A value that does not convert (``"abc"`` for a double) is null in the column
and stays, as sent, in ``properties``: nothing is lost. The columns join ``events`` by schema
evolution, so rows written before the promotion read as null.

One DuckDB query per batch extracts every promoted property (JSON parsed once per row,
columnar), on a connection the step opens on first use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import duckdb
import pyarrow as pa

from clicklake.config import Settings
from clicklake.enrich.base import Step, append_columns
from clicklake.events.schema import ARROW_TYPES, Column
from clicklake.exceptions import ConfigError

_PATH = re.compile(r"^[A-Za-z_$][\w$-]*(\.[A-Za-z_$][\w$-]*)*$")
_DUCK_TYPES = {
    "string": "VARCHAR",
    "long": "BIGINT",
    "int": "INTEGER",
    "double": "DOUBLE",
    "bool": "BOOLEAN",
    "ts": "TIMESTAMPTZ",
}


def column_name(path: str) -> str:
    """The column a promoted property lands in: ``prop_`` + the path, lower case, ``_`` for the rest."""
    return "prop_" + re.sub(r"[^a-z0-9_]", "_", path.lower())


def promoted_columns(promote: Mapping[str, str]) -> tuple[Column, ...]:
    """The columns ``promote`` (path -> kind) adds to ``events``.

    Raises:
        ConfigError: A path is not a dotted property name, or two paths give one column.
    """
    cols: dict[str, Column] = {}
    for path, kind in promote.items():
        if not _PATH.match(path):
            raise ConfigError(
                f"pipeline.promote_properties: {path!r} is not a property path; use names joined by dots "
                "(revenue, order.id)"
            )
        name = column_name(path)
        if name in cols:
            raise ConfigError(
                f"pipeline.promote_properties: {path!r} and another path both map to column {name}"
            )
        cols[name] = Column(name, kind, f"properties.{path}, promoted to {kind}")  # type: ignore[arg-type]
    return tuple(cols.values())


def _json_path(path: str) -> str:
    return "$." + ".".join('"' + part.replace('"', "") + '"' for part in path.split("."))


def build(settings: Settings) -> Step | None:
    """The promotion step, or ``None`` when no property is promoted."""
    promote = dict(settings.pipeline.promote_properties)
    if not promote:
        return None
    columns = promoted_columns(promote)
    exprs = []
    for (path, kind), col in zip(promote.items(), columns, strict=True):
        extract = f"json_extract_string(properties, '{_json_path(path)}')"
        exprs.append(f'TRY_CAST({extract} AS {_DUCK_TYPES[kind]}) AS "{col.name}"')
    sql = f"SELECT {', '.join(exprs)} FROM batch"
    state: dict[str, duckdb.DuckDBPyConnection] = {}

    def promote_fn(batch: pa.RecordBatch) -> pa.RecordBatch:
        con = state.get("con")
        if con is None:
            con = state["con"] = duckdb.connect()
        props = batch.column(batch.schema.get_field_index("properties"))
        con.register("batch", pa.table({"properties": props.cast(pa.string())}))
        try:
            out = con.sql(sql).to_arrow_table()
        finally:
            con.unregister("batch")
        values = {
            col.name: out.column(col.name).combine_chunks().cast(ARROW_TYPES[col.kind]) for col in columns
        }
        return append_columns(batch, values)

    return Step("promote", promote_fn, columns)
