"""Schema evolution: promoted properties, widening, refusals, and bucket-count partition evolution,
with the real pipeline, real tables, the SQL engine and the models across the change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.transforms import DayTransform
from pyiceberg.types import LongType, NestedField, StringType

from clicklake.config import Settings, load_settings
from clicklake.engines.local import Pipeline
from clicklake.events.schema import EVENTS_SCHEMA
from clicklake.exceptions import ConfigError, SchemaEvolutionError
from clicklake.lakehouse.catalog import ensure_tables, ingest_tables, open_catalog
from clicklake.lakehouse.evolution import evolve_columns
from clicklake.lakehouse.maintenance import _live_files, compact
from clicklake.sources.files import FilesSource

OFF = {s: {"enabled": False} for s in ("url", "dedup", "bots", "useragent", "referrer", "campaign", "geoip")}


def _settings(data: Path, **pipeline: Any) -> Settings:
    return load_settings(
        environ={},
        storage={"data_dir": str(data)},
        pipeline={"default_app_id": "shop", **pipeline},
        enrich=OFF,
        maintenance={"min_input_files": 2},
    )


def _file(path: Path, start: int, n: int, props: dict[str, Any]) -> Path:
    lines = [
        orjson.dumps(
            {
                "type": "track",
                "event": "Order Completed",
                "anonymousId": f"a{i % 5}",
                "messageId": f"m{i}",
                "timestamp": "2026-11-20T10:00:00Z",
                "properties": props,
            }
        )
        for i in range(start, start + n)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _nothing(tmp: Path) -> FilesSource:
    empty = tmp / "empty.ndjson"
    empty.write_bytes(b"")
    return FilesSource([str(empty)], chunk_bytes=1 << 20)


def _run(settings: Settings, path: Path) -> None:
    Pipeline(settings, FilesSource([str(path)], chunk_bytes=1 << 20)).run(once=True)


def _events(settings: Settings) -> list[dict[str, Any]]:
    table = open_catalog(settings).load_table("clicklake.events")
    return sorted(table.scan().to_arrow().to_pylist(), key=lambda r: int(r["event_id"][1:]))


def test_promoted_properties_fill_new_rows_and_read_null_in_old_ones(tmp_path: Path) -> None:
    data = tmp_path / "d"
    _run(_settings(data), _file(tmp_path / "a.ndjson", 0, 5, {"revenue": 10.5, "order": {"id": "o1"}}))
    promote = {"revenue": "double", "order.id": "string", "qty": "int", "paid_at": "ts", "gift": "bool"}
    settings = _settings(data, promote_properties=promote)
    props = {
        "revenue": "12.25",
        "order": {"id": "o2"},
        "qty": "abc",
        "paid_at": "2026-11-20T10:00:01Z",
        "gift": True,
    }
    _run(settings, _file(tmp_path / "b.ndjson", 5, 5, props))

    rows = _events(settings)
    old, new = rows[:5], rows[5:]
    for col in ("prop_revenue", "prop_order_id", "prop_qty", "prop_paid_at", "prop_gift"):
        assert all(r[col] is None for r in old)
    assert {r["prop_revenue"] for r in new} == {12.25}
    assert {r["prop_order_id"] for r in new} == {"o2"}
    # "abc" is no int: null in the column, kept as sent in properties.
    assert {r["prop_qty"] for r in new} == {None}
    assert all(orjson.loads(r["properties"])["qty"] == "abc" for r in new)
    assert {r["prop_paid_at"].isoformat() for r in new} == {"2026-11-20T10:00:01+00:00"}
    assert {r["prop_gift"] for r in new} == {True}

    from clicklake.models.runner import build_models
    from clicklake.query import run_sql

    assert build_models(settings, full_refresh=True)["sessions"] > 0
    got = run_sql(settings, "SELECT count(*) AS n, sum(prop_revenue) AS r FROM events").to_pylist()
    assert got == [{"n": 10, "r": 5 * 12.25}]


def test_incompatible_promotions_are_refused_and_widening_is_applied(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = _settings(data, promote_properties={"n": "long", "m": "int", "s": "string"})
    _run(first, _file(tmp_path / "a.ndjson", 0, 3, {"n": 1, "m": 2, "s": "x"}))

    with pytest.raises(SchemaEvolutionError, match=r"prop_n .* narrowing") as narrowing:
        Pipeline(_settings(data, promote_properties={"n": "int"}), _nothing(tmp_path))
    assert "new column name" in str(narrowing.value)
    with pytest.raises(SchemaEvolutionError, match=r"prop_s .* incompatible"):
        Pipeline(_settings(data, promote_properties={"s": "double"}), _nothing(tmp_path))
    assert isinstance(narrowing.value, ConfigError)  # exit code 2 on the CLI, like any config mistake

    widened = _settings(data, promote_properties={"n": "long", "m": "long", "s": "string"})
    _run(widened, _file(tmp_path / "b.ndjson", 3, 3, {"n": 1, "m": 5_000_000_000, "s": "y"}))
    table = open_catalog(widened).load_table("clicklake.events")
    assert isinstance(table.schema().find_field("prop_m").field_type, LongType)
    assert [r["prop_m"] for r in _events(widened)] == [2, 2, 2, 5_000_000_000, 5_000_000_000, 5_000_000_000]


def test_required_columns_are_refused(settings: Settings) -> None:
    table = ensure_tables(open_catalog(settings), settings, ingest_tables(settings))["events"]
    with pytest.raises(SchemaEvolutionError, match="cannot add required column extra"):
        evolve_columns(table, [NestedField(-1, "extra", StringType(), required=True)])
    with pytest.raises(SchemaEvolutionError, match=r"cannot make column user_id .* required"):
        evolve_columns(table, [NestedField(-1, "user_id", StringType(), required=True)])
    assert "extra" not in table.refresh().schema().column_names


def test_bad_promotion_paths_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a property path"):
        Pipeline(_settings(tmp_path / "d", promote_properties={"a..b": "string"}), _nothing(tmp_path))


def test_bucket_count_change_is_partition_evolution_and_everything_keeps_reading(tmp_path: Path) -> None:
    data = tmp_path / "d"
    two = _settings(data, event_buckets=2)
    _run(two, _file(tmp_path / "a.ndjson", 0, 20, {"revenue": 1}))
    _run(two, _file(tmp_path / "b.ndjson", 20, 20, {"revenue": 1}))
    four = _settings(data, event_buckets=4)
    _run(four, _file(tmp_path / "c.ndjson", 40, 20, {"revenue": 1}))

    table = open_catalog(four).load_table("clicklake.events")
    assert len(table.metadata.specs()) == 2
    assert str(table.spec().fields[1].transform) == "bucket[4]"
    spec_ids = {f.spec_id for f in _live_files(table)}
    assert spec_ids == {0, 1}

    from clicklake.models.runner import build_models
    from clicklake.query import run_sql

    def answers() -> Any:
        return (
            run_sql(four, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events").to_pylist(),
            build_models(four, full_refresh=True)["sessions"],
        )

    before = answers()
    assert before[0] == [{"n": 60, "d": 60}]
    # Compaction rewrites the old spec's files into the current spec.
    compact(table, four.maintenance)
    table = table.refresh()
    assert {f.spec_id for f in _live_files(table)} == {1}
    assert answers() == before
    # Back to two buckets reuses the first spec.
    _run(two, _file(tmp_path / "d.ndjson", 60, 5, {"revenue": 1}))
    table = table.refresh()
    assert table.spec().spec_id == 0 and len(table.metadata.specs()) == 2


def test_a_partition_source_change_is_refused(settings: Settings) -> None:
    catalog = open_catalog(settings)
    catalog.create_namespace_if_not_exists("clicklake")
    other = PartitionSpec(
        PartitionField(
            source_id=EVENTS_SCHEMA.find_field("collector_tstamp").field_id,
            field_id=1000,
            transform=DayTransform(),
            name="collector_day",
        )
    )
    catalog.create_table("clicklake.events", schema=EVENTS_SCHEMA, partition_spec=other)
    with pytest.raises(
        SchemaEvolutionError, match=r"partitioned by day\(collector_tstamp\).*storage.namespace"
    ):
        ensure_tables(catalog, settings, ingest_tables(settings))


def test_events_retention_keeps_model_days_until_their_own_retention(tmp_path: Path) -> None:
    from datetime import date, timedelta

    from clicklake.lakehouse.maintenance import apply_retention
    from clicklake.models.runner import build_models
    from clicklake.query import run_sql

    settings = _settings(tmp_path / "d")
    lines = [
        orjson.dumps(
            {
                "type": "page",
                "anonymousId": f"a{i}",
                "messageId": f"m{i}",
                "timestamp": f"2026-11-{18 + i % 5}T10:00:00Z",
                "properties": {"path": "/"},
            }
        )
        for i in range(25)
    ]
    (tmp_path / "e.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    _run(settings, tmp_path / "e.ndjson")
    build_models(settings)
    per_day = "SELECT session_date, count(*) AS n FROM sessions GROUP BY 1 ORDER BY 1"
    before = run_sql(settings, per_day).to_pylist()
    assert len(before) == 5

    events = open_catalog(settings).load_table("clicklake.events")
    today = date(2026, 11, 23)  # keep 2026-11-21 and later
    assert apply_retention(events, 2, settings.maintenance, today=today).rows_deleted == 15
    build_models(settings)  # incremental: the dropped event days are not recomputed away
    assert run_sql(settings, per_day).to_pylist() == before
    assert run_sql(settings, "SELECT count(*) AS n FROM events").to_pylist() == [{"n": 10}]

    sessions = open_catalog(settings).load_table("clicklake.sessions")
    # Models' own retention: 1 day before 2026-11-23 is kept, 18th to 21st go.
    assert apply_retention(sessions, 1, settings.maintenance, today=today).partitions_dropped == 4
    assert run_sql(settings, per_day).to_pylist() == before[4:]
    assert before[4]["session_date"] == today - timedelta(days=1)
    build_models(settings)  # nothing new: up to date, the marker survived the retention commit
    assert run_sql(settings, per_day).to_pylist() == before[4:]
