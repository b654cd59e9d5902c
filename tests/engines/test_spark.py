"""The Spark engine against the local engine: same input, same tables; reads across engines;
exactly-once across a SIGKILL of the Spark driver. Real Spark (local[2]) with the Iceberg Spark
runtime, on a real PostgreSQL catalog shared with PyIceberg."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.exceptions import NoSuchTableError

from clicklake.config import Settings
from clicklake.engines.local import Pipeline
from clicklake.lakehouse.catalog import open_catalog
from clicklake.models.runner import build_models
from clicklake.sources.files import FilesSource
from clicklake.sources.generator import Manifest, generate
from tests.engines.spark_fixtures import spark_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_TABLES = ("page_views", "sessions", "daily_kpis")
# Set at commit time by each engine: not comparable.
COMMIT_TIME = {"load_tstamp", "failed_tstamp"}


def _rows(settings: Settings, table: str) -> list[tuple[Any, ...]]:
    t = open_catalog(settings).load_table(f"{settings.storage.namespace}.{table}")
    df = t.scan().to_arrow()
    cols = sorted(c for c in df.column_names if c not in COMMIT_TIME)
    rows = []
    for r in df.select(cols).to_pylist():
        if table == "failed_events" and r["stage"] == "decode":
            # A file line that cannot be decoded has no receivedAt: its collector time is the
            # time it was read, which differs between two runs of any engine.
            r["collector_tstamp"] = None
        # Averages of doubles depend on the order of summation (DuckDB's and Spark's differ in the
        # last bits): floats are compared to 12 significant digits.
        rows.append(tuple(float(f"{r[c]:.12g}") if isinstance(r[c], float) else r[c] for c in cols))
    return sorted(rows, key=repr)


def _generate(out: Path, events: int, files: int) -> Manifest:
    return generate(
        out,
        events=events,
        days=3,
        seed=7,
        fmt="ndjson",
        files=files,
        malformed_share=0.03,
        retry_share=0.05,
        late_share=0.05,
        end=datetime(2026, 11, 20, tzinfo=UTC),
    )


@pytest.fixture(scope="module")
def parity(
    spark: Any, shared_storage: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The same generated input through both engines, models built by each."""
    from clicklake.engines.spark import SparkPipeline
    from clicklake.models.spark import build_models_spark

    root = tmp_path_factory.mktemp("parity")
    manifest = _generate(root / "input", events=1500, files=3)
    local = spark_settings(shared_storage, root / "local", "parity_local")
    remote = spark_settings(shared_storage, root / "spark", "parity_spark")
    stats = Pipeline(local, FilesSource([root / "input"])).run(once=True)
    build_models(local, full_refresh=True)
    spark_stats = SparkPipeline(remote, "files", (str(root / "input"),)).run(once=True)
    models = build_models_spark(remote)
    return {
        "local": local,
        "spark": remote,
        "manifest": manifest,
        "stats": stats,
        "spark_stats": spark_stats,
        "models": models,
    }


def test_spark_lands_what_the_generator_wrote(parity: dict[str, Any]) -> None:
    manifest: Manifest = parity["manifest"]
    spark = parity["spark"]
    assert manifest.retried > 0 and manifest.late > 0 and manifest.expected_failed_rows > 0
    assert len(_rows(spark, "events")) == manifest.valid_unique
    assert len(_rows(spark, "failed_events")) == manifest.expected_failed_rows
    assert parity["spark_stats"].duplicates == manifest.retried


@pytest.mark.parametrize("table", ["events", "failed_events"])
def test_ingest_parity(parity: dict[str, Any], table: str) -> None:
    local_rows = _rows(parity["local"], table)
    spark_rows = _rows(parity["spark"], table)
    assert local_rows, table
    assert spark_rows == local_rows


@pytest.mark.parametrize("table", MODEL_TABLES)
def test_model_parity(parity: dict[str, Any], table: str) -> None:
    local_rows = _rows(parity["local"], table)
    assert local_rows, table
    assert _rows(parity["spark"], table) == local_rows


def test_cross_engine_reads(parity: dict[str, Any], spark: Any) -> None:
    """Spark SQL reads what the local engine wrote; PyIceberg and `clicklake sql` read Spark's."""
    from clicklake.query.engine import run_sql

    local, remote = parity["local"], parity["spark"]
    n_local = len(_rows(local, "events"))
    got = spark.sql(f"SELECT count(*) AS n FROM clicklake.{local.storage.namespace}.events").first()
    assert got is not None and got["n"] == n_local
    kpis = spark.sql(f"SELECT sum(sessions) AS s FROM clicklake.{local.storage.namespace}.daily_kpis").first()
    assert kpis is not None and kpis["s"] == len(_rows(local, "sessions"))
    n_spark = run_sql(remote, "SELECT count(*) AS n FROM events").column("n")[0].as_py()
    assert n_spark == len(_rows(remote, "events"))
    by_day = run_sql(remote, "SELECT sum(sessions) AS s FROM daily_kpis").column("s")[0].as_py()
    assert by_day == len(_rows(remote, "sessions"))


