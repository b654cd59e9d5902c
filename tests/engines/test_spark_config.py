"""The Spark engine's wiring that needs no JVM: catalog URLs, session conf, the missing extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clicklake.config import load_settings
from clicklake.engines import load_engine
from clicklake.engines.spark_session import catalog_conf, jdbc_catalog, session_conf
from clicklake.exceptions import ConfigError


def test_postgres_uri_becomes_the_jdbc_url_of_the_same_database() -> None:
    got = jdbc_catalog("postgresql+psycopg://ana:s3cret@db.internal:5433/lake?sslmode=require")
    assert got.url == "jdbc:postgresql://db.internal:5433/lake?sslmode=require"
    assert (got.user, got.password) == ("ana", "s3cret")


def test_sqlite_uri_becomes_a_jdbc_sqlite_file(tmp_path: Path) -> None:
    got = jdbc_catalog(f"sqlite:///{tmp_path}/catalog.db")
    assert got.url == f"jdbc:sqlite:{tmp_path}/catalog.db"
    assert got.user is None


def test_other_databases_are_refused() -> None:
    with pytest.raises(ConfigError, match="SQLite or PostgreSQL"):
        jdbc_catalog("mysql+pymysql://u@h/db")


def test_spark_catalog_has_the_pyiceberg_catalog_name_and_warehouse(tmp_path: Path) -> None:
    s = load_settings(
        environ={},
        storage={
            "data_dir": str(tmp_path),
            "catalog_uri": "postgresql+psycopg://u:p@127.0.0.1:5432/cat",
            "warehouse": "s3://bucket/lake",
            "catalog_name": "lake",
        },
    )
    conf = catalog_conf(s)
    assert conf["spark.sql.catalog.lake"] == "org.apache.iceberg.spark.SparkCatalog"
    assert conf["spark.sql.catalog.lake.type"] == "jdbc"
    assert conf["spark.sql.catalog.lake.uri"] == "jdbc:postgresql://127.0.0.1:5432/cat"
    assert conf["spark.sql.catalog.lake.warehouse"] == "s3://bucket/lake"
    assert conf["spark.sql.catalog.lake.jdbc.user"] == "u"


def test_spark_conf_passthrough_wins(tmp_path: Path) -> None:
    s = load_settings(
        environ={"CLICKLAKE_SPARK__CONF": '{"spark.sql.shuffle.partitions": "64"}'},
        storage={"data_dir": str(tmp_path)},
    )
    assert session_conf(s)["spark.sql.shuffle.partitions"] == "64"


def test_missing_pyspark_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if PySpark were not installed, even when another test imported it already.
    for name in [m for m in sys.modules if m == "pyspark" or m.startswith("pyspark.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.delitem(sys.modules, "clicklake.engines.spark", raising=False)
    with pytest.raises(ConfigError, match=r"clicklake\[spark\]"):
        load_engine("spark")


def test_model_sql_transpiles_with_ctes_as_views() -> None:
    from clicklake.models.render import ModelOptions
    from clicklake.models.spark import spark_statements

    stmts = {s.name: s for s in spark_statements(ModelOptions())}
    assert set(stmts) == {
        "key_clashes",
        "copies",
        "base_events",
        "sessionized",
        "page_view_stats",
        "session_stats",
        "page_views_new",
        "sessions_new",
        "user_mapping_new",
        "users",
        "daily_kpis",
    }
    assert "epoch_us" not in stmts["base_events"].sql.lower()
    assert stmts["page_view_stats"].ctes, "page_view_stats has CTEs"
    assert not stmts["page_view_stats"].sql.upper().lstrip().startswith("WITH")


def test_kafka_messages_become_lines_at_their_offsets() -> None:
    import numpy as np

    from clicklake.engines.spark import _message_lines

    values = [b'{"a":1}', b"", b"\xff\xfe not utf-8", b'{"b":\n2}']
    lines, bad = _message_lines("clicklake.events/3", values, np.array([10, 11, 12, 13]), "spool")
    assert lines.column("source_stream").to_pylist() == ["clicklake.events/3"] * 2
    # the empty message is no event; the one with a newline stays one line
    assert lines.column("source_offset").to_pylist() == [10, 13]
    assert lines.column("line").to_pylist() == ['{"a":1}\n', '{"b": 2}\n']
    assert bad is not None
    assert bad.column("source_offset").to_pylist() == [12]
    assert bad.column("error_type").to_pylist() == ["invalid_utf8"]


def test_files_are_cut_into_line_aligned_chunks() -> None:
    from clicklake.engines.spark import _chunks

    data = b"aaaa\nbb\ncccccc\nd"
    chunks = list(_chunks("/x", data, 6))
    assert b"".join(c.data for c in chunks) == data
    assert all(c.data.endswith(b"\n") for c in chunks[:-1])
    assert [c.start for c in chunks] == [0, 5, 8, 15]
    # a line longer than a read carries over into the next read, as FilesSource does
    long = list(_chunks("/x", b"aaaaaaaaaa\nb\nccc\n", 6))
    assert [(c.start, c.data) for c in long] == [(0, b"aaaaaaaaaa\n"), (11, b"b\nccc\n")]
