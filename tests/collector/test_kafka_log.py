"""The collector on Kafka (``collector.log = "kafka"``), against a real broker.

``clicklake serve`` (collector + pipeline loop on the Kafka source) runs as a subprocess. It
answers 200 only once the broker acknowledged (acks=all); with the broker stopped it answers
503 with ``Retry-After`` and is not ready; once the broker is back it accepts again by itself.
It is then SIGKILLed right after its last 200, and every event that got a 200 is in ``events``
after ``clicklake run --source kafka --once``, once.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pytest

from clicklake.config import load_settings
from clicklake.lakehouse.catalog import EVENTS, open_catalog, table_id
from clicklake.lakehouse.checkpoint import read_checkpoint
from tests.sources.fixtures import KafkaBroker

CLI = [sys.executable, "-m", "clicklake"]
BASIC = "Basic " + base64.b64encode(b"wk_test:").decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batch(ids: list[str]) -> dict[str, object]:
    return {
        "batch": [
            {"type": "track", "event": "Added", "userId": f"u-{i}", "messageId": i, "properties": {"n": 1}}
            for i in ids
        ]
    }


def _post(client: httpx.Client, ids: list[str]) -> httpx.Response:
    return client.post("/v1/batch", json=_batch(ids), headers={"authorization": BASIC})


@pytest.mark.integration
def test_acknowledged_means_in_kafka_and_a_stopped_broker_gives_503(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    topic = kafka_broker.new_topic(2)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    env.update(
        {
            "CLICKLAKE_STORAGE__DATA_DIR": str(tmp_path / "data"),
            "CLICKLAKE_COLLECTOR__LOG": "kafka",
            "CLICKLAKE_COLLECTOR__WRITE_KEYS": '{"wk_test": "test-app"}',
            "CLICKLAKE_COLLECTOR__RETRY_AFTER_S": "3",
            "CLICKLAKE_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
            "CLICKLAKE_KAFKA__TOPIC": topic,
            "CLICKLAKE_KAFKA__GROUP_ID": f"g-{topic}",
            "CLICKLAKE_KAFKA__PRODUCE_TIMEOUT_S": "2",
            "CLICKLAKE_PIPELINE__COMMIT_INTERVAL_S": "0.5",
        }
    )
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [*CLI, "--log-level", "info", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    accepted: list[str] = []
    refused: list[str] = []
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)

        for _ in range(20):
            ids = [str(uuid.uuid4()) for _ in range(10)]
            assert _post(client, ids).status_code == 200
            accepted += ids

        kafka_broker.stop()
        ids = [str(uuid.uuid4()) for _ in range(10)]
        resp = _post(client, ids)
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "3"
        assert resp.json()["error"] == "kafka_write_failed"
        refused += ids
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "Kafka" in ready.json()["message"]

        kafka_broker.start()
        # As an SDK does: retry the refused batch (same messageIds) until it is accepted.
        deadline = time.monotonic() + 120
        while (resp := _post(client, refused)).status_code != 200:
            assert resp.status_code == 503, resp.text
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        accepted += refused
        for _ in range(20):
            ids = [str(uuid.uuid4()) for _ in range(10)]
            assert _post(client, ids).status_code == 200
            accepted += ids
        metrics = client.get("/metrics").text
        assert 'clicklake_collector_unavailable_total{reason="kafka_write_failed"}' in metrics
    finally:
        # Killed right after its last 200: no shutdown, no final commit.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        client.close()

    final = subprocess.run(
        [*CLI, "run", "--source", "kafka", "--once"], env=env, capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
    events = (
        open_catalog(settings, write=False)
        .load_table(table_id(settings, EVENTS))
        .scan(selected_fields=("event_id", "app_id"))
        .to_arrow()
    )
    # Every acknowledged event, once (the refused batch was resent with its ids: dedup keeps one).
    assert sorted(events["event_id"].to_pylist()) == sorted(accepted)
    assert pc.all(pc.equal(events["app_id"], "test-app")).as_py()


@pytest.mark.integration
def test_sigterm_drains_kafka_and_commits_before_exit(tmp_path: Path, kafka_broker: KafkaBroker) -> None:
    """``clicklake serve`` on Kafka: after SIGTERM every acknowledged event is committed, with no
    further run, and the checkpoint is at the end of every partition."""
    topic = kafka_broker.new_topic(3)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    env.update(
        {
            "CLICKLAKE_STORAGE__DATA_DIR": str(tmp_path / "data"),
            "CLICKLAKE_COLLECTOR__LOG": "kafka",
            "CLICKLAKE_COLLECTOR__WRITE_KEYS": '{"wk_test": "test-app"}',
            "CLICKLAKE_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
            "CLICKLAKE_KAFKA__TOPIC": topic,
            "CLICKLAKE_KAFKA__GROUP_ID": f"g-{topic}",
            # Long enough that nothing is committed on the interval before the SIGTERM.
            "CLICKLAKE_PIPELINE__COMMIT_INTERVAL_S": "600",
        }
    )
    log_path = tmp_path / "serve.log"
    accepted: list[str] = []
    with log_path.open("wb") as log, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        proc = subprocess.Popen(
            [*CLI, "--log-level", "info", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            for _ in range(30):
                ids = [str(uuid.uuid4()) for _ in range(5)]
                assert _post(client, ids).status_code == 200
                accepted += ids
            assert "clicklake_pipeline_kafka_lag_messages" in client.get("/metrics").text
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
    assert rc == 0, log_path.read_text()[-3000:]
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")})
    table = open_catalog(settings, write=False).load_table(table_id(settings, EVENTS))
    assert sorted(table.scan(selected_fields=("event_id",)).to_arrow()["event_id"].to_pylist()) == sorted(
        accepted
    )
    cp = read_checkpoint(table, settings.pipeline.pipeline_id)
    assert cp is not None and cp.positions == kafka_broker.high_watermarks(topic)
