"""The ``user_dimension`` step: user attributes joined onto events from Parquet, CSV or Iceberg."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clicklake.config import Settings, load_settings
from clicklake.enrich.user_dimension import Source, UserDimension, build
from clicklake.events.schema import EVENTS_ARROW
from clicklake.exceptions import ConfigError
from clicklake.lakehouse.catalog import open_catalog

USERS = pa.table(
    {
        "user_id": pa.array([1, 2, 3, 2], pa.int64()),  # numeric keys; 2 twice: the last row wins
        "plan": ["free", "pro", "team", "enterprise"],
        "seats": pa.array([1, 5, None, 50], pa.int32()),
        "user_country": ["DE", "US", "FR", "US"],
    }
)
EVENT_USERS = ["2", None, "1", "9", "2", "3"]


def _events(user_ids: list[str | None]) -> pa.RecordBatch:
    data: dict[str, list[Any]] = {name: [None] * len(user_ids) for name in EVENTS_ARROW.names}
    data["event_id"] = [f"e{i}" for i in range(len(user_ids))]
    data["user_id"] = user_ids
    return pa.RecordBatch.from_pydict(data, schema=EVENTS_ARROW)


def _settings(tmp_path: Path, source: str, **dim: Any) -> Settings:
    return load_settings(
        environ={},
        storage={"data_dir": str(tmp_path / "data")},
        enrich={"user_dimension": {"enabled": True, "source": source, **dim}},
    )


def _check_join(out: pa.RecordBatch) -> None:
    assert out.schema.names == [*EVENTS_ARROW.names, "user_plan", "user_seats", "user_country"]
    assert out.column("event_id").to_pylist() == [f"e{i}" for i in range(len(EVENT_USERS))]
    assert out.column("user_id").to_pylist() == EVENT_USERS
    assert out.column("user_plan").to_pylist() == ["enterprise", None, "free", None, "enterprise", "team"]
    assert out.column("user_seats").to_pylist() == ["50", None, "1", None, "50", None]
    assert out.column("user_country").to_pylist() == ["US", None, "DE", None, "US", "FR"]
    for name in ("user_plan", "user_seats", "user_country"):
        assert out.schema.field(name).type == pa.large_string()


def test_join_from_parquet(tmp_path: Path) -> None:
    path = tmp_path / "users.parquet"
    pq.write_table(USERS, path)
    step = build(_settings(tmp_path, str(path)))

    assert step.name == "user_dimension"
    assert [(c.name, c.kind) for c in step.columns] == [
        ("user_plan", "string"),
        ("user_seats", "string"),
        ("user_country", "string"),
    ]
    _check_join(step(_events(EVENT_USERS)))


def test_join_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text(
        "user_id,plan,seats,user_country\n1,free,1,DE\n2,pro,5,US\n3,team,,FR\n2,enterprise,50,US\n"
    )
    _check_join(build(_settings(tmp_path, str(path)))(_events(EVENT_USERS)))


def test_csv_keeps_ids_as_written(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("id,tier\n007,gold\n7,bronze\n")
    step = build(_settings(tmp_path, str(path), key="id"))
    assert step(_events(["007", "7"])).column("user_tier").to_pylist() == ["gold", "bronze"]


def test_join_from_iceberg_and_refresh_on_new_snapshot(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "crm.users", columns=["plan"])
    catalog = open_catalog(settings)
    catalog.create_namespace("crm")
    table = catalog.create_table("crm.users", schema=USERS.schema)
    table.append(USERS)

    step = build(settings)
    assert [c.name for c in step.columns] == ["user_plan"]
    out = step(_events(EVENT_USERS))
    assert out.schema.names[-1] == "user_plan"
    assert out.column("user_plan").to_pylist() == ["enterprise", None, "free", None, "enterprise", "team"]

    table.append(
        pa.table(
            {"user_id": [9], "plan": ["trial"], "seats": [1], "user_country": ["NL"]}, schema=USERS.schema
        )
    )
    state = step.fn
    assert isinstance(state, UserDimension)
    assert state.refresh(force=True)
    assert step(_events(["9"])).column("user_plan").to_pylist() == ["trial"]
    assert not state.refresh(force=True)  # same snapshot: nothing to reload


def test_refresh_after_file_changes_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "plan": ["free"]}), path)
    now = [100.0]
    settings = _settings(tmp_path, str(path))
    state = UserDimension(
        Source(settings), "user_id", ("plan",), refresh_interval_s=5.0, clock=lambda: now[0]
    )
    assert state(_events(["u1"])).column("user_plan").to_pylist() == ["free"]

    pq.write_table(pa.table({"user_id": ["u1", "u2"], "plan": ["pro", "team"]}), path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    now[0] += 1.0  # within the interval: not checked yet
    assert state(_events(["u1", "u2"])).column("user_plan").to_pylist() == ["free", None]
    now[0] += 5.0
    assert state(_events(["u1", "u2"])).column("user_plan").to_pylist() == ["pro", "team"]

    # A broken file keeps the last good table in use.
    path.write_bytes(b"PAR1 truncated")
    now[0] += 10.0
    assert state(_events(["u2"])).column("user_plan").to_pylist() == ["team"]


def test_configuration_errors(tmp_path: Path) -> None:
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "id": ["x"], "plan": ["free"]}), path)
    with pytest.raises(ConfigError, match="no source"):
        build(_settings(tmp_path, ""))
    with pytest.raises(ConfigError, match="neither"):
        build(_settings(tmp_path, str(tmp_path / "users.xlsx")))
    with pytest.raises(ConfigError, match="cannot be read"):
        build(_settings(tmp_path, str(tmp_path / "missing.parquet")))
    with pytest.raises(ConfigError, match="not a column"):
        build(_settings(tmp_path, str(path), key="customer_id"))
    with pytest.raises(ConfigError, match="canonical event column"):
        build(_settings(tmp_path, str(path), key="plan"))  # "user_id" would land as itself
    with pytest.raises(ConfigError, match="canonical event column"):
        build(_settings(tmp_path, str(path), columns=["id"]))  # "id" -> "user_id"
