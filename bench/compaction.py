"""Compaction of an ``events`` table of many small files, against the pyarrow floor.

The input table is built fast, without the pipeline: synthetic events (the full ``events``
schema, realistic strings and JSON) are written with clicklake's own partitioned writer and
committed as Iceberg appends, each append touching every partition (days x user buckets), so
the table holds ``--files`` small files in ``days x buckets`` partitions.

Then, in the same run and on the same files (page cache warmed first for both):

- **floor**: pyarrow reads each partition's Parquet files and writes them back as one zstd
  Parquet file per partition. No Iceberg, no schema projection, no commit.
- **clicklake**: ``clicklake.lakehouse.maintenance.compact``: plans from the manifests, reads
  through PyIceberg's projection, writes target-size files and commits one ``replace`` snapshot
  per partition, then merges manifests.

MB/s is input (small-file) bytes over wall seconds. The row multiset is checked unchanged.

Usage: ``.venv/bin/python bench/compaction.py [--events 10000000 --files 5000] [--small]``
(``--small``: 200,000 events in 320 files, for a quick check).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from _common import (
    MB,
    OUT_DIR,
    RssSampler,
    machine_info,
    markdown_table,
    text_table,
    utc_now,
    write_results_section,
)
from clicklake.config import load_settings
from clicklake.events.schema import EVENTS_ARROW
from clicklake.lakehouse.catalog import EVENTS, ensure_tables, ingest_tables, open_catalog
from clicklake.lakehouse.maintenance import _live_files, _strip_scheme, compact
from clicklake.lakehouse.write import write_data_files

NAME = "compaction"
DAY0_US = 1_795_651_200_000_000  # 2026-11-26T00:00:00Z
DAY_US = 86_400_000_000
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0 Mobile Safari/537.36",
]
PATHS = ["/", "/products", "/products/shoes", "/products/hats", "/cart", "/checkout", "/blog/how-to-choose"]
NAMES = ["Product Viewed", "Product Added", "Order Completed", "Signed Up", None]


def _strings(prefix: str, values: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(values), pa.string()), "").cast(
        pa.large_string()
    )


def _pick(options: list[str | None], idx: np.ndarray) -> pa.Array:
    return pa.array(np.array(options, dtype=object)[idx], pa.large_string())


def make_batch(start: int, n: int, days: int, rng: np.random.Generator) -> pa.Table:
    """``n`` synthetic events with ids ``start..start+n``, spread over ``days`` days and 200k users."""
    ids = np.arange(start, start + n)
    users = rng.integers(0, 200_000, n)
    ts = DAY0_US - rng.integers(0, days * DAY_US, n)
    path_idx = rng.integers(0, len(PATHS), n)
    cols: dict[str, pa.Array] = {f.name: pa.nulls(n, f.type) for f in EVENTS_ARROW}
    cols["event_id"] = _strings("0b6f1c2e-5d7a-4e8b-9c3d-", ids)
    cols["event_type"] = _pick(["track", "page", "page", "identify"], rng.integers(0, 4, n))
    cols["event_name"] = _pick(NAMES, rng.integers(0, len(NAMES), n))
    cols["app_id"] = pa.array(["demo-shop"] * n, pa.large_string())
    cols["anonymous_id"] = _strings("anon-", users)
    cols["user_key"] = cols["anonymous_id"]
    cols["session_id"] = _strings("s-", users * 10 + rng.integers(0, 3, n))
    t = pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    for c in ("dvce_created_tstamp", "dvce_sent_tstamp", "collector_tstamp", "derived_tstamp", "load_tstamp"):
        cols[c] = t
    cols["page_path"] = _pick(PATHS, path_idx)  # type: ignore[arg-type]
    cols["page_url"] = pc.binary_join_element_wise(
        "https://shop.example", cols["page_path"].cast(pa.string()), ""
    ).cast(pa.large_string())
    cols["page_title"] = _pick(["Home", "Products", "Shoes", "Hats", "Cart", "Checkout", "Blog"], path_idx)  # type: ignore[arg-type]
    cols["user_agent"] = _pick(UAS, rng.integers(0, len(UAS), n))  # type: ignore[arg-type]
    cols["user_ipaddress"] = _strings("203.0.113.", rng.integers(0, 255, n))
    cols["properties"] = pc.binary_join_element_wise(
        '{"price":',
        pc.cast(pa.array(rng.integers(100, 20000, n) / 100), pa.string()),
        ',"currency":"EUR"}',
        "",
    ).cast(pa.large_string())
    cols["context"] = pa.array(
        ['{"library":{"name":"analytics.js","version":"5.2.0"}}'] * n, pa.large_string()
    )
    cols["source_stream"] = pa.array(["seg-0000000000000001.ndjson"] * n, pa.large_string())
    cols["source_offset"] = pa.array(ids * 300, pa.int64())
    cols["source_index"] = pa.array(np.zeros(n, dtype=np.int32))
    return pa.table([cols[f.name] for f in EVENTS_ARROW], schema=EVENTS_ARROW)


def build_table(data_dir: Path, events: int, files: int, days: int, buckets: int) -> tuple[object, float]:
    """An ``events`` table of about ``files`` small files; returns ``(settings, seconds)``."""
    settings = load_settings(
        environ={},
        storage={"data_dir": str(data_dir)},
        pipeline={"event_buckets": buckets},
        maintenance={"min_input_files": 2},
    )
    table = ensure_tables(open_catalog(settings), settings, ingest_tables(settings))[EVENTS]
    appends = max(1, -(-files // (days * buckets)))  # at least ``files`` files
    per_append = events // appends
    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    for i in range(appends):
        n = per_append if i < appends - 1 else events - per_append * (appends - 1)
        df = make_batch(i * per_append, n, days, rng)
        new = write_data_files(table, df)
        with table.transaction() as txn, txn.update_snapshot().fast_append() as fa:
            for f in new:
                fa.append_data_file(f)
        table = table.refresh()
    return settings, time.perf_counter() - t0


def floor(paths_by_partition: list[list[str]], out: Path) -> tuple[float, int, int]:
    """Read each partition's files and write one zstd Parquet file; ``(seconds, bytes out, rows)``."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written = rows = 0
    for i, paths in enumerate(paths_by_partition):
        t = pa.concat_tables([pq.read_table(p) for p in paths])
        target = out / f"part-{i:05d}.parquet"
        pq.write_table(t, target, compression="zstd")
        written += target.stat().st_size
        rows += t.num_rows
    return time.perf_counter() - t0, written, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--small", action="store_true", help="200,000 events in 320 files: a quick check")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    if args.small:
        args.events, args.files, args.days, args.buckets = 200_000, 320, 4, 4

    work = OUT_DIR / "compaction"
    shutil.rmtree(work, ignore_errors=True)
    settings, build_s = build_table(work / "data", args.events, args.files, args.days, args.buckets)
    table = open_catalog(settings).load_table("clicklake.events")  # type: ignore[arg-type]
    inputs = _live_files(table)
    groups: dict[tuple[object, ...], list[str]] = {}
    for f in inputs:
        groups.setdefault(tuple(f.partition[i] for i in range(len(f.partition))), []).append(
            _strip_scheme(f.file_path)
        )
    in_bytes = sum(f.file_size_in_bytes for f in inputs)
    rows_before = pc.count_distinct(
        table.scan(selected_fields=("event_id",)).to_arrow().column("event_id")
    ).as_py()
    for paths in groups.values():  # warm the page cache for both contenders
        for p in paths:
            Path(p).read_bytes()

    with RssSampler() as floor_rss:
        floor_s, floor_out, floor_rows = floor(list(groups.values()), work / "floor")
    opts = settings.maintenance  # type: ignore[attr-defined]
    with RssSampler() as cl_rss:
        t0 = time.perf_counter()
        result = compact(table, opts)
        cl_s = time.perf_counter() - t0
    table = table.refresh()
    after = _live_files(table)
    ids = table.scan(selected_fields=("event_id",)).to_arrow().column("event_id")
    assert (
        len(ids) == args.events == floor_rows and pc.count_distinct(ids).as_py() == rows_before == args.events
    )

    headers = ["", "seconds", "MB/s (input)", "files in → out", "MB in → out", "peak RSS MB"]
    rows = [
        [
            "pyarrow floor (read + write per partition)",
            f"{floor_s:.1f}",
            f"{in_bytes / MB / floor_s:,.1f}",
            f"{len(inputs):,} → {len(groups):,}",
            f"{in_bytes / MB:,.0f} → {floor_out / MB:,.0f}",
            f"{floor_rss.peak_rss / MB:,.0f}",
        ],
        [
            "clicklake compact (replace commits)",
            f"{cl_s:.1f}",
            f"{in_bytes / MB / cl_s:,.1f}",
            f"{result.files_rewritten:,} → {len(after):,}",
            f"{result.bytes_rewritten / MB:,.0f} → {result.bytes_added / MB:,.0f}",
            f"{cl_rss.peak_rss / MB:,.0f}",
        ],
    ]
    print(text_table(headers, rows))
    print(
        f"clicklake / floor time: {cl_s / floor_s:.2f}x; table built in {build_s:.1f} s; groups {result.groups}"
    )
    info = machine_info(("clicklake", "pyarrow", "pyiceberg"))
    body = "\n".join(
        [
            "## Compaction",
            "",
            f"Run {utc_now()}.",
            "",
            "- Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
            f"- Input: `events` with {args.events:,} synthetic events in {len(inputs):,} small files "
            f"({args.days} days x {args.buckets} user buckets = {len(groups)} partitions, "
            f"{in_bytes / MB / len(inputs):.2f} MB per file on average), written by "
            f"{-(-args.files // (args.days * args.buckets))} Iceberg appends in {build_s:.0f} s (not counted).",
            "- Floor: pyarrow reads each partition's files and writes one zstd Parquet file. clicklake: "
            "`clicklake maintain compact` (plan from manifests, PyIceberg read with the next bin read "
            "ahead on a second thread, one file per partition, `replace` commits of up to "
            f"{opts.compact_commit_bytes / MB:,.0f} MB input: {result.groups} commit(s)). "
            "Same run, same files, page cache warm for both; rows checked unchanged.",
            "",
            markdown_table(headers, rows),
            "",
            f"clicklake takes {cl_s / floor_s:.2f}x the floor's time.",
            "",
            "Reproduce: `.venv/bin/python bench/compaction.py"
            + (" --small`." if args.small else f" --events {args.events} --files {args.files}`."),
        ]
    )
    if not args.no_write:
        write_results_section(NAME, body)


if __name__ == "__main__":
    main()