def test_a_replayed_batch_is_skipped(parity: dict[str, Any]) -> None:
    """Running again from the same checkpoint commits nothing new (no file is new)."""
    from clicklake.engines.spark import SparkPipeline

    remote = parity["spark"]
    before = len(_rows(remote, "events"))
    folder = str(Path(parity["manifest"].files[0]).parent)
    again = SparkPipeline(remote, "files", (folder,)).run(once=True)
    assert again.events == 0
    assert len(_rows(remote, "events")) == before


def _spark_snapshots(settings: Settings, table: str) -> int:
    from clicklake.engines.spark import BATCH_KEY

    try:
        t = open_catalog(settings).load_table(f"{settings.storage.namespace}.{table}")
    except NoSuchTableError:
        return 0  # the pipeline has not created it yet
    return sum(1 for s in t.metadata.snapshots if s.summary and BATCH_KEY in s.summary.additional_properties)


def test_sigkill_of_the_driver_neither_loses_nor_duplicates(
    shared_storage: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path
    manifest = _generate(root / "input", events=1200, files=4)
    settings = spark_settings(shared_storage, root / "data", "killed", spark={"max_files_per_trigger": 1})
    env = {
        **os.environ,
        "CLICKLAKE_STORAGE__CATALOG_URI": settings.storage.catalog_uri,
        "CLICKLAKE_STORAGE__WAREHOUSE": settings.storage.warehouse,
        "CLICKLAKE_STORAGE__NAMESPACE": "killed",
        "CLICKLAKE_SPARK__MAX_FILES_PER_TRIGGER": "1",
        "CLICKLAKE_SPARK__TRIGGER_INTERVAL_S": "1",
        "CLICKLAKE_SPARK__CONF": '{"spark.sql.shuffle.partitions": "2", "spark.driver.memory": "1g"}',
    }
    cmd = [
        sys.executable,
        "-m",
        "clicklake",
        "--data-dir",
        str(root / "data"),
        "run",
        "--engine",
        "spark",
        "--source",
        "files",
        str(root / "input"),
    ]
    # Its own process group: the driver (Python) and its JVM die together, as on a lost host.
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 480
        while _spark_snapshots(settings, "events") < 1:
            assert proc.poll() is None, "the Spark pipeline exited before its first commit"
            assert time.monotonic() < deadline, "no batch committed in time"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    committed_before = _spark_snapshots(settings, "events")
    assert committed_before < 4, "every file was committed before the kill: nothing was mid-stream"
    done = subprocess.run([*cmd, "--once"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    events = open_catalog(settings).load_table("killed.events").scan().to_arrow()
    failed = open_catalog(settings).load_table("killed.failed_events").scan().to_arrow()
    assert events.num_rows == manifest.valid_unique
    assert failed.num_rows == manifest.expected_failed_rows
    assert len(set(events.column("event_id").to_pylist())) == events.num_rows
    positions = set(
        zip(
            failed.column("source_stream").to_pylist(),
            failed.column("source_offset").to_pylist(),
            failed.column("source_index").to_pylist(),
            strict=True,
        )
    )
    assert len(positions) == failed.num_rows


def test_kafka_source_parity(
    spark: Any, shared_storage: dict[str, str], tmp_path: Path, kafka_broker: Any
) -> None:
    """The same collector envelopes in a Kafka topic (two partitions) through both engines.

    No client resends here: which of two copies spread over partitions lands first is an
    ordering question across partitions, not what this test is about.
    """
    from clicklake.engines.spark import SparkPipeline
    from clicklake.sources.kafka import KafkaSource

    spool = tmp_path / "spool"
    manifest = generate(
        spool,
        events=600,
        days=2,
        seed=11,
        fmt="spool",
        malformed_share=0.03,
        retry_share=0.0,
        late_share=0.05,
        end=datetime(2026, 11, 20, tzinfo=UTC),
    )
    lines = [
        line
        for seg in sorted(spool.glob("seg-*.ndjson"))
        for line in seg.read_bytes().split(b"\n")
        if line.strip()
    ]
    topic = kafka_broker.new_topic(2)
    kafka_broker.produce(topic, lines)
    kafka = {"bootstrap_servers": kafka_broker.bootstrap, "topic": topic, "group_id": f"g-{topic}"}
    local = spark_settings(shared_storage, tmp_path / "local", "kafka_local", kafka=kafka)
    remote = spark_settings(shared_storage, tmp_path / "spark", "kafka_spark", kafka=kafka)
    source = KafkaSource(local.kafka, local.pipeline.pipeline_id)
    try:
        Pipeline(local, source).run(once=True)
    finally:
        source.close()
    SparkPipeline(remote, "kafka").run(once=True)
    events = _rows(remote, "events")
    assert len(events) == manifest.valid_unique
    assert len(_rows(remote, "failed_events")) == manifest.expected_failed_rows
    assert events == _rows(local, "events")
    assert _rows(remote, "failed_events") == _rows(local, "failed_events")
