"""`clicklake run` without --once: follows the spool as it grows, commits on its interval, and
on SIGTERM commits what it holds and exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from clicklake.events.envelope import encode_line
from clicklake.sources.spool import SpoolWriter

CLI = [sys.executable, "-m", "clicklake"]


def _lines(start: int, n: int) -> list[bytes]:
    now = int(time.time() * 1000)
    return [
        encode_line(
            orjson.dumps({"type": "track", "event": "E", "userId": f"u{i}", "messageId": f"m{i}"}),
            app_id="app",
            received_ms=now,
        )
        for i in range(start, start + n)
    ]


def _rows(env: dict[str, str]) -> dict[str, int]:
    res = subprocess.run([*CLI, "status", "--json"], env=env, capture_output=True, text=True, check=True)
    return {k: v["rows"] for k, v in json.loads(res.stdout)["tables"].items()}


def test_follows_the_spool_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    env.update({"CLICKLAKE_STORAGE__DATA_DIR": str(data), "CLICKLAKE_PIPELINE__COMMIT_INTERVAL_S": "0.5"})
    writer = SpoolWriter(data / "spool", segment_max_bytes=4096, segment_max_age_s=3600)
    writer.append(_lines(0, 100))
    proc = subprocess.Popen([*CLI, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _rows(env).get("events", 0) < 100:
            time.sleep(0.3)
        assert _rows(env)["events"] == 100
        # More arrives while it runs, across several segments.
        for start in range(100, 400, 50):
            writer.append(_lines(start, 50))
        writer.close()
        while time.monotonic() < deadline and _rows(env)["events"] < 400:
            time.sleep(0.3)
        assert _rows(env)["events"] == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "committed 400 events" in out.replace("\n", " ")
    # Sealed segments every table has passed are gone; the newest stays for the writer.
    assert len(list((data / "spool").glob("seg-*.ndjson"))) == 1
