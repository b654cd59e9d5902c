"""Throughput of the enrichment steps ``geoip``, ``ip_anonymization`` and ``pii``.

Synthetic events in ~100k-row batches, with a realistic cardinality of client addresses
(~200,000 distinct IPs per million events, a tenth of them IPv6, each seen about five times,
across batches). Each step runs alone over all batches, in the
chain's order (geoip on full addresses, then anonymization, then pii on 2 fields:
``user_id`` and ``traits.email``), and its events/s is the number of events over the seconds
spent inside the step.

``geoip`` uses the registry database shipped in the ``iptocc`` wheel (no MaxMind file).

Usage: ``.venv/bin/python bench/enrich_geo_privacy.py [--events 1000000] [--batch 100000]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from _common import machine_info, markdown_table, text_table, utc_now, write_results_section
from clicklake.config import load_settings
from clicklake.enrich import geoip, ip_anonymization, pii
from clicklake.enrich.base import Step
from clicklake.events.schema import EVENTS_ARROW

NAME = "enrich_geo_privacy"
PII_FIELDS = ["user_id", "traits.email"]


def _ip_pool(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct-ish public-looking addresses, 90 % IPv4 and 10 % IPv6."""
    n6 = n // 10
    v4 = rng.integers(1 << 24, 223 << 24, size=n - n6, dtype=np.uint64)
    octets = [(v4 >> s) & 0xFF for s in (24, 16, 8, 0)]
    ipv4 = [f"{a}.{b}.{c}.{d}" for a, b, c, d in zip(*(o.tolist() for o in octets), strict=True)]
    groups = rng.integers(0, 1 << 16, size=(n6, 5))
    prefixes = np.array(["2001:4860", "2a00:1450", "2a02:8100", "2400:cb00", "2c0f:fb50"])[
        rng.integers(0, 5, n6)
    ]
    ipv6 = [
        f"{p}:{g[0]:x}:{g[1]:x}::{g[2]:x}:{g[3]:x}"
        for p, g in zip(prefixes.tolist(), groups.tolist(), strict=True)
    ]
    return np.array(ipv4 + ipv6, dtype=object)


def make_batches(events: int, batch: int, seed: int = 42) -> list[pa.RecordBatch]:
    """Synthetic event batches with ``user_ipaddress``, ``user_id``, ``user_key`` and ``traits``.

    Args:
        events: Total events.
        batch: Rows per batch.
        seed: Random seed.

    Returns:
        The batches, with the full ``EVENTS_ARROW`` schema (unused columns null).
    """
    rng = np.random.default_rng(seed)
    distinct_ips = max(1, events // 5)
    pool = _ip_pool(distinct_ips, rng)
    users = max(1, events // 10)
    out = []
    for start in range(0, events, batch):
        n = min(batch, events - start)
        # Uniform over the pool: each address shows up ~5 times, across different batches.
        ip_idx = rng.integers(0, distinct_ips, n)
        user_idx = rng.integers(0, users, n)
        user_ids = [f"user-{u}" for u in user_idx.tolist()]
        anon = rng.random(n) < 0.4
        user_col = [None if a else u for a, u in zip(anon.tolist(), user_ids, strict=True)]
        has_email = rng.random(n) < 0.3
        traits = [
            f'{{"email":"{u}@example.com","plan":"pro","name":"N {u}"}}' if e else '{"plan":"free"}'
            for u, e in zip(user_ids, has_email.tolist(), strict=True)
        ]
        cols = {
            name: pa.nulls(n, type=field.type)
            for name, field in zip(EVENTS_ARROW.names, EVENTS_ARROW, strict=True)
        }
        cols["user_ipaddress"] = pa.array(pool[ip_idx].tolist(), pa.large_string())
        cols["user_id"] = pa.array(user_col, pa.large_string())
        cols["anonymous_id"] = pa.array([f"anon-{u}" for u in user_idx.tolist()], pa.large_string())
        cols["user_key"] = pa.array(
            [u or f"anon-{i}" for u, i in zip(user_col, user_idx.tolist(), strict=True)], pa.large_string()
        )
        cols["traits"] = pa.array(traits, pa.large_string())
        out.append(pa.RecordBatch.from_arrays(list(cols.values()), schema=EVENTS_ARROW))
    return out


def time_step(step: Step, batches: list[pa.RecordBatch]) -> tuple[float, list[pa.RecordBatch]]:
    """Seconds spent inside ``step`` over all batches, and its outputs."""
    outputs = []
    spent = 0.0
    for b in batches:
        t0 = time.perf_counter()
        outputs.append(step(b))
        spent += time.perf_counter() - t0
    return spent, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()

    settings = load_settings(
        environ={},
        enrich={"pii": {"enabled": True, "salt": "bench-salt", "fields": PII_FIELDS}},
    )
    t0 = time.perf_counter()
    batches = make_batches(args.events, args.batch, args.seed)
    gen_s = time.perf_counter() - t0
    distinct = len(set().union(*(set(b.column("user_ipaddress").to_pylist()) for b in batches)))

    rows = []
    current = batches
    for label, module in (("geoip", geoip), ("ip_anonymization", ip_anonymization), ("pii (2 fields)", pii)):
        t0 = time.perf_counter()
        step = module.build(settings)
        build_s = time.perf_counter() - t0
        spent, current = time_step(step, current)
        rows.append([label, f"{build_s:.2f}", f"{spent:.2f}", f"{args.events / spent:,.0f}"])

    headers = ["step", "build s", "seconds", "events/s"]
    print(text_table(headers, rows))
    info = machine_info(("clicklake", "pyarrow", "duckdb", "iptocc"))
    body = "\n".join(
        [
            "## Enrichment: geoip, ip_anonymization, pii",
            "",
            f"Run {utc_now()}.",
            "",
            "- Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
            f"- Input: {args.events:,} synthetic events in {len(batches)} batches of up to {args.batch:,} rows, "
            f"{distinct:,} distinct IPs (10 % IPv6, each seen ~5 times across batches), built in {gen_s:.1f} s (not counted).",
            "- geoip: country from the registry table shipped in `iptocc`, no MaxMind file. "
            f"pii: HMAC-SHA256 of {', '.join(f'`{f}`' for f in PII_FIELDS)} (30 % of events carry an email).",
            "- seconds: time spent inside the step over all batches, caches cold at the start; "
            "build s: building the step.",
            "",
            markdown_table(headers, rows),
            "",
            f"Reproduce: `.venv/bin/python bench/enrich_geo_privacy.py --events {args.events}`.",
        ]
    )
    if not args.no_write:
        write_results_section(NAME, body)


if __name__ == "__main__":
    main()
