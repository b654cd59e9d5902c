"""The Spark session of the Spark engine: the Iceberg runtime and the shared catalog.

Spark sees the very catalog PyIceberg uses. PyIceberg's ``SqlCatalog`` and Iceberg's
``JdbcCatalog`` keep tables in the same two SQL tables (``iceberg_tables``,
``iceberg_namespace_properties``), so ``storage.catalog_uri`` (a SQLAlchemy URI) is turned into
the equivalent JDBC URL and Spark gets an Iceberg ``SparkCatalog`` of type ``jdbc`` under the
same catalog name, with the same warehouse. A table written by either engine is the same table
for the other one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clicklake.config import Settings
from clicklake.exceptions import ConfigError

log = logging.getLogger("clicklake.spark")

EXTRA_HINT = "install the Spark engine with: pip install 'clicklake[spark]' (and `make spark-jars`)"


@dataclass(frozen=True)
class JdbcCatalog:
    """The Iceberg JDBC catalog equivalent of a SQLAlchemy catalog URI."""

    url: str
    user: str | None = None
    password: str | None = None


def jdbc_catalog(sqlalchemy_uri: str) -> JdbcCatalog:
    """The JDBC URL (and credentials) of the database behind a SQLAlchemy URI.

    Args:
        sqlalchemy_uri: ``sqlite:////abs/catalog.db`` or ``postgresql[+driver]://user:pw@host:port/db``.

    Returns:
        What Iceberg's ``JdbcCatalog`` needs to open the same database.

    Raises:
        ConfigError: A database other than SQLite or PostgreSQL.
    """
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_uri)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ConfigError("the Spark engine needs a SQLite catalog in a file, not in memory")
        return JdbcCatalog(f"jdbc:sqlite:{Path(url.database).resolve()}")
    if backend == "postgresql":
        host = url.host or "localhost"
        port = f":{url.port}" if url.port else ""
        query = "&".join(f"{k}={v}" for k, v in sorted(url.query.items()) if isinstance(v, str))
        jdbc = f"jdbc:postgresql://{host}{port}/{url.database or ''}" + (f"?{query}" if query else "")
        return JdbcCatalog(jdbc, url.username, url.password)
    raise ConfigError(
        f"storage.catalog_uri: the Spark engine reads SQLite or PostgreSQL catalogs, not {backend!r}"
    )


def default_jars_dir() -> Path:
    """``.cache/jars/spark`` of the source tree this package runs from (``make spark-jars``)."""
    return Path(__file__).resolve().parents[3] / ".cache" / "jars" / "spark"


def jars(settings: Settings) -> list[str]:
    """The jar files to put on Spark's classpath (none when the directory does not exist: then the
    cluster, ``spark.jars.packages`` or ``spark-submit --packages`` provides them)."""
    folder = Path(settings.spark.jars_dir) if settings.spark.jars_dir else default_jars_dir()
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.glob("*.jar"))


def catalog_conf(settings: Settings) -> dict[str, str]:
    """Spark conf of the Iceberg catalog ``storage.catalog_name`` (the shared JDBC catalog)."""
    storage = settings.storage
    name = storage.catalog_name
    jdbc = jdbc_catalog(storage.resolved_catalog_uri())
    prefix = f"spark.sql.catalog.{name}"
    conf = {
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": jdbc.url,
        f"{prefix}.warehouse": storage.resolved_warehouse(),
        # Every micro-batch must see the newest snapshot (the checkpoint lookups, the dedup join,
        # and the schema PyIceberg evolved at start).
        f"{prefix}.cache-enabled": "false",
    }
    if jdbc.user:
        conf[f"{prefix}.jdbc.user"] = jdbc.user
    if jdbc.password:
        conf[f"{prefix}.jdbc.password"] = jdbc.password
    return conf


def session_conf(settings: Settings) -> dict[str, str]:
    """Everything the session is built with: defaults, the catalog, then ``spark.conf``."""
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.useLargeVarTypes": "true",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        # One file, one partition: each NDJSON file is decoded whole by one Python worker.
        "spark.sql.files.openCostInBytes": str(1 << 40),
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        # The model SQL inlines its CTEs into plans whose explain text (built for every adaptive
        # re-plan, UI or not) ran the driver out of heap; 1 MB of it is plenty to read.
        "spark.sql.maxPlanStringLength": str(1 << 20),
    }
    if not settings.spark.remote and settings.spark.master.startswith("local"):
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf["spark.driver.host"] = "127.0.0.1"
    found = jars(settings)
    if found:
        conf["spark.jars"] = ",".join(found)
    conf.update(catalog_conf(settings))
    conf.update(settings.spark.conf)
    return conf


def spark_session(settings: Settings, app_name: str = "clicklake") -> Any:
    """Get or create the Spark session (``spark.master``, or ``spark.remote`` for Spark Connect).

    Raises:
        ConfigError: PySpark is not installed.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(f"the Spark engine needs PySpark: {EXTRA_HINT}") from None
    builder = SparkSession.builder.appName(app_name)
    if settings.spark.remote:
        builder = builder.remote(settings.spark.remote)
    else:
        builder = builder.master(settings.spark.master)
    conf = session_conf(settings)
    for key, value in conf.items():
        builder = builder.config(key, value)
    # Python workers must run this interpreter (the one with clicklake installed).
    os.environ.setdefault("PYSPARK_PYTHON", _python())
    spark = builder.getOrCreate()
    if not settings.spark.remote:
        spark.sparkContext.setLogLevel(os.environ.get("CLICKLAKE_SPARK_LOG_LEVEL", "WARN"))
    log.info(
        "event=spark_session master=%s version=%s jars=%d",
        settings.spark.remote or settings.spark.master,
        spark.version,
        len(conf.get("spark.jars", "").split(",")) if conf.get("spark.jars") else 0,
    )
    return spark


def _python() -> str:
    import sys

    return sys.executable


def table_name(settings: Settings, table: str) -> str:
    """The Spark identifier of a clicklake table: ``catalog.namespace.table``."""
    s = settings.storage
    return f"`{s.catalog_name}`.`{s.namespace}`.`{table}`"
