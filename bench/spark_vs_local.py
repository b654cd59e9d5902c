"""The same input through both engines: the local (embedded) engine and Spark ``local[2]``.

One generated NDJSON input (``clicklake generate --format ndjson``, default share of malformed
events, resends, batches, bots and late events, split into files) is ingested by

- ``clicklake run --engine local --source files --once DIR`` and
- ``clicklake run --engine spark --source files --once DIR`` (Structured Streaming, availableNow,
  the same decode/validate/enrich through ``mapInArrow``, Iceberg Spark runtime commits),

each into its own data directory (SQLite catalog, local warehouse), and then the models are built
by each: ``clicklake models build --full-refresh`` (DuckDB) and ``clicklake models build --engine
spark`` (the same SQL transpiled by sqlglot). Every step is its own process, timed from start to
exit (JVM and session start included for Spark); peak RSS is the sampled sum over the process tree.
Row counts of both engines are printed side by side. Results go to stdout and to this bench's
section of ``bench/RESULTS.md``.

Usage::

    .venv/bin/python bench/spark_vs_local.py               # 1,000,000 events (long)
    .venv/bin/python bench/spark_vs_local.py --events 20000  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import (
    MB,
    OUT_DIR,
    RESULTS_MD,
    Measured,
    clicklake_exe,
    machine_info,
    markdown_table,
    run_measured,
    text_table,
    utc_now,
    write_results_section,
)

NAME = "spark_vs_local"


def _env(data_dir: Path) -> dict[str, str]:
    return {
        "CLICKLAKE_STORAGE__DATA_DIR": str(data_dir),
        "CLICKLAKE_SPARK__MASTER": "local[2]",
        "CLICKLAKE_SPARK__CONF": json.dumps(
            {"spark.driver.memory": "4g", "spark.sql.shuffle.partitions": "8"}
        ),
    }


def _rows(data_dir: Path, table: str) -> int:
    out = subprocess.run(
        [clicklake_exe(), "sql", f"SELECT count(*) AS n FROM {table}", "--format", "json"],
        env={**os.environ, **_env(data_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return -1
    return int(json.loads(out.stdout)[0]["n"])


def _fmt(m: Measured, events: int) -> list[str]:
    rate = f"{events / m.wall_s:,.0f}" if m.ok and m.wall_s > 0 else "-"
    return [f"{m.wall_s:.1f}", rate, f"{m.peak_rss / MB:,.0f}", "ok" if m.ok else f"failed: {m.error_line()}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=1_000_000, help="events to generate (default 1,000,000)")
    p.add_argument("--files", type=int, default=8, help="NDJSON files (one Spark task each; default 8)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a new one under bench/out/)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory afterwards")
    p.add_argument("--results", type=Path, default=RESULTS_MD)
    args = p.parse_args(argv)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="spark-vs-local-", dir=OUT_DIR))
    exe = clicklake_exe()
    try:
        inp = work / "input"
        gen = run_measured(
            [
                exe,
                "--data-dir",
                work / "gen",
                "generate",
                "--events",
                str(args.events),
                "--format",
                "ndjson",
                "--out",
                inp,
                "--files",
                str(args.files),
                "--seed",
                str(args.seed),
            ]
        )
        if not gen.ok:
            print(gen.stderr, file=sys.stderr)
            return 1
        manifest = json.loads((inp / "manifest.json").read_text())
        runs: dict[str, Measured] = {}
        for engine in ("local", "spark"):
            data = work / engine
            runs[f"ingest {engine}"] = run_measured(
                [exe, "run", "--engine", engine, "--source", "files", "--once", inp], env=_env(data)
            )
            build = [exe, "models", "build"] + (
                ["--engine", "spark"] if engine == "spark" else ["--full-refresh"]
            )
            runs[f"models {engine}"] = run_measured(build, env=_env(data))
        counts = {
            t: (_rows(work / "local", t), _rows(work / "spark", t))
            for t in ("events", "failed_events", "page_views", "sessions", "daily_kpis")
        }
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    n = int(manifest["events_total"])
    headers = ["step", "seconds", "events/s", "peak RSS MB", ""]
    rows = [[name, *_fmt(m, n)] for name, m in runs.items()]
    ratios = []
    for step in ("ingest", "models"):
        lo, sp = runs[f"{step} local"], runs[f"{step} spark"]
        if lo.ok and sp.ok:
            ratios.append(
                f"- {step}: local {sp.wall_s / lo.wall_s:.1f}x faster than Spark local[2] (wall times)"
            )
        else:
            ratios.append(f"- {step}: no ratio (a run failed)")
    count_rows = [[t, f"{a:,}", f"{b:,}", "same" if a == b else "DIFFERENT"] for t, (a, b) in counts.items()]
    print(text_table(headers, rows))
    print("\n".join(ratios))
    print(text_table(["table", "local rows", "Spark rows", ""], count_rows, "lrrl"))
    info = machine_info(("clicklake", "duckdb", "pyarrow", "pyiceberg", "pyspark", "sqlglot"))
    body = "\n".join(
        [
            "## Spark engine vs. local engine: the same input, ingest and model build",
            "",
            f"- {utc_now()}, `bench/spark_vs_local.py --events {args.events} --files {args.files}`: "
            f"{n:,} generated events in {args.files} NDJSON files.",
            "- Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
            "- Each step is its own process (`clicklake run --engine local|spark --source files --once`, "
            "then `clicklake models build --full-refresh` / `--engine spark`), wall time from start to exit: "
            "Spark's includes JVM and session start. Spark `local[2]`, driver memory 4g, 8 shuffle partitions; "
            "SQLite catalog and local warehouse for both. events/s = generated events / wall time.",
            "",
            markdown_table(headers, rows),
            "",
            *ratios,
            "",
            markdown_table(["table", "local rows", "Spark rows", ""], count_rows, "lrrl"),
        ]
    )
    write_results_section(NAME, body, args.results)
    return 0 if all(m.ok for m in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
