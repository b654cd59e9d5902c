"""A small two-app lakehouse (generated, piped, modelled once per session) and a served app."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn

from clicklake.config import Settings, load_settings

#: Tokens of the test lakehouse: two tenants, an analyst of both, an admin, an expired one.
TOKENS = {
    "tok_shop": {"apps": ["demo-shop"], "sql": True, "name": "shop-analyst"},
    "tok_blog": {"apps": ["other-blog"], "sql": False, "name": "blog-viewer"},
    "tok_pii": {"apps": ["demo-shop"], "sql": True, "pii": True, "name": "shop-pii"},
    "tok_admin": {"apps": ["*"], "sql": True, "pii": True, "admin": True, "name": "admin"},
    "tok_expired": {"apps": ["*"], "sql": True, "name": "old", "expires": "2020-01-01T00:00:00Z"},
}
END = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Lake:
    settings: Settings
    end: datetime


def lake_settings(data_dir: Path, **api: object) -> Settings:
    return load_settings(
        environ={},
        storage={"data_dir": str(data_dir)},
        api={"tokens": TOKENS, "audit_flush_s": 0.2, "refresh_s": 0.5, "statement_timeout_s": 5.0, **api},
    )


@pytest.fixture(scope="session")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """4,000 events of ``demo-shop`` and 1,500 of ``other-blog`` over 7 days, with models built."""
    from clicklake.engines.local import Pipeline
    from clicklake.models.runner import build_models
    from clicklake.sources.generator import generate
    from clicklake.sources.spool import SpoolSource

    settings = lake_settings(tmp_path_factory.mktemp("lake") / "data")
    spool = settings.storage.spool_dir
    generate(spool, events=4000, days=7, seed=1, fmt="spool", app_id="demo-shop", end=END)
    generate(spool, events=1500, days=7, seed=2, fmt="spool", app_id="other-blog", end=END)
    Pipeline(settings, SpoolSource(spool)).run(once=True)
    build_models(settings)
    return Lake(settings, END)


@dataclass
class Served:
    url: str
    settings: Settings
    server: uvicorn.Server

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="session")
def served(lake: Lake) -> Iterator[Served]:
    """The web app (dashboard + API) on a free 127.0.0.1 port, over the session's lakehouse."""
    from clicklake.collector.server import bind_socket
    from clicklake.web.app import WebApp

    app = WebApp(lake.settings)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if server.started:
            break
        threading.Event().wait(0.05)
    yield Served(url, lake.settings, server)
    server.should_exit = True
    thread.join(timeout=60)
    sock.close()


def day(d: datetime, delta: int = 0) -> str:
    return (d + timedelta(days=delta)).date().isoformat()
