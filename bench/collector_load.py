"""Collector load: batches of 20 events over keep-alive HTTP/1.1 on loopback, durably acknowledged.

The collector (spool log, no pipeline) runs in one process, the load generator (raw asyncio
sockets, pre-built requests) in another. Reports events/s acknowledged with 200, p50/p99
request latency and the collector's peak RSS; writes its section of bench/RESULTS.md.

    .venv/bin/python bench/collector_load.py [--seconds 60] [--connections 64]
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psutil

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, utc_now, write_results_section

SERVER = """
import sys
from clicklake.config import load_settings
from clicklake.collector.server import serve
settings = load_settings(environ={}, storage={"data_dir": sys.argv[1]},
    collector={"port": int(sys.argv[2]), "write_keys": {"wk_bench": "bench"}})
serve(settings)
"""
LOADGEN = """
import asyncio, json, sys, time
host, port, seconds, conns, req = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5].encode('latin-1')
lat, ok, bad = [], 0, 0
async def worker(deadline):
    global ok, bad
    r, w = await asyncio.open_connection(host, port)
    while time.monotonic() < deadline:
        t0 = time.perf_counter(); w.write(req); await w.drain()
        head = await r.readuntil(b"\\r\\n\\r\\n")
        n = int([l for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
        await r.readexactly(n)
        lat.append(time.perf_counter() - t0)
        if head.startswith(b"HTTP/1.1 200"): ok += 1
        else: bad += 1
    w.close()
async def main():
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(worker(deadline) for _ in range(conns)))
t0 = time.monotonic(); asyncio.run(main()); wall = time.monotonic() - t0
lat.sort()
print(json.dumps({"ok": ok, "bad": bad, "wall": wall, "p50": lat[len(lat)//2], "p99": lat[int(len(lat)*0.99)]}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int) -> str:
    batch = [
        {
            "type": "track",
            "messageId": str(uuid.uuid4()),
            "userId": f"u{i}",
            "event": "Product Viewed",
            "properties": {"sku": f"sku-{i}", "price": 19.99},
            "context": {"page": {"url": "https://shop.example/p"}},
            "timestamp": "2026-01-01T00:00:00Z",
        }
        for i in range(20)
    ]
    body = json.dumps({"batch": batch})
    auth = base64.b64encode(b"wk_bench:").decode()
    return (
        f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen([sys.executable, "-c", SERVER, data, str(port)])
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            proc = psutil.Process(server.pid)
            peak = [0]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], proc.memory_info().rss)
                    stop.wait(0.2)

            threading.Thread(target=sample, daemon=True).start()
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    LOADGEN,
                    "127.0.0.1",
                    str(port),
                    str(args.seconds),
                    str(args.connections),
                    _request(port),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            stop.set()
        finally:
            server.terminate()
            server.wait(timeout=60)
    res = json.loads(out.stdout)
    eps = res["ok"] * 20 / res["wall"]
    row = [
        f"{args.seconds:.0f}",
        str(args.connections),
        f"{eps:,.0f}",
        f"{res['p50'] * 1000:.1f}",
        f"{res['p99'] * 1000:.1f}",
        str(res["bad"]),
        f"{peak[0] / 1e6:.0f}",
    ]
    headers = [
        "seconds",
        "connections",
        "events/s acked",
        "p50 ms",
        "p99 ms",
        "non-200",
        "collector peak RSS MB",
    ]
    print(" | ".join(f"{h}={v}" for h, v in zip(headers, row, strict=True)))
    info = machine_info(("clicklake", "uvicorn", "httptools", "uvloop", "orjson"))
    body = (
        f"## Collector load (spool, group commit)\n\n{utc_now()}; "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + "\n\nBatches of 20 events, keep-alive HTTP/1.1 on loopback, load generator on the same cores. "
        "Target: 50,000 events/s, p99 < 100 ms.\n\n" + markdown_table(headers, [row])
    )
    write_results_section("collector_load", body)


if __name__ == "__main__":
    main()
