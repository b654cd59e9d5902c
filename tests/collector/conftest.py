"""Fixtures of the collector tests: a live collector on 127.0.0.1 in a thread, spool readers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn

from clicklake.collector.app import CollectorApp
from clicklake.collector.options import CollectorOptions
from clicklake.collector.server import bind_socket, uvicorn_config
from clicklake.sources.spool import list_segments

WRITE_KEY = "wk_test"
APP_ID = "test-app"
ALLOWED_ORIGIN = "https://shop.example"


def make_options(spool_dir: Path, **overrides: Any) -> CollectorOptions:
    values: dict[str, Any] = {
        "spool_dir": spool_dir,
        "write_keys": {WRITE_KEY: APP_ID},
        "max_event_bytes": 8 * 1024,
        "max_request_bytes": 64 * 1024,
        "cors_origins": (ALLOWED_ORIGIN,),
    }
    values.update(overrides)
    return CollectorOptions(**values)


class LiveCollector:
    """A collector app served by uvicorn in a background thread."""

    def __init__(self, options: CollectorOptions):
        self.app = CollectorApp(options)
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(self.app, "127.0.0.1", self.port, loop="asyncio"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveCollector:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("collector did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def spool_lines(spool_dir: Path) -> list[dict[str, Any]]:
    """Every complete line of every spool segment, parsed."""
    out = []
    for name in list_segments(spool_dir):
        for line in (spool_dir / name).read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                out.append(orjson.loads(line))
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCollector]:
    spool = tmp_path_factory.mktemp("spool")
    with LiveCollector(make_options(spool)) as server:
        yield server
