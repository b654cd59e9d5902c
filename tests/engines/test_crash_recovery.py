"""Exactly-once under crashes: SIGKILL the pipeline at random moments, restart, account for every line.

The pipeline runs as a real subprocess over a generated spool of 200,000 events. It is killed
at least ten times, a third each: at a random moment while it reads and decodes; as soon as it
logs the start of a commit (while it writes Parquet files and commits them); right after it logs
the commit of ``events`` (before ``failed_events`` commits), the window where the two tables'
checkpoints differ. After a final clean run, every valid event
must be in ``events`` exactly once and every malformed one in ``failed_events`` exactly once,
matching the generator's manifest.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from clicklake.config import load_settings
from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, open_catalog, table_id

CLI = [sys.executable, "-m", "clicklake"]
EVENTS_N = 200_000
KILLS = 12


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    env.update(
        {
            "CLICKLAKE_STORAGE__DATA_DIR": str(data_dir),
            "CLICKLAKE_SPOOL__SEGMENT_MAX_BYTES": str(8 * 1024 * 1024),
            "CLICKLAKE_PIPELINE__COMMIT_MAX_EVENTS": "15000",
            "CLICKLAKE_PIPELINE__READ_CHUNK_BYTES": str(2 * 1024 * 1024),
        }
    )
    return env


def _run_and_kill(env: dict[str, str], rng: random.Random, trigger: bytes | None) -> bool:
    """Start a run; kill it mid-way. Returns False if it finished before the kill."""
    proc = subprocess.Popen(
        [*CLI, "--log-level", "info", "run", "--once"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    deadline = None
    started = False
    buf = b""
    while True:
        if proc.poll() is not None:
            return False
        ready, _, _ = select.select([proc.stderr], [], [], 0.01)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536)
            buf += chunk
            if not started and b"event=start" in buf:
                started = True
                deadline = time.monotonic() + rng.uniform(0.05, 2.5)
            if trigger is not None and trigger in buf:
                if trigger == b"event=commit_begin":
                    time.sleep(rng.uniform(0, 0.3))  # somewhere inside the Parquet writes or the commit
                break
        if trigger is None and deadline is not None and time.monotonic() >= deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    gen = subprocess.run(
        [
            *CLI,
            "generate",
            "--events",
            str(EVENTS_N),
            "--seed",
            "7",
            "--format",
            "spool",
            "--malformed-share",
            "0.03",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert gen.returncode == 0, gen.stderr
    manifest = json.loads((data_dir / "generator-manifest.json").read_text())
    assert manifest["events_total"] >= EVENTS_N

    rng = random.Random(1234)
    kills = 0
    attempts = 0
    while kills < KILLS and attempts < KILLS * 3:
        attempts += 1
        trigger = (None, b"event=commit_begin", b"event=commit table=events")[attempts % 3]
        if _run_and_kill(env, rng, trigger):
            kills += 1
        else:
            break  # everything got processed before we could kill: enough input has been consumed
    assert kills >= 10, f"only {kills} kills landed before the input ran out; the test needs more input"

    final = subprocess.run([*CLI, "run", "--once"], env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr

    settings = load_settings(environ={}, storage={"data_dir": str(data_dir)})
    catalog = open_catalog(settings)
    cols = ["source_stream", "source_offset", "source_index"]
    events = (
        catalog.load_table(table_id(settings, EVENTS)).scan(selected_fields=(*cols, "event_id")).to_arrow()
    )
    failed = (
        catalog.load_table(table_id(settings, FAILED_EVENTS))
        .scan(selected_fields=(*cols, "error_type"))
        .to_arrow()
    )

    # Exactly the manifest's totals: each valid event once (client retries that resend a
    # messageId are dropped by the dedup step, whose window is rebuilt at every restart) ...
    assert manifest["retried"] > 0
    assert events.num_rows == manifest["valid_unique"]
    assert failed.num_rows == manifest["expected_failed_rows"]
    # ... and no source position twice (a duplicate plus a loss would also match the totals).
    for t in (events, failed):
        keys = pc.binary_join_element_wise(
            pc.cast(t["source_stream"], "string"),
            pc.cast(t["source_offset"], "string"),
            pc.cast(t["source_index"], "string"),
            ":",
        )
        assert pc.count_distinct(keys).as_py() == t.num_rows
    # Each malformed kind is accounted for under its reason.
    got = {r["values"]: r["counts"] for r in failed["error_type"].value_counts().to_pylist()}
    assert got == manifest["malformed"]
    # ... with no event id twice.
    assert pc.count_distinct(events["event_id"]).as_py() == events.num_rows
    # Segments every table has passed were deleted; only the newest may remain.
    assert len(list((data_dir / "spool").glob("seg-*.ndjson"))) <= 1
