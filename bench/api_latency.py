"""Latency of the dashboard's API calls: p50/p99 per call with 20 concurrent clients over N events.

Steps:

1. Input: ``clicklake generate --format spool --events N --seed S``, ``clicklake run --once``
   (full enrichment chain) and ``clicklake models build`` into ``bench/out/api_latency/data``
   (``--keep`` keeps it, ``--reuse`` reuses it for the same N and seed).
2. ``clicklake serve --no-pipeline`` in its own process on a free 127.0.0.1 port, with one
   read token for every app (``CLICKLAKE_API__TOKENS``).
3. ``--clients`` (20) concurrent clients (asyncio + httpx, one connection each) each load the
   dashboard ``--rounds`` times: the nine calls the page makes (filters, kpis, timeseries,
   pages, breakdown by channel and by device, funnel, live, health). Each round picks its date
   range and channel from a fixed, seeded list, as users changing filters would.
4. Twice: with the answer cache off (``api.cache_entries = 0``: every call computes its answer
   from the rollups) and on (the default: repeated filters are answered from memory until the
   next commit). Each server first gets one untimed dashboard load with a 14-day range that no
   timed call uses: it waits for the serving indexes ``clicklake serve`` builds at start (the
   funnel index, the per-file rollups) and builds the role's session cubes, as a server that has
   been running has done. Its duration is reported as the warm-up.
5. The server's peak RSS (sampled every 100 ms) is reported: the rollups and the funnel index
   live in memory.

``--data DIR`` serves an existing data directory instead (for example the 10M-event input of
``bench/models_build.py``); the server adds its ``audit_log`` table to it.

Target: p99 < 300 ms for every call at 10,000,000 events on the 2-core bench machine.
Results go to stdout and this bench's section of ``bench/RESULTS.md`` (or ``--results FILE``).

Usage::

    .venv/bin/python bench/api_latency.py --events 10000000 --keep
    .venv/bin/python bench/api_latency.py --events 20000          # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

from _common import (
    OUT_DIR,
    RESULTS_MD,
    clicklake_exe,
    machine_info,
    markdown_table,
    run_measured,
    text_table,
    utc_now,
    write_results_section,
)

NAME = "api_latency"
TARGET_P99_MS = 300.0
REFERENCE_EVENTS = 10_000_000
TOKEN = "bench_token"


def prepare(workdir: Path, events: int, seed: int, days: int, reuse: bool) -> dict[str, Any]:
    meta_path = workdir / "input.json"
    if reuse and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["events"] == events and meta["seed"] == seed:
            return {**meta, "reused": True}
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    data = workdir / "data"
    base = [clicklake_exe(), "--data-dir", data]
    t0 = time.perf_counter()
    for args in (
        ["generate", "--events", str(events), "--seed", str(seed), "--days", str(days)],
        ["run", "--once"],
        ["models", "build"],
    ):
        m = run_measured([*base, *args])
        if not m.ok:
            sys.exit(f"clicklake {args[0]} failed: {m.error_line()}\n{m.stderr[-2000:]}")
    meta = {"events": events, "seed": seed, "days": days, "build_s": time.perf_counter() - t0}
    meta_path.write_text(json.dumps(meta))
    return {**meta, "reused": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss) / 1e6
    except psutil.Error:
        return 0.0


def start_server(data: Path, cache_entries: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "CLICKLAKE_API__TOKENS": json.dumps({TOKEN: {"apps": ["*"], "sql": True, "name": "bench"}}),
        "CLICKLAKE_API__CACHE_ENTRIES": str(cache_entries),
    }
    proc = subprocess.Popen(
        [
            clicklake_exe(),
            "--data-dir",
            data,
            "serve",
            "--no-pipeline",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"clicklake serve exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    sys.exit("clicklake serve did not answer /healthz in 120 s")


def calls(start: date, end: date, channel: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    f: dict[str, Any] = {"start": start.isoformat(), "end": end.isoformat()}
    if channel:
        f["channel"] = channel
    funnel = {
        "start": f["start"],
        "end": f["end"],
        "step": ["Product Viewed", "Product Added", "Order Completed"],
        "window": "3600",
    }
    return [
        ("filters", "/api/v1/filters", {}),
        ("kpis", "/api/v1/kpis", f),
        ("timeseries", "/api/v1/timeseries", f),
        ("pages", "/api/v1/pages", {**f, "limit": "15"}),
        ("breakdown channel", "/api/v1/breakdown", {**f, "dimension": "channel", "limit": "10"}),
        ("breakdown device", "/api/v1/breakdown", {**f, "dimension": "device", "limit": "10"}),
        ("funnel", "/api/v1/funnel", funnel),
        ("live", "/api/v1/live", {"minutes": "30"}),
        ("health", "/api/v1/health", f),
    ]


def http_client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=120,
        limits=httpx.Limits(max_connections=1),
    )


async def client(
    c: httpx.AsyncClient,
    rounds: int,
    variants: list[tuple[date, date, str | None]],
    rng: random.Random,
    out: dict[str, list[float]],
) -> list[str]:
    errors: list[str] = []
    async with c:
        for _ in range(rounds):
            start, end, channel = rng.choice(variants)
            for name, path, params in calls(start, end, channel):
                t0 = time.perf_counter()
                r = await c.get(path, params=params)
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    errors.append(f"{name}: {r.status_code} {r.text[:200]}")
                    out.setdefault(f"{name} (failed)", []).append(ms)
                out.setdefault(name, []).append(ms)
    return errors


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


async def warm_up(url: str) -> float:
    """One untimed dashboard load over a range no timed call uses; its seconds."""
    t0 = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600
    ) as c:
        opts = (await c.get("/api/v1/filters")).json()
        last = date.fromisoformat(opts["max_date"])
        for name, path, params in calls(last - timedelta(days=13), last, None):
            r = await c.get(path, params=params)
            if r.status_code != 200:
                sys.exit(f"warm-up call {name} failed: {r.status_code} {r.text[:300]}")
    return time.perf_counter() - t0


async def load(
    url: str, clients: int, rounds: int, seed: int
) -> tuple[dict[str, list[float]], list[str], float]:
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    ) as c:
        opts = (await c.get("/api/v1/filters")).json()
    last = date.fromisoformat(opts["max_date"])
    variants: list[tuple[date, date, str | None]] = []
    for span in (7, 28):
        for shift in (0, 1, 2):
            end = last - timedelta(days=shift)
            for channel in (None, *opts["channels"][:2]):
                variants.append((end - timedelta(days=span - 1), end, channel))
    out: dict[str, list[float]] = {}
    # The clients are made before the clock starts: making one blocks this process's event loop
    # for tens of milliseconds (its SSL context), which the other clients' first calls would
    # otherwise count as server latency.
    made = [http_client(url) for _ in range(clients)]
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(client(c, rounds, variants, random.Random(seed + i), out) for i, c in enumerate(made))
    )
    return out, [e for r in results for e in r], time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--events", type=int, default=REFERENCE_EVENTS, help="events to generate (default 10,000,000)"
    )
    p.add_argument("--days", type=int, default=28, help="days of traffic (default 28)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5, help="dashboard loads per client (default 5)")
    p.add_argument("--keep", action="store_true", help="keep the workdir afterwards (for --reuse)")
    p.add_argument("--reuse", action="store_true", help="reuse the input already built in the workdir")
    p.add_argument(
        "--data",
        type=Path,
        help="serve this existing data directory (built with --events events) instead of generating one",
    )
    p.add_argument("--results", type=Path, default=RESULTS_MD, help="results file (default bench/RESULTS.md)")
    args = p.parse_args()
    workdir = OUT_DIR / NAME
    if args.data is not None:
        if not (args.data / "catalog.db").exists():
            sys.exit(f"--data {args.data}: no catalog.db there; give a clicklake data directory")
        inp = {"events": args.events, "build_s": 0.0, "reused": True, "data": str(args.data)}
        data = args.data
    else:
        inp = prepare(workdir, args.events, args.seed, args.days, args.reuse)
        data = workdir / "data"
    modes: dict[str, dict[str, list[float]]] = {}
    walls: dict[str, float] = {}
    failures: dict[str, int] = {}
    warm: dict[str, float] = {}
    peak_rss: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    try:
        for mode, entries in (("cache off", 0), ("cache on", 512)):
            proc, url = start_server(data, entries)
            peak = [0.0]
            stop = threading.Event()

            def sample(pid: int = proc.pid, peak: list[float] = peak, stop: threading.Event = stop) -> None:
                while not stop.wait(0.1):
                    peak[0] = max(peak[0], rss_mb(pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                warm[mode] = asyncio.run(warm_up(url))
                out, errors, wall = asyncio.run(load(url, args.clients, args.rounds, args.seed))
            finally:
                stop.set()
                sampler.join()
                proc.terminate()
                proc.wait(timeout=120)
            peak_rss[mode] = peak[0]
            if errors:
                print(f"{len(errors)} calls failed ({mode}), e.g. {errors[0]}", file=sys.stderr)
            failures[mode] = len(errors)
            modes[mode] = out
            walls[mode] = wall
    finally:
        if args.data is None and not (args.keep or args.reuse):
            shutil.rmtree(workdir, ignore_errors=True)
    at_reference = args.events >= REFERENCE_EVENTS
    load_after = os.getloadavg()[0]
    headers = [
        "call",
        *(f"{m} {q}" for m in modes for q in ("p50 ms", "p99 ms")),
        *(f"verdict ({m})" for m in modes),
    ]
    rows = []
    names = [c[0] for c in calls(date.today(), date.today(), None)]
    for name in names:
        cells = [name]
        for m in modes:
            # A failed call (statement timeout) counts with the time it took to fail.
            v = modes[m].get(name, []) + modes[m].get(f"{name} (failed)", [])
            cells += [f"{pct(v, 50):.0f}", f"{pct(v, 99):.0f}"]
        verdicts = []
        for m in modes:
            p99 = pct(modes[m][name] + modes[m].get(f"{name} (failed)", []), 99)
            failed = f"{name} (failed)" in modes[m]
            verdicts.append(
                ("pass" if p99 < TARGET_P99_MS and not failed else "miss") if at_reference else "not judged"
            )
        rows.append([*cells, *verdicts])
    n = sum(len(v) for v in modes["cache off"].values())
    load_note = (
        f"load average {load_before:.1f} before, {load_after:.1f} after (2 cores shared with other work)"
    )
    print(text_table(headers, rows))
    info = machine_info(("clicklake", "duckdb", "pyarrow", "pyiceberg", "uvicorn"))
    body = "\n".join(
        [
            "## API latency (`bench/api_latency.py`)",
            "",
            f"{utc_now()}; " + ", ".join(f"{k} {v}" for k, v in info.items()),
            "",
            (
                f"- Input: the existing data directory `{args.data}` ({args.events:,} generated events, "
                "enriched, with models built)."
                if args.data is not None
                else f"- Input: `clicklake generate --events {args.events} --seed {args.seed} --days {args.days}`, "
                f"`run --once`, `models build` ({inp['build_s']:.0f} s"
                + (", reused" if inp["reused"] else "")
                + ")."
            ),
            f"- `clicklake serve --no-pipeline`; {args.clients} concurrent clients x {args.rounds} dashboard loads "
            f"(9 calls each, {n:,} calls per mode); filters drawn from 18 date-range/channel variants.",
            f"- Wall time: cache off {walls['cache off']:.1f} s, cache on {walls['cache on']:.1f} s; "
            f"failed calls (statement timeout): {failures['cache off']} / {failures['cache on']}; {load_note}.",
            f"- Before timing, one untimed dashboard load (14-day range, not among the timed ones) waited for "
            f"the serving indexes built at start: {warm['cache off']:.1f} s / {warm['cache on']:.1f} s. "
            f"Server peak RSS: {peak_rss['cache off']:,.0f} MB / {peak_rss['cache on']:,.0f} MB (cache off / on).",
            "- Cache on is the default (`api.cache_entries = 512`): answers are kept per snapshot, so each "
            "client's first load mostly computes (the 20 first-round calls of each endpoint, over up to 18 "
            "distinct filter variants, run cold and at once) and later loads mostly hit; the p99 of 100 calls "
            "per endpoint is therefore set by cold calls under full concurrency. Cache off (`api.cache_entries = 0`): "
            "every call computes; identical calls that arrive while one computes share its answer.",
            f"- Target: p99 < {TARGET_P99_MS:.0f} ms per call at {REFERENCE_EVENTS:,} events"
            + ("" if at_reference else f" (not judged: this run is at {args.events:,} events)")
            + ".",
            "",
            markdown_table(headers, rows),
            "",
            f"Full run: `.venv/bin/python bench/api_latency.py --events {REFERENCE_EVENTS} --keep`.",
        ]
    )
    write_results_section(NAME, body, args.results)


if __name__ == "__main__":
    main()
