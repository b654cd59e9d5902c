"""Collector load on Kafka: the same load as bench/collector_load.py, with ``collector.log = "kafka"``.

A real single-node broker (deploy/kafka/kafka.sh, on free ports in a temporary directory) takes
the collector's messages with ``acks=all`` from an idempotent producer; a 200 means the broker
acknowledged. In the same run, for reference, the same load against the spool collector
(group commit + fsync). The load generator (raw asyncio sockets, batches of 20 events) runs in
its own process on the same cores. Reports events/s acknowledged, p50/p99 latency, the
collector's peak RSS (and the broker's), and writes its section of bench/RESULTS.md.

    .venv/bin/python bench/collector_load_kafka.py [--seconds 60] [--connections 64]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, utc_now, write_results_section
from collector_load import LOADGEN, _free_port, _request

HERE = Path(__file__).resolve().parent
KAFKA_SH = HERE.parent / "deploy" / "kafka" / "kafka.sh"

SERVER = """
import sys
from clicklake.config import load_settings
from clicklake.collector.server import serve
log, bootstrap = sys.argv[3], sys.argv[4]
settings = load_settings(environ={}, storage={"data_dir": sys.argv[1]},
    collector={"port": int(sys.argv[2]), "write_keys": {"wk_bench": "bench"}, "log": log},
    kafka={"bootstrap_servers": bootstrap or "127.0.0.1:9092", "topic": "bench", "partitions": 6})
serve(settings)
"""


def _peak_rss(pids: list[int], stop: threading.Event, out: dict[int, int]) -> None:
    procs = [psutil.Process(p) for p in pids]
    while not stop.is_set():
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                out[p.pid] = max(out.get(p.pid, 0), p.memory_info().rss)
        stop.wait(0.2)


def _run(log: str, bootstrap: str, broker_pid: int | None, seconds: float, conns: int) -> list[str]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen([sys.executable, "-c", SERVER, data, str(port), log, bootstrap])
        try:
            for _ in range(1200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None:
                        raise SystemExit(f"the {log} collector exited with {server.returncode}") from None
                    time.sleep(0.05)
            peaks: dict[int, int] = {}
            stop = threading.Event()
            pids = [server.pid] + ([broker_pid] if broker_pid else [])
            threading.Thread(target=_peak_rss, args=(pids, stop, peaks), daemon=True).start()
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    LOADGEN,
                    "127.0.0.1",
                    str(port),
                    str(seconds),
                    str(conns),
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
    return [
        f"collector → {log}",
        f"{seconds:.0f}",
        str(conns),
        f"{eps:,.0f}",
        f"{res['p50'] * 1000:.1f}",
        f"{res['p99'] * 1000:.1f}",
        str(res["bad"]),
        f"{peaks.get(server.pid, 0) / 1e6:.0f}",
        f"{peaks[broker_pid] / 1e6:,.0f}" if broker_pid else "-",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as broker_dir:
        started = subprocess.run(
            ["bash", str(KAFKA_SH), "start", broker_dir, "0", "0"], capture_output=True, text=True
        )
        if started.returncode != 0:
            raise SystemExit(f"the broker did not start: {started.stderr}")
        bootstrap = re.search(r"bootstrap=(\S+)", started.stdout).group(1)  # type: ignore[union-attr]
        broker_pid = int(re.search(r"pid=(\d+)", started.stdout).group(1))  # type: ignore[union-attr]
        try:
            rows.append(_run("kafka", bootstrap, broker_pid, args.seconds, args.connections))
        finally:
            subprocess.run(["bash", str(KAFKA_SH), "stop", broker_dir], check=False)
    rows.append(_run("spool", "", None, args.seconds, args.connections))
    headers = [
        "log",
        "seconds",
        "connections",
        "events/s acked",
        "p50 ms",
        "p99 ms",
        "non-200",
        "collector peak RSS MB",
        "broker peak RSS MB",
    ]
    for row in rows:
        print(" | ".join(f"{h}={v}" for h, v in zip(headers, row, strict=True)))
    info = machine_info(("clicklake", "uvicorn", "httptools", "uvloop", "orjson", "confluent-kafka"))
    body = (
        f"## Collector load on Kafka (acks=all, idempotent producer)\n\n{utc_now()}; "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + "\n\nBatches of 20 events, keep-alive HTTP/1.1 on loopback, load generator and a single "
        "Kafka 4.1.1 broker (KRaft, `deploy/kafka/kafka.sh`, heap 512 MB, 6 partitions) on the same "
        "2 cores. A 200 means every message of the request's group was acknowledged by the broker "
        "(acks=all). The spool row is the same load in the same run, for reference. "
        "Target: 50,000 events/s, p99 < 100 ms.\n\n" + markdown_table(headers, rows)
    )
    write_results_section("collector_load_kafka", body)


if __name__ == "__main__":
    main()
