"""Turning enrichment on for a table written without it adds the columns in place: old rows read
back with nulls, new rows carry the values, and the models still build over both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from clicklake.config import load_settings
from clicklake.lakehouse.catalog import open_catalog

CLI = [sys.executable, "-m", "clicklake"]
STEPS = ("url", "dedup", "bots", "useragent", "referrer", "campaign", "geoip", "ip_anonymization")


def _run(tmp: Path, path: Path, extra: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    env.update({"CLICKLAKE_STORAGE__DATA_DIR": str(tmp / "d"), **extra})
    res = subprocess.run(
        [*CLI, "run", "--source", "files", "--once", str(path)], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def _write(path: Path, start: int) -> Path:
    ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
    lines = [
        orjson.dumps(
            {
                "type": "page",
                "anonymousId": f"a{i}",
                "messageId": f"m{i}",
                "properties": {"url": "https://shop.example/?utm_source=news&utm_medium=email", "path": "/"},
                "context": {"userAgent": ua, "ip": "8.8.8.8"},
            }
        )
        for i in range(start, start + 5)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_enrichment_columns_are_added_to_an_existing_table(tmp_path: Path) -> None:
    off = {f"CLICKLAKE_ENRICH__{s.upper()}__ENABLED": "false" for s in STEPS}
    _run(tmp_path, _write(tmp_path / "old.ndjson", 0), off)
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "d")})
    table = open_catalog(settings).load_table("clicklake.events")
    assert "dvce_class" not in table.schema().column_names
    first_schema_id = table.schema().schema_id

    _run(tmp_path, _write(tmp_path / "new.ndjson", 100), {})
    table = open_catalog(settings).load_table("clicklake.events")
    assert table.schema().schema_id != first_schema_id
    rows = sorted(
        table.scan(selected_fields=("event_id", "dvce_class", "mkt_medium", "geo_country", "user_ipaddress"))
        .to_arrow()
        .to_pylist(),
        key=lambda r: int(r["event_id"][1:]),
    )
    old, new = rows[:5], rows[5:]
    assert all(r["dvce_class"] is None and r["mkt_medium"] is None for r in old)
    assert old[0]["user_ipaddress"] == "8.8.8.8"  # written before anonymization was on
    assert all(
        r["dvce_class"] == "desktop" and r["mkt_medium"] == "email" and r["geo_country"] == "US" for r in new
    )
    assert new[0]["user_ipaddress"] == "8.8.8.0"

    from clicklake.models.runner import build_models

    counts = build_models(settings, full_refresh=True)
    assert counts["page_views"] == 10
