"""Durability: acknowledged means on disk; a full spool answers 503; SIGTERM drains and commits."""

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
import pytest

from clicklake.config import load_settings
from clicklake.engines.local import Pipeline
from clicklake.lakehouse.catalog import EVENTS, open_catalog, table_id
from clicklake.sources.spool import SpoolSource
from tests.collector.conftest import APP_ID, WRITE_KEY, LiveCollector, make_options, spool_lines

BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()

SERVER = """
import sys
from clicklake import logs
from clicklake.config import load_settings
from clicklake.collector.server import serve
logs.configure("info")
settings = load_settings(environ={}, storage={"data_dir": sys.argv[1]},
    collector={"port": int(sys.argv[2]), "write_keys": {"wk_test": "test-app"}},
    pipeline={"commit_interval_s": 0.5})
serve(settings, with_pipeline=sys.argv[3] == "1")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, with_pipeline: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(data_dir), str(port), "1" if with_pipeline else "0"],
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("collector did not start: " + proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]


def test_event_survives_sigkill_right_after_200(tmp_path: Path) -> None:
    proc, url = _start(tmp_path, with_pipeline=False)
    mid = str(uuid.uuid4())
    try:
        r = httpx.post(
            url + "/v1/track",
            json={"messageId": mid, "event": "Paid", "userId": "u"},
            headers={"Authorization": BASIC},
        )
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    lines = spool_lines(tmp_path / "spool")
    assert [line["p"]["messageId"] for line in lines] == [mid]
    assert lines[0]["app"] == APP_ID


def test_serve_with_pipeline_sigterm_drains_and_commits(tmp_path: Path) -> None:
    proc, url = _start(tmp_path, with_pipeline=True)
    mids = [str(uuid.uuid4()) for _ in range(5)]
    try:
        for mid in mids:
            r = httpx.post(
                url + "/v1/t",
                json={"messageId": mid, "event": "E", "userId": "u"},
                headers={"Authorization": BASIC},
            )
            assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        proc.stderr.close()  # type: ignore[union-attr]
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path)})
    table = open_catalog(settings).load_table(table_id(settings, EVENTS))
    # Drained on the way out: everything acknowledged is committed, once.
    committed = table.scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist()
    assert sorted(committed) == sorted(mids)
    # A later run finds nothing left to do.
    Pipeline(settings, SpoolSource(settings.storage.spool_dir)).run(once=True)
    table = open_catalog(settings).load_table(table_id(settings, EVENTS))
    assert sorted(
        table.scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist()
    ) == sorted(mids)


@pytest.fixture
def tiny_spool(tmp_path: Path) -> object:
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_spool_gives_503_and_every_200_is_on_disk(tiny_spool: Path) -> None:
    acked: list[str] = []
    refused = None
    with LiveCollector(make_options(tiny_spool, retry_after_s=3)) as server:
        for _ in range(40):
            mid = str(uuid.uuid4())
            event = {"messageId": mid, "event": "Big", "properties": {"pad": "x" * 6000}}
            r = httpx.post(server.url + "/v1/t", json=event, headers={"Authorization": BASIC})
            if r.status_code == 200:
                acked.append(mid)
                continue
            refused = r
            break
        assert refused is not None, "the 64k spool never filled up"
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "3"
        assert refused.json()["error"] == "spool_write_failed"
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503
        assert "retry-after" in ready.headers
        assert httpx.get(server.url + "/healthz").status_code == 200
    on_disk = [line["p"]["messageId"] for line in spool_lines(tiny_spool)]
    assert acked
    assert on_disk == acked
    assert os.statvfs(tiny_spool).f_blocks > 0
