"""``clicklake models build --engine spark``: the model SQL on Spark, written to the Iceberg tables.

Every statement is the DuckDB SQL that :mod:`clicklake.models.render` renders for a full build
(the same files and options as the DuckDB runner), transpiled with
``sqlglot.transpile(read="duckdb", write="spark")``; where sqlglot leaves a DuckDB function Spark
does not know, a listed AST fix applies (:data:`FIXUPS`). Identifiers are always quoted: Spark 4
reads the CTE name ``stream`` as a keyword.

The Spark build is always a full rebuild of the current ``events`` snapshot (the incremental
planner is the DuckDB runner's). Each model table is replaced in one Iceberg overwrite commit
(``writeTo(...).overwrite(true)``, Iceberg's ``INSERT OVERWRITE`` of every partition) carrying
``clicklake.models.events_snapshot``, so a later DuckDB run continues incrementally from it.
Numbers Spark types as DECIMAL (``x / 1000000.0``) are cast to DOUBLE, DuckDB's type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clicklake.config import Settings
from clicklake.exceptions import ConfigError
from clicklake.lakehouse.catalog import load_existing, open_catalog
from clicklake.models.render import ModelOptions, options_from_settings, render, template_values
from clicklake.models.runner import EVENTS_SNAPSHOT_KEY, MODEL_TABLES, OPTIONAL_EVENT_COLUMNS

log = logging.getLogger("clicklake.models.spark")

#: Model statements in build order (as the DuckDB runner's full refresh): view -> SQL file.
STATEMENTS: dict[str, str] = {
    "key_clashes": "key_clashes",
    "copies": "copies",
    "base_events": "base_events",
    "sessionized": "sessionized",
    "page_view_stats": "page_view_stats",
    "session_stats": "session_stats",
    "page_views_new": "page_views",
    "sessions_new": "sessions",
    "user_mapping_new": "user_mapping",
    "users": "users",
    "daily_kpis": "daily_kpis",
}

#: Statements over the sessions table as written (``sessions_all``): run after it is written.
OVER_WRITTEN_SESSIONS = ("users", "daily_kpis")

#: The other statements, in build order: each a cached view, before any table is written.
CACHED_VIEWS = tuple(name for name in STATEMENTS if name not in OVER_WRITTEN_SESSIONS)

#: Model table -> the view holding its rows.
TABLE_VIEWS: dict[str, str] = {
    "page_views": "page_views_new",
    "sessions": "sessions_new",
    "user_mapping": "user_mapping_new",
    "users": "users",
    "daily_kpis": "daily_kpis",
}

_SPARK_TYPES = {"string": "STRING", "bool": "BOOLEAN", "double": "DOUBLE"}


def _fixups() -> dict[str, Callable[[Any], Any]]:
    from sqlglot import exp

    def epoch_us(node: Any) -> Any:
        if isinstance(node, exp.Anonymous) and str(node.this).lower() == "epoch_us":
            return exp.Anonymous(this="unix_micros", expressions=node.expressions)
        return node

    return {"epoch_us(ts) -> unix_micros(ts)": epoch_us}


@dataclass(frozen=True)
class SparkStatement:
    """One model statement as Spark SQL, and how it got there."""

    name: str
    model: str
    sql: str
    how: str
    ctes: tuple[tuple[str, str], ...] = ()


def to_spark(name: str, duckdb_sql: str) -> SparkStatement:
    """Transpile one rendered DuckDB statement to Spark SQL, applying the fixes it needs.

    Raises:
        ConfigError: sqlglot is not installed.
    """
    try:
        import sqlglot
    except ImportError:
        raise ConfigError("the Spark model build needs sqlglot: pip install 'clicklake[spark]'") from None
    tree = sqlglot.parse_one(duckdb_sql, read="duckdb")
    needed = []
    for label, fix in _fixups().items():
        if any(fix(node) is not node for node in tree.walk()):
            tree = tree.transform(fix)
            needed.append(label)
    # Spark 4.1's InlineCTE breaks on some of the models' CTEs ("the plan was previously resolved
    # and now became unresolved"): each CTE becomes a temp view of its own, in order.
    ctes = []
    with_ = tree.args.get("with_") or tree.args.get("with")
    if with_ is not None:
        for cte in with_.expressions:
            ctes.append((cte.alias, cte.this.sql(dialect="spark", comments=False, identify=True)))
        tree.set("with_" if "with_" in tree.args else "with", None)
    sql = tree.sql(dialect="spark", comments=False, identify=True)
    how = "transpiled" + (f" + fix: {'; '.join(needed)}" if needed else "")
    return SparkStatement(name, STATEMENTS[name], sql, how, tuple(ctes))


def spark_statements(opts: ModelOptions) -> list[SparkStatement]:
    """All model statements of a full build, in order, as Spark SQL."""
    values = template_values(opts)
    return [to_spark(name, render(model, values)) for name, model in STATEMENTS.items()]


def build_models_spark(settings: Settings, full_refresh: bool = True) -> dict[str, int]:
    """Build every model table on Spark from the current ``events`` snapshot (a full rebuild).

    Args:
        settings: The settings (catalog, ``[models]``, ``[spark]``).
        full_refresh: Accepted for symmetry with the DuckDB runner; the Spark build is always full.

    Returns:
        Rows written per model table.

    Raises:
        ConfigError: PySpark or sqlglot is missing, or a ``[models]`` option is invalid.
    """
    from clicklake.engines.spark_session import spark_session, table_name

    opts = options_from_settings(settings)
    catalog = open_catalog(settings)
    events = load_existing(catalog, settings, "events")
    current = events.current_snapshot() if events is not None else None
    if current is None:
        return dict.fromkeys(MODEL_TABLES, 0)
    snapshot_id = current.snapshot_id
    statements = {s.name: s for s in spark_statements(opts)}
    spark = spark_session(settings, "clicklake-models")
    from pyspark.sql import functions as F

    t0 = time.monotonic()
    src = spark.read.option("versionAsOf", snapshot_id).table(table_name(settings, "events"))
    for name, typ in OPTIONAL_EVENT_COLUMNS.items():
        if name not in src.columns:
            src = src.withColumn(
                name, F.lit(None).cast(_SPARK_TYPES["bool" if str(typ) == "bool" else "string"])
            )
    # _row: a row's place in the snapshot's files (Iceberg's _file and _pos metadata columns);
    # sessionized finds the copy of an event that base_events kept by it.
    src = src.select("*", F.concat_ws(":", F.col("_file"), F.col("_pos").cast("string")).alias("_row"))
    src.createOrReplaceTempView("src_events")
    cached = []
    counts: dict[str, int] = {}
    props = {EVENTS_SNAPSHOT_KEY: str(snapshot_id)}

    def view(name: str) -> None:
        log.info("event=model_statement name=%s how=%s", name, statements[name].how)
        df = run_statement(spark, statements[name]).cache()
        df.createOrReplaceTempView(name)
        cached.append(df)

    try:
        for name in CACHED_VIEWS:
            view(name)
        for table in ("page_views", "sessions", "user_mapping"):
            counts[table] = _write(spark, settings, table, TABLE_VIEWS[table], props)
        spark.table(table_name(settings, "sessions")).createOrReplaceTempView("sessions_all")
        for name in OVER_WRITTEN_SESSIONS:
            run_statement(spark, statements[name]).createOrReplaceTempView(name)
            counts[name] = _write(spark, settings, name, name, props)
    finally:
        for df in cached:
            df.unpersist()
    log.info(
        "event=models_built engine=spark events_snapshot=%s rows=%s seconds=%.3f",
        snapshot_id,
        ",".join(f"{k}:{v}" for k, v in counts.items()),
        time.monotonic() - t0,
    )
    return counts


def run_statement(spark: Any, statement: SparkStatement) -> Any:
    """``statement`` as a DataFrame: each of its CTEs a temp view of its own first (Spark 4.1's
    InlineCTE breaks on some of the models' CTEs), then the statement."""
    for alias, sql in statement.ctes:
        spark.sql(sql).createOrReplaceTempView(alias)
    return spark.sql(statement.sql)


def _write(spark: Any, settings: Settings, table: str, view: str, props: dict[str, str]) -> int:
    """Replace ``table`` with the rows of ``view`` in one Iceberg commit (created when missing)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DecimalType

    from clicklake.engines.spark_session import table_name

    df = spark.table(view)
    for f in df.schema.fields:
        if isinstance(f.dataType, DecimalType):
            df = df.withColumn(f.name, F.col(f.name).cast("double"))
    df = df.cache()
    try:
        n = int(df.count())
        ident = table_name(settings, table)
        writer = df.writeTo(ident)
        for k, v in props.items():
            writer = writer.option(f"snapshot-property.{k}", v)
        exists = spark.catalog.tableExists(ident.replace("`", ""))
        if not exists:
            part = MODEL_TABLES[table]
            writer = writer.using("iceberg").tableProperty("write.parquet.compression-codec", "zstd")
            if part is not None:
                writer = writer.partitionedBy(F.col(part))
            writer.create()
        else:
            writer.overwrite(F.lit(True))
        return n
    finally:
        df.unpersist()
