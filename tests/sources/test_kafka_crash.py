"""Exactly-once from Kafka: SIGKILL the pipeline ten times, restart the broker mid-stream.

A generated clickstream (collector envelopes, with malformed events and client resends) is
produced to a 3-partition topic on a real broker. ``clicklake run --source kafka --once`` is
killed at least ten times: at random moments, inside commits, and between the commits of the
two tables. Then a continuous ``clicklake run --source kafka`` is given a backlog, the broker is
stopped and started again after its first commit, and the end of the stream is produced after
the restart; it must carry on by itself and take everything in. In the end every valid event is in ``events`` once, every
malformed one in ``failed_events`` once, as the generator's manifest says, no Kafka offset is
used twice, and both tables' checkpoints equal the partitions' high watermarks.
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
from clicklake.lakehouse.checkpoint import read_checkpoint
from tests.sources.fixtures import KafkaBroker

CLI = [sys.executable, "-m", "clicklake"]
EVENTS_N = 20_000
KILLS = 10


def _env(data_dir: Path, broker: KafkaBroker, topic: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    env.update(
        {
            "CLICKLAKE_STORAGE__DATA_DIR": str(data_dir),
            "CLICKLAKE_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
            "CLICKLAKE_KAFKA__TOPIC": topic,
            "CLICKLAKE_KAFKA__GROUP_ID": f"g-{topic}",
            "CLICKLAKE_PIPELINE__COMMIT_MAX_EVENTS": "500",
            "CLICKLAKE_PIPELINE__COMMIT_INTERVAL_S": "1",
        }
    )
    return env


def _run_and_kill(env: dict[str, str], rng: random.Random, trigger: bytes | None) -> bool:
    """Start ``run --source kafka --once`` and SIGKILL it at ``trigger`` (a log line) or, without
    one, at a random moment after it started. Returns False if it finished first."""
    proc = subprocess.Popen(
        [*CLI, "--log-level", "info", "run", "--source", "kafka", "--once"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    deadline = None
    buf = b""
    while True:
        if proc.poll() is not None:
            proc.stderr.close()
            return False
        ready, _, _ = select.select([proc.stderr], [], [], 0.01)
        if ready:
            buf += os.read(proc.stderr.fileno(), 65536)
            if deadline is None and b"event=kafka_assigned" in buf:
                deadline = time.monotonic() + rng.uniform(0.05, 2.0)
            if trigger is not None and trigger in buf:
                if trigger == b"event=commit_begin":
                    time.sleep(rng.uniform(0, 0.3))  # inside the Parquet writes or the commit
                break
        if trigger is None and deadline is not None and time.monotonic() >= deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return True


def _counts(data_dir: Path) -> tuple[int, int]:
    settings = load_settings(environ={}, storage={"data_dir": str(data_dir)})
    catalog = open_catalog(settings, write=False)
    return tuple(  # type: ignore[return-value]
        catalog.load_table(table_id(settings, name)).scan(selected_fields=("event_id",)).to_arrow().num_rows
        for name in (EVENTS, FAILED_EVENTS)
    )


@pytest.mark.integration
@pytest.mark.slow
def test_sigkills_and_a_broker_restart_lose_and_duplicate_nothing(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    gen_dir = tmp_path / "gen"
    gen = subprocess.run(
        # One day of traffic: the dedup window (24 h of event time) then covers the whole stream
        # whatever order the partitions are read in (see the README's Kafka section).
        [
            *CLI,
            "generate",
            "--events",
            str(EVENTS_N),
            "--days",
            "1",
            "--seed",
            "11",
            "--malformed-share",
            "0.03",
        ],
        env={**os.environ, "CLICKLAKE_STORAGE__DATA_DIR": str(gen_dir)},
        capture_output=True,
        text=True,
    )
    assert gen.returncode == 0, gen.stderr
    manifest = json.loads((gen_dir / "generator-manifest.json").read_text())
    lines = [
        line
        for seg in sorted((gen_dir / "spool").glob("seg-*.ndjson"))
        for line in seg.read_bytes().splitlines()
    ]
    first, rest = lines[: len(lines) * 3 // 4], lines[len(lines) * 3 // 4 :]

    topic = kafka_broker.new_topic(3)
    # Fed in slices: a run that reads everything before its kill gets more input, so the kills
    # land whatever the machine's speed.
    slices = [first[i * len(first) // 6 : (i + 1) * len(first) // 6] for i in range(6)]
    kafka_broker.produce(topic, slices.pop(0))
    data_dir = tmp_path / "data"
    env = _env(data_dir, kafka_broker, topic)

    rng = random.Random(99)
    kills = attempts = 0
    while kills < KILLS and attempts < KILLS * 4:
        attempts += 1
        trigger = (None, b"event=commit_begin", b"event=commit table=events")[attempts % 3]
        if _run_and_kill(env, rng, trigger):
            kills += 1
        elif slices:
            kafka_broker.produce(topic, slices.pop(0))
        else:
            break
    assert kills >= KILLS, f"only {kills} kills landed before the input ran out"
    for rest_of_first in slices:
        kafka_broker.produce(topic, rest_of_first)

    # A continuous pipeline across a broker restart: it is in the middle of a backlog when the
    # broker goes away, and the end of the stream is produced after the broker is back.
    kafka_broker.produce(topic, rest[: len(rest) // 2])
    log_path = tmp_path / "continuous.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*CLI, "--log-level", "info", "run", "--source", "kafka"], env=env, stderr=log, stdout=log
        )
        try:
            deadline = time.monotonic() + 120
            while b"event=commit table=" not in log_path.read_bytes():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            kafka_broker.restart()
            kafka_broker.produce(topic, rest[len(rest) // 2 :])
            want = (manifest["valid_unique"], manifest["expected_failed_rows"])
            deadline = time.monotonic() + 240
            while _counts(data_dir) != want:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, (_counts(data_dir), want, log_path.read_text()[-3000:])
                time.sleep(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
    assert rc == 0, log_path.read_text()[-3000:]

    final = subprocess.run(
        [*CLI, "run", "--source", "kafka", "--once"], env=env, capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr

    settings = load_settings(environ={}, storage={"data_dir": str(data_dir)})
    catalog = open_catalog(settings, write=False)
    cols = ("source_stream", "source_offset", "source_index")
    events_t = catalog.load_table(table_id(settings, EVENTS))
    failed_t = catalog.load_table(table_id(settings, FAILED_EVENTS))
    events = events_t.scan(selected_fields=(*cols, "event_id")).to_arrow()
    failed = failed_t.scan(selected_fields=(*cols, "error_type")).to_arrow()

    assert manifest["retried"] > 0
    assert events.num_rows == manifest["valid_unique"]
    assert failed.num_rows == manifest["expected_failed_rows"]
    assert pc.count_distinct(events["event_id"]).as_py() == events.num_rows
    for t in (events, failed):
        keys = pc.binary_join_element_wise(
            pc.cast(t["source_stream"], "string"),
            pc.cast(t["source_offset"], "string"),
            pc.cast(t["source_index"], "string"),
            ":",
        )
        assert pc.count_distinct(keys).as_py() == t.num_rows
    got = {r["values"]: r["counts"] for r in failed["error_type"].value_counts().to_pylist()}
    assert got == manifest["malformed"]
    high = kafka_broker.high_watermarks(topic)
    assert sum(high.values()) == len(lines)
    for table in (events_t, failed_t):
        cp = read_checkpoint(table, settings.pipeline.pipeline_id)
        assert cp is not None and cp.positions == high
