"""The dashboard and API share the collector's server; the audit trail is written before it exits."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from clicklake.collector.app import CollectorApp
from clicklake.collector.options import CollectorOptions
from clicklake.collector.server import bind_socket, uvicorn_config
from clicklake.query import run_sql
from clicklake.web.app import with_web
from tests.web.fixtures import Lake, lake_settings


def test_collector_dashboard_and_api_on_one_port_and_audit_flushed_at_shutdown(lake: Lake) -> None:
    # An audit interval far longer than the test: only the shutdown flush can write the row.
    settings = lake_settings(lake.settings.storage.data_dir, audit_flush_s=3600)
    app = with_web(CollectorApp(CollectorOptions.from_settings(settings)), settings)
    sock = bind_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, loop="asyncio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "server did not start"
        time.sleep(0.01)
    marker = f"mount-test-{time.time_ns()}"
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/healthz").json() == {"status": "ok"}
            assert c.get("/").status_code == 200 and "<title>clicklake</title>" in c.get("/").text
            assert c.get("/metrics").status_code == 200
            me = c.get(f"/api/v1/me?{marker}", headers={"Authorization": "Bearer tok_shop"})
            assert me.status_code == 200 and me.json()["apps"] == ["demo-shop"]
            track = c.post(
                "/v1/track",
                json={"type": "track", "event": "X", "userId": "u1", "messageId": marker},
                auth=("wk_demo", ""),
            )
            assert track.status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
    rows = run_sql(
        settings, f"SELECT endpoint, status FROM audit_log WHERE statement = '{marker}'"
    ).to_pylist()
    assert rows == [{"endpoint": "GET /api/v1/me", "status": 200}]
