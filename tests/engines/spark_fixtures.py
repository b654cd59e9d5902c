"""Fixtures of the Spark engine tests: a real PostgreSQL (the shared Iceberg catalog) and one
Spark session for the whole test session.

PostgreSQL is Debian's (``make test-deps`` installs it): a cluster is initialised in a temporary
directory and started on a free port of 127.0.0.1, and stopped at the end. Every Spark test uses
that catalog and one warehouse, each with its own namespace, so one ``SparkSession`` (its Iceberg
catalog is configured once) serves them all.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from clicklake.config import Settings, load_settings


def _pg_bin() -> Path:
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / "pg_ctl").exists():
            return base
    pytest.fail("PostgreSQL is not installed: run `make test-deps` (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``postgresql+psycopg://`` URI of a fresh database on a PostgreSQL started for this session."""
    bindir = _pg_bin()
    # Not under pytest's 0700 temp root: the server runs as `postgres` when we are root.
    root = Path(tempfile.mkdtemp(prefix="clicklake-pg-"))
    data = root / "data"
    # initdb refuses to run as root: the cluster belongs to the `postgres` user when we are root.
    run_as: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        shutil.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "clicklake", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {root}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "clicklake", "catalog"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://clicklake@127.0.0.1:{port}/catalog"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_storage(postgres_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The catalog and warehouse every Spark test shares (each test adds its own namespace)."""
    warehouse = tmp_path_factory.mktemp("warehouse")
    return {"catalog_uri": postgres_uri, "warehouse": warehouse.as_uri()}


SPARK_TEST_CONF = {"spark.sql.shuffle.partitions": "2", "spark.driver.memory": "2g"}


def spark_settings(shared: dict[str, str], data_dir: Path, namespace: str, **sections: object) -> Settings:
    """Settings on the shared catalog, with ``namespace`` and its own data directory."""
    spark = {"master": "local[2]", "conf": SPARK_TEST_CONF, "trigger_interval_s": 1.0}
    spark.update(sections.pop("spark", {}))  # type: ignore[arg-type]
    return load_settings(
        environ={},
        storage={**shared, "data_dir": str(data_dir), "namespace": namespace},
        spark=spark,
        **sections,
    )


@pytest.fixture(scope="session")
def spark(shared_storage: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The one SparkSession of the test session (local[2], the shared catalog)."""
    from clicklake.engines.spark_session import spark_session

    settings = spark_settings(shared_storage, tmp_path_factory.mktemp("spark-data"), "unused")
    session = spark_session(settings, "clicklake-tests")
    yield session
    session.stop()
