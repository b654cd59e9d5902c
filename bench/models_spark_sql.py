"""The clicklake model SQL for Spark, for ``bench/models_build.py``.

Every statement starts from the DuckDB SQL that ``clicklake.models.render`` renders for the build
(the same files, options and placeholders as ``clicklake models build``), and is transpiled to
Spark SQL with ``sqlglot.transpile(sql, read="duckdb", write="spark")``. Where sqlglot leaves a
DuckDB construct that Spark cannot run, a hand-written fix is applied to that statement; each fix
is listed in :data:`FIXUPS` and reported per statement, so the bench can say exactly what was
transpiled and what was hand-ported. A statement that cannot be saved by a local fix would get a
whole hand-written Spark version in :data:`OVERRIDES` (none is needed today).

Identifiers are always quoted (``identify=True``): ``page_views.sql`` names a CTE ``stream``, which
Spark 4 parses as the ``STREAM`` keyword (``FROM stream AS s`` fails with "table or view `AS`
cannot be found").

Fixes in use:

- ``epoch_us(ts)``: DuckDB's microseconds since the epoch; sqlglot has no mapping and emits
  ``EPOCH_US(...)``, which Spark does not know. Spark's equivalent is ``unix_micros(ts)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from clicklake.models.render import ModelOptions, render, template_values

#: Model statements in build order, as in ``clicklake.models.runner`` (full refresh):
#: ``name -> (model SQL file, materialized as)``.
STATEMENTS: dict[str, str] = {
    "base_events": "base_events",
    "sessionized": "sessionized",
    "page_views_new": "page_views",
    "sessions_new": "sessions",
    "user_mapping_new": "user_mapping",
    "users": "users",
    "daily_kpis": "daily_kpis",
}

#: The ``ORDER BY`` the runner applies when it writes each model table.
WRITE_ORDER: dict[str, str] = {
    "page_views": "page_view_date, session_id, page_view_in_session_index",
    "sessions": "session_date, app_id, start_tstamp, session_id",
    "user_mapping": "app_id, anonymous_id",
    "users": "app_id, user_key",
    "daily_kpis": "`date`, app_id",
}


def _epoch_us(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Anonymous) and str(node.this).lower() == "epoch_us":
        return exp.Anonymous(this="unix_micros", expressions=node.expressions)
    return node


#: Hand-written AST fixes applied after parsing the DuckDB SQL: ``label -> transform``.
FIXUPS: dict[str, Callable[[exp.Expression], exp.Expression]] = {
    "epoch_us(ts) -> unix_micros(ts)": _epoch_us,
}

#: Whole hand-ported Spark statements, by statement name (used instead of transpiling).
OVERRIDES: dict[str, str] = {}


@dataclass(frozen=True)
class SparkStatement:
    """One model statement ready for ``spark.sql``.

    Attributes:
        name: the temp view / table it materializes (``base_events``, ``sessions_new``...).
        model: the SQL file it comes from.
        sql: Spark SQL.
        how: ``transpiled``, ``transpiled + fix: ...`` or ``hand-ported``.
    """

    name: str
    model: str
    sql: str
    how: str


def _fixes_needed(tree: exp.Expression) -> list[str]:
    needed = []
    for label, fix in FIXUPS.items():
        if any(fix(node) is not node for node in tree.walk()):
            needed.append(label)
    return needed


def to_spark(name: str, duckdb_sql: str) -> SparkStatement:
    """Transpile one rendered DuckDB statement to Spark SQL, applying the fixes it needs."""
    model = STATEMENTS[name]
    if name in OVERRIDES:
        return SparkStatement(name, model, OVERRIDES[name], "hand-ported (whole statement)")
    tree = sqlglot.parse_one(duckdb_sql, read="duckdb")
    needed = _fixes_needed(tree)
    for label in needed:
        tree = tree.transform(FIXUPS[label])
    sql = tree.sql(dialect="spark", comments=False, identify=True)
    how = "transpiled" + (f" + fix: {'; '.join(needed)}" if needed else "")
    return SparkStatement(name, model, sql, how)


def spark_statements(opts: ModelOptions) -> list[SparkStatement]:
    """All model statements of a full build, in order, as Spark SQL."""
    values = template_values(opts)  # full refresh: the window condition is ``true``
    return [to_spark(name, render(model, values)) for name, model in STATEMENTS.items()]
