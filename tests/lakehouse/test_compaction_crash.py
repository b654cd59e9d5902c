"""Compaction running concurrently with the pipeline, both SIGKILLed at random moments.

The pipeline (``clicklake run --once``) and ``clicklake maintain compact`` run as real
subprocesses on the same tables, killed several times each. Afterwards: every event of the
generator's manifest is in ``events`` exactly once, a last compaction leaves one file per
partition (the target holds a whole partition), `clicklake sql` answers the same before and
after it, and orphan removal plus snapshot expiry keep every remaining snapshot readable.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from clicklake.config import Settings, load_settings
from clicklake.lakehouse.catalog import EVENTS, open_catalog, table_id
from clicklake.lakehouse.maintenance import ExpireResult, OrphanResult, _live_files, _strip_scheme, run_action

CLI = [sys.executable, "-m", "clicklake"]
EVENTS_N = 12_000
ROUNDS = 4
SQL = (
    "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, count(DISTINCT user_key) AS users, "
    "min(derived_tstamp) AS first, max(derived_tstamp) AS last, sum(source_offset) AS offsets FROM events"
)


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    env.update(
        {
            "CLICKLAKE_STORAGE__DATA_DIR": str(data_dir),
            "CLICKLAKE_PIPELINE__EVENT_BUCKETS": "4",
            "CLICKLAKE_PIPELINE__COMMIT_MAX_EVENTS": "1000",
            "CLICKLAKE_PIPELINE__READ_CHUNK_BYTES": str(128 * 1024),
            "CLICKLAKE_MAINTENANCE__MIN_INPUT_FILES": "2",
            # Dedup stays (the manifest's totals count on it); the heavier lookups are not
            # what this test is about.
            **{
                f"CLICKLAKE_ENRICH__{s}__ENABLED": "false" for s in ("USERAGENT", "GEOIP", "REFERRER", "BOTS")
            },
            "CLICKLAKE_MAINTENANCE__SMALL_FILE_BYTES": str(64 * 1024 * 1024),
        }
    )
    return env


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "--log-level", "info", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


_COMMITTED = re.compile(rb"event=commit table=events snapshot=\d+ rows=[1-9]")


def _kill_later(procs: list[subprocess.Popen[bytes]], rng: random.Random) -> int:
    """SIGKILL every process still running at a random moment after the pipeline's first or
    second commit of events (the compactor right after one of its own commits, half of the
    time). Returns how many processes were killed."""
    pipeline, compactor = procs
    bufs = {id(p): b"" for p in procs}
    deadline: float | None = None
    commits_before_kill = rng.choice((1, 2))
    after_commit = rng.random() < 0.5
    killed = 0
    while any(p.poll() is None for p in procs):
        streams = [p.stderr for p in procs if p.poll() is None and p.stderr is not None]
        ready, _, _ = select.select(streams, [], [], 0.01)
        for s in ready:
            owner = next(p for p in procs if p.stderr is s)
            bufs[id(owner)] += os.read(s.fileno(), 65536)
        if deadline is None and len(_COMMITTED.findall(bufs[id(pipeline)])) >= commits_before_kill:
            deadline = time.monotonic() + rng.uniform(0.0, 1.5)
        if after_commit and compactor.poll() is None and b"event=compacted" in bufs[id(compactor)]:
            compactor.send_signal(signal.SIGKILL)
            killed += 1
        if deadline is not None and time.monotonic() >= deadline:
            break
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
    for p in procs:
        p.wait()
        assert p.stderr is not None
        p.stderr.close()
    return killed


def _sql(data_dir: Path) -> list[dict[str, object]]:
    """What `clicklake sql` answers (its function, in-process: a CLI start costs seconds)."""
    from clicklake.query import run_sql

    rows: list[dict[str, object]] = run_sql(_settings(data_dir), SQL).to_pylist()
    return rows


def _settings(data_dir: Path, **maintenance: object) -> Settings:
    return load_settings(
        environ={},
        storage={"data_dir": str(data_dir)},
        pipeline={"event_buckets": 4},
        maintenance={"min_input_files": 2, "small_file_bytes": 64 * 1024 * 1024, **maintenance},
    )


def _rows(data_dir: Path) -> Counter[tuple[str, str, int, int]]:
    settings = _settings(data_dir)
    table = open_catalog(settings).load_table(table_id(settings, EVENTS))
    cols = ("event_id", "source_stream", "source_offset", "source_index")
    t = table.scan(selected_fields=cols).to_arrow()
    return Counter(zip(*(t.column(c).to_pylist() for c in cols), strict=True))


@pytest.mark.slow
def test_compaction_and_pipeline_under_sigkill_lose_and_double_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    gen = subprocess.run(
        [*CLI, "generate", "--events", str(EVENTS_N), "--seed", "11", "--days", "3"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert gen.returncode == 0, gen.stderr
    manifest = json.loads((data_dir / "generator-manifest.json").read_text())

    rng = random.Random(99)
    kills = 0
    for _ in range(ROUNDS):
        kills += _kill_later([_start(env, "run", "--once"), _start(env, "maintain", "compact")], rng)
    assert kills >= ROUNDS

    # The pipeline finishes while a compaction started after its first commit runs beside it
    # to its end (lost races on either side are retried).
    pipeline = _start(env, "run", "--once")
    assert pipeline.stderr is not None
    log = b""
    while not _COMMITTED.search(log) and pipeline.poll() is None:
        log += pipeline.stderr.readline()
    compactor = _start(env, "maintain", "compact")
    log += pipeline.stderr.read()
    pipeline.wait()
    pipeline.stderr.close()
    _, err = compactor.communicate(timeout=600)
    assert pipeline.returncode == 0, log.decode()
    assert compactor.returncode == 0, err.decode()
    assert b"event=compacted" in err  # it did rewrite partitions while the pipeline committed
    rows = _rows(data_dir)
    assert sum(rows.values()) == manifest["valid_unique"]
    assert max(rows.values()) == 1
    assert len({k[0] for k in rows}) == len(rows)  # no event id twice
    answer = _sql(data_dir)

    final = run_action(_settings(data_dir), "compact", ["events"])[0]
    assert _rows(data_dir) == rows
    assert _sql(data_dir) == answer
    settings = _settings(data_dir)
    table = open_catalog(settings).load_table(table_id(settings, EVENTS))
    files = _live_files(table)
    partitions = {(f.spec_id, tuple(f.partition[i] for i in range(len(f.partition)))) for f in files}
    listing = "\n".join(
        f"spec={f.spec_id} partition={tuple(f.partition[i] for i in range(len(f.partition)))} "
        f"content={f.content} bytes={f.file_size_in_bytes} rows={f.record_count} {f.file_path}"
        for f in sorted(files, key=lambda f: (f.spec_id, repr(f.partition), f.file_path))
    )
    assert len(files) == len(partitions), f"final compaction: {final}\nlive files:\n{listing}"

    # Killed compactions left files no snapshot references: orphan removal takes them (nothing
    # runs now, so a zero safety age is safe), expiry the replaced small files; every remaining
    # snapshot still reads in full and the answers stay the same.
    cleanup = _settings(data_dir, orphan_min_age_hours=0, snapshot_max_age_hours=0, keep_last_snapshots=1)
    orphans = run_action(cleanup, "orphans", ["events"])[0]
    assert isinstance(orphans, OrphanResult)
    expired = run_action(cleanup, "expire", ["events"])[0]
    assert isinstance(expired, ExpireResult) and expired.snapshots_expired > 0
    table = table.refresh()
    for snap in table.metadata.snapshots:
        for f in _live_files(table, snap):
            assert Path(_strip_scheme(f.file_path)).exists()
        assert table.scan(snapshot_id=snap.snapshot_id).to_arrow().num_rows == int(
            snap.summary["total-records"]
        )  # type: ignore[index]
    assert _sql(data_dir) == answer
    again = subprocess.run([*CLI, "run", "--once"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "committed 0 events" in again.stdout
    assert _rows(data_dir) == rows
