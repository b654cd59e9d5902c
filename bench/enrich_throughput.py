"""Throughput of the enrichment steps ``url``, ``bots``, ``useragent``, ``referrer``, ``campaign``.

Builds synthetic ``EVENTS_ARROW`` batches (about 100k rows each) with realistic cardinalities:
~2,000 distinct user agents, 200,000 distinct IPs, 5,000 distinct page URLs (~20% with utm
parameters, some with click ids), referrers from a mix of none, search, social, email,
internal and other sites, and Segment contexts of which a few carry ``campaign``. Each batch
goes through the five steps in chain order; the time of each step is summed over all batches,
so the figures include filling the per-value caches (a cold start), as a fresh pipeline would.

Usage: ``.venv/bin/python bench/enrich_throughput.py [--events N] [--batch-size B] [--seed S]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from _common import (
    MB,
    RssSampler,
    machine_info,
    markdown_table,
    text_table,
    utc_now,
    write_results_section,
)
from clicklake.config import load_settings
from clicklake.enrich import bots, campaign, referrer, url, useragent
from clicklake.enrich.base import Step
from clicklake.events.schema import EVENTS_ARROW

SECTION = "enrich_throughput"
PACKAGES = ("clicklake", "pyarrow", "ua-parser", "ua-parser-rs", "ua-parser-builtins", "crawler-user-agents")


def _user_agents(rng: np.random.Generator, n: int = 2_000) -> list[str]:
    """``n`` distinct, plausible user agents: browsers on several OSes, plus ~3% bots."""
    platforms = [
        "Windows NT 10.0; Win64; x64",
        "Macintosh; Intel Mac OS X 10_15_7",
        "X11; Linux x86_64",
        "X11; CrOS x86_64 14541.0.0",
        "Linux; Android 14; Pixel 8",
        "Linux; Android 13; SM-X700",
        "Linux; Android 12; SM-G991B",
    ]
    bots_ = [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "python-requests/2.{v}.0",
        "curl/8.{v}.0",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/{v}.0.0.0 Safari/537.36",
    ]
    out: set[str] = set()
    while len(out) < n:
        r = rng.random()
        v = int(rng.integers(60, 130))
        build = int(rng.integers(0, 6000))
        if r < 0.03:
            out.add(bots_[int(rng.integers(0, len(bots_)))].format(v=v))
        elif r < 0.25:
            ios = f"{int(rng.integers(12, 18))}_{int(rng.integers(0, 7))}"
            device = "iPad; CPU OS" if rng.random() < 0.2 else "iPhone; CPU iPhone OS"
            out.add(
                f"Mozilla/5.0 ({device} {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                f"Version/{ios.split('_')[0]}.0 Mobile/15E{build} Safari/604.1"
            )
        elif r < 0.35:
            plat = platforms[int(rng.integers(0, 3))]
            out.add(f"Mozilla/5.0 ({plat}; rv:{v}.0) Gecko/20100101 Firefox/{v}.0")
        else:
            plat = platforms[int(rng.integers(0, len(platforms)))]
            mobile = " Mobile" if "Android" in plat and "SM-X" not in plat else ""
            out.add(
                f"Mozilla/5.0 ({plat}) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{v}.0.{build}.{int(rng.integers(0, 200))}{mobile} Safari/537.36"
            )
    return sorted(out)


def _page_urls(rng: np.random.Generator, n: int = 5_000) -> list[str]:
    sources = [
        ("google", "cpc"),
        ("facebook", "paid_social"),
        ("newsletter", "email"),
        ("partner", "affiliate"),
        ("bing", "cpc"),
    ]
    out = []
    for i in range(n):
        u = f"https://shop.example/{['p', 'c', 'blog'][i % 3]}/{i}"
        r = rng.random()
        if r < 0.20:
            s, m = sources[int(rng.integers(0, len(sources)))]
            u += f"?utm_source={s}&utm_medium={m}&utm_campaign=c{int(rng.integers(0, 50))}"
        elif r < 0.25:
            u += f"?gclid=G{i}"
        elif r < 0.27:
            u += f"?fbclid=F{i}"
        out.append(u)
    return out


def _referrers(rng: np.random.Generator) -> tuple[list[str | None], list[float]]:
    pool: list[str | None] = [None]
    weights = [0.40]
    groups: list[tuple[list[str], float]] = [
        (
            [f"https://www.google.com/search?q=term+{i}" for i in range(300)] + ["https://www.google.com/"],
            0.22,
        ),
        (["https://www.bing.com/search?q=shoes", "https://duckduckgo.com/", "https://www.google.de/"], 0.04),
        (
            [
                "https://l.facebook.com/",
                "https://t.co/abc",
                "https://www.linkedin.com/",
                "https://www.instagram.com/",
            ],
            0.08,
        ),
        (["https://mail.google.com/", "https://outlook.live.com/mail/0/"], 0.03),
        ([f"https://shop.example/p/{i}" for i in range(500)], 0.15),
        ([f"https://blog{i}.example.org/post/{i}" for i in range(400)], 0.08),
    ]
    for urls, share in groups:
        pool += urls
        weights += [share / len(urls)] * len(urls)
    return pool, weights


def _contexts(n: int = 500) -> list[str]:
    out = [f'{{"library":{{"name":"analytics.js","version":"4.{i}"}},"locale":"en-US"}}' for i in range(n)]
    out += [
        f'{{"campaign":{{"source":"crm","medium":"email","name":"winback{i}"}},"locale":"en-US"}}'
        for i in range(20)
    ]
    return out


def _column(pool: list[str | None], idx: np.ndarray) -> pa.Array:
    return pa.array(pool, pa.large_string()).take(pa.array(idx))


def make_batches(events: int, batch_size: int, seed: int) -> list[pa.RecordBatch]:
    """Synthetic event batches with the cardinalities in the module docstring."""
    rng = np.random.default_rng(seed)
    uas, urls = _user_agents(rng), _page_urls(rng)
    refs, ref_weights = _referrers(rng)
    ref_p = np.array(ref_weights) / sum(ref_weights)
    ctxs = _contexts()
    ips = [f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(200_000)]
    batches = []
    for start in range(0, events, batch_size):
        n = min(batch_size, events - start)
        cols = {
            "page_url": _column(list(urls), rng.integers(0, len(urls), n)),
            "page_referrer": _column(refs, rng.choice(len(refs), n, p=ref_p)),
            "user_agent": _column(list(uas), (rng.zipf(1.3, n) - 1) % len(uas)),
            "user_ipaddress": _column(list(ips), rng.integers(0, len(ips), n)),
            "context": _column(list(ctxs), rng.integers(0, len(ctxs), n)),
        }
        arrays = [cols.get(f.name, pa.nulls(n, f.type)) for f in EVENTS_ARROW]
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=EVENTS_ARROW))
    return batches


def run(events: int, batch_size: int, seed: int) -> tuple[list[tuple[str, float]], int]:
    """Seconds spent in each step over all batches, and the peak RSS of this process."""
    settings = load_settings(environ={})
    batches = make_batches(events, batch_size, seed)
    steps: list[Step] = [m.build(settings) for m in (url, bots, useragent, referrer, campaign)]
    spent = dict.fromkeys((s.name for s in steps), 0.0)
    with RssSampler() as rss:
        for batch in batches:
            current = batch
            for step in steps:
                t0 = time.perf_counter()
                current = step(current)
                spent[step.name] += time.perf_counter() - t0
            assert current.num_rows == batch.num_rows
    return list(spent.items()), rss.peak_rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)

    spent, peak = run(args.events, args.batch_size, args.seed)
    total = sum(s for _, s in spent)
    headers = ["step", "seconds", "events/s"]
    rows = [[name, f"{s:.2f}", f"{args.events / s:,.0f}"] for name, s in spent]
    rows.append(["chain (5 steps)", f"{total:.2f}", f"{args.events / total:,.0f}"])
    print(text_table(headers, rows))
    print(f"peak RSS {peak / MB:,.0f} MB")

    if not args.no_write:
        info = ", ".join(f"{k} {v}" for k, v in machine_info(PACKAGES).items())
        body = "\n".join(
            [
                "## Enrichment throughput: url, bots, useragent, referrer, campaign",
                "",
                f"Run {utc_now()}.",
                "",
                f"- Machine: {info}.",
                f"- Input: {args.events:,} synthetic events in batches of {args.batch_size:,} (seed {args.seed}): "
                "~2,000 distinct user agents (Zipf), 200,000 distinct IPs, 5,000 distinct page URLs "
                "(20% with utm, 5% gclid, 2% fbclid), 40% without referrer.",
                "- Steps run in chain order, in one process; caches start empty, so their filling is "
                "included. Seconds are the time spent inside each step, summed over batches.",
                f"- Peak RSS of the process (batches held in memory): {peak / MB:,.0f} MB. MB = 10^6 bytes.",
                "",
                markdown_table(headers, rows),
                "",
                f"Reproduce: `.venv/bin/python bench/enrich_throughput.py --events {args.events}`.",
            ]
        )
        write_results_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
