"""The ``clicklake`` command."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table as RichTable

from clicklake import __version__, logs
from clicklake.config import Settings, load_settings
from clicklake.exceptions import ClickLakeError, ConfigError, InputError

console = Console(stderr=True)
# Pipes and CI logs get a wide, unwrapped layout instead of rich's 80-column default.
stdout = Console(width=None if sys.stdout.isatty() else 140)

#: Set once a command's work is done and durable (``run``, after its last commit): the
#: ``clicklake`` process then ends without the interpreter's teardown (see clicklake.__main__).
SKIP_TEARDOWN = False

#: The interpreter's thread switch interval while ``run`` sets up beside its head start.
STARTUP_SWITCH_S = 0.0005


class _Ctx:
    def __init__(self, config: str | None, data_dir: str | None):
        self.config = config
        self.data_dir = data_dir

    def settings(self, **flags: Any) -> Settings:
        if self.data_dir:
            flags.setdefault("storage", {})["data_dir"] = self.data_dir
        return load_settings(self.config, **flags)


def _fail(exc: BaseException) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    code = 2 if isinstance(exc, ConfigError | InputError) else 1
    sys.exit(code)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClickLakeError as exc:
            _fail(exc)
        except OSError as exc:
            _fail(ClickLakeError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")))
        return None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clicklake")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    help="TOML config file (default: ./clicklake.toml if present).",
)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Override storage.data_dir.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
    help="Structured logs to stderr at this level.",
)
@click.pass_context
def cli(ctx: click.Context, config: str | None, data_dir: str | None, log_level: str) -> None:
    """clicklake: a clickstream lakehouse on Apache Iceberg.

    Collect Segment-compatible events, validate them, land them exactly-once in Iceberg tables,
    and query them with SQL. Start with `clicklake demo`.
    """
    logs.configure(log_level)
    ctx.obj = _Ctx(config, data_dir)
    if ctx.invoked_subcommand != "run":
        # The process entry loads modules with garbage collection off (clicklake.__main__);
        # `run` switches it back on once its engine is set up, every other command now.
        gc.enable()


@contextmanager
def _progress(total: int | None, label: str) -> Iterator[Callable[[int], None]]:
    if not console.is_terminal:
        yield lambda n: None
        return
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@cli.command()
@click.option(
    "--source",
    type=click.Choice(["spool", "files", "kafka"]),
    default="spool",
    show_default=True,
    help="Where events come from.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="Which engine runs the pipeline.",
)
@click.option(
    "--once", is_flag=True, help="Process what is there now, commit, and exit (default: keep running)."
)
@click.option(
    "--app-id", help="App id for file events without a known writeKey (default: pipeline.default_app_id)."
)
@click.option("--commit-interval", type=float, help="Override pipeline.commit_interval_s.")
@click.argument("paths", nargs=-1, type=click.Path())
@click.pass_obj
def run(
    obj: _Ctx,
    source: str,
    engine: str,
    once: bool,
    app_id: str | None,
    commit_interval: float | None,
    paths: tuple[str, ...],
) -> None:
    """Run the pipeline: read events, validate, and commit them to Iceberg exactly once.

    With --source files, PATHS are NDJSON files (or directories of them; .gz is read too). Each
    line is a Segment call or a {"batch": [...]} request.
    """
    from clicklake.engines import load_engine

    settings = obj.settings(pipeline={"commit_interval_s": commit_interval})
    if engine == "spark":
        gc.enable()
        _run_spark(settings, source, paths, once, app_id)
        return
    src = _make_source(settings, source, paths)
    # Files are mostly loaded once, from their start: decode the first chunks while the engine
    # imports and opens its tables (the head start is dropped if the run resumes elsewhere).
    head = None
    switch = sys.getswitchinterval()
    if source == "files":
        from clicklake.engines.head_start import HeadStart, decode_options

        head = HeadStart(src, decode_options(settings, app_id))
        # While this thread imports and sets up (holding the GIL in long stretches), the head
        # start's thread needs it only briefly between GIL-free decodes, and waited up to the
        # default 5 ms for each: hand it over sooner until the pipeline starts.
        sys.setswitchinterval(STARTUP_SWITCH_S)
    try:
        local = load_engine(engine)
        with (
            local.PipelineLock(settings),
            _progress(src.total_bytes() if once else None, "ingest") as advance,
        ):
            try:
                pipeline = local.Pipeline(settings, src, app_id=app_id, progress=advance)
            finally:
                # Set up (see clicklake.__main__). What start-up made lives as long as the run:
                # frozen, it is not traversed again by every full collection.
                gc.freeze()
                gc.enable()
            local.install_signal_handlers(pipeline)
            sys.setswitchinterval(switch)
            t0 = time.monotonic()
            try:
                stats = pipeline.run(once=once, head_start=head)
            finally:
                if hasattr(src, "close"):
                    src.close()
    finally:
        sys.setswitchinterval(switch)
        if head is not None:
            head.cancel()
    _print_run_summary(stats, time.monotonic() - t0)
    # Every table committed and the source closed: the process may end without tearing down
    # its modules (only when started as the ``clicklake`` command, see clicklake.__main__).
    global SKIP_TEARDOWN
    SKIP_TEARDOWN = True


def _run_spark(
    settings: Settings, source: str, paths: tuple[str, ...], once: bool, app_id: str | None
) -> None:
    from clicklake.engines import load_engine

    spark = load_engine("spark")
    # One process per pipeline id, as for the local engine: both would write the same tables.
    with load_engine("local").PipelineLock(settings):
        pipeline = spark.SparkPipeline(settings, source, paths, app_id=app_id)
        spark.install_signal_handlers(pipeline)
        t0 = time.monotonic()
        stats = pipeline.run(once=once)
    _print_run_summary(stats, time.monotonic() - t0)


def _make_source(settings: Settings, source: str, paths: tuple[str, ...]) -> Any:
    if source == "files":
        from clicklake.sources.files import FilesSource

        return FilesSource(paths, chunk_bytes=settings.pipeline.read_chunk_bytes)
    if paths:
        raise InputError("PATHS are only for --source files; the spool is storage.data_dir/spool")
    if source == "kafka":
        from clicklake.sources.kafka import KafkaSource

        return KafkaSource(settings.kafka, settings.pipeline.pipeline_id)
    from clicklake.sources.spool import SpoolSource

    return SpoolSource(settings.storage.spool_dir, chunk_bytes=settings.pipeline.read_chunk_bytes)


def _print_run_summary(stats: Any, seconds: float) -> None:
    rate = stats.events / seconds if seconds > 0 else 0.0
    stdout.print(
        f"committed {stats.events:,} events and {stats.failed:,} failed events "
        f"in {stats.commits} commits, {seconds:.1f} s ({rate:,.0f} events/s)"
        + (f"; skipped {stats.skipped:,} rows already committed" if stats.skipped else "")
    )
    if stats.failed_by_reason:
        stdout.print(
            "failed events by reason: "
            + ", ".join(f"{k}={v}" for k, v in sorted(stats.failed_by_reason.items()))
        )


@cli.command()
@click.option(
    "--events",
    "n_events",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="How many events to generate.",
)
@click.option(
    "--days", type=click.IntRange(min=1), default=7, show_default=True, help="Days of traffic, ending now."
)
@click.option("--seed", type=int, default=42, show_default=True, help="Random seed (same seed, same bytes).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["spool", "ndjson"]),
    default="spool",
    show_default=True,
    help="spool: collector envelopes in the spool; ndjson: Segment lines in files.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output directory (default: the spool, or ./generated for ndjson).",
)
@click.option(
    "--files", type=click.IntRange(min=1), default=1, show_default=True, help="Number of NDJSON files."
)
@click.option("--gzip", "gz", is_flag=True, help="Gzip the NDJSON files.")
@click.option(
    "--malformed-share",
    type=click.FloatRange(0, 1),
    default=0.02,
    show_default=True,
    help="Share of malformed events.",
)
@click.option(
    "--retry-share",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Share of lines resent by clients.",
)
@click.option(
    "--batch-share",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Share of lines that are batch requests.",
)
@click.option(
    "--bot-share", type=click.FloatRange(0, 1), default=0.03, show_default=True, help="Share of bot traffic."
)
@click.option(
    "--late-share",
    type=click.FloatRange(0, 1),
    default=0.02,
    show_default=True,
    help="Share of late (offline) events.",
)
@click.option("--app-id", default="demo-shop", show_default=True, help="App id written into spool envelopes.")
@click.option("--write-key", default="wk_demo", show_default=True, help="writeKey written into NDJSON lines.")
@click.pass_obj
def generate(
    obj: _Ctx,
    n_events: int,
    days: int,
    seed: int,
    fmt: str,
    out: str | None,
    files: int,
    gz: bool,
    malformed_share: float,
    retry_share: float,
    batch_share: float,
    bot_share: float,
    late_share: float,
    app_id: str,
    write_key: str,
) -> None:
    """Generate a realistic synthetic clickstream, with a manifest of what was produced."""
    from clicklake.sources.generator import generate as gen

    settings = obj.settings()
    if out is None:
        target = settings.storage.spool_dir if fmt == "spool" else Path("generated")
    else:
        target = Path(out)
    with _progress(n_events, "generate") as advance:
        done = [0]

        def progress(n: int) -> None:
            advance(n - done[0])
            done[0] = n

        manifest = gen(
            target,
            events=n_events,
            days=days,
            seed=seed,
            fmt=fmt,  # type: ignore[arg-type]
            gzip=gz,
            malformed_share=malformed_share,
            retry_share=retry_share,
            batch_share=batch_share,
            bot_share=bot_share,
            late_share=late_share,
            app_id=app_id,
            write_key=write_key,
            files=files,
            segment_max_bytes=settings.spool.segment_max_bytes,
            progress=progress,
        )
    manifest_path = _manifest_path(settings, fmt, target)
    manifest.write(manifest_path)
    stdout.print(
        f"generated {manifest.events_total:,} events in {manifest.lines:,} lines into {target} "
        f"({manifest.expected_events_rows:,} valid, {manifest.expected_failed_rows:,} malformed); manifest: {manifest_path}"
    )


def _manifest_path(settings: Settings, fmt: str, target: Path) -> Path:
    # The spool directory holds only segments, so its manifest goes beside it.
    return target.parent / "generator-manifest.json" if fmt == "spool" else target / "manifest.json"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def status(obj: _Ctx, as_json: bool) -> None:
    """Tables, row counts, snapshots, checkpoints and spool lag."""
    from clicklake.status import collect_status

    info = collect_status(obj.settings())
    if as_json:
        stdout.print_json(json.dumps(info))
        return
    table = RichTable(title=f"clicklake tables in {info['catalog']}")
    for col in ("table", "rows", "data files", "snapshots", "last commit", "checkpoints"):
        table.add_column(col)
    for name, t in info["tables"].items():
        cps = "; ".join(f"{p}: {c['streams']} streams" for p, c in t["checkpoints"].items()) or "-"
        table.add_row(
            name, f"{t['rows']:,}", str(t["data_files"]), str(t["snapshots"]), t["last_commit"] or "-", cps
        )
    stdout.print(table)
    if info["note"]:
        stdout.print(info["note"])
    spool = info["spool"]
    stdout.print(
        f"spool: {spool['segments']} segments, {spool['bytes']:,} bytes, lag {spool['lag_bytes']:,} bytes not yet committed by every table"
    )


@cli.command()
@click.option(
    "--events",
    "n_events",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="How many events to generate.",
)
@click.option(
    "--days", type=click.IntRange(min=1), default=7, show_default=True, help="Days of traffic, ending now."
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--no-serve", is_flag=True, help="Do not start the dashboard afterwards.")
@click.pass_context
def demo(ctx: click.Context, n_events: int, days: int, seed: int, no_serve: bool) -> None:
    """Generate a clickstream, send it through the HTTP collector, run the pipeline, print a summary."""
    _demo_over_http(ctx.obj.settings(), n_events, days, seed)
    ctx.invoke(run, source="spool", engine="local", once=True, app_id=None, commit_interval=None, paths=())
    ctx.invoke(status, as_json=False)
    ctx.invoke(models_build, full_refresh=False)
    from clicklake.query import run_sql

    stdout.print("\ndaily KPIs (bots excluded):")
    _print_table(
        run_sql(
            ctx.obj.settings(),
            "SELECT app_id, date, users, sessions, page_views, round(bounce_rate, 3) AS bounce_rate, "
            "round(engagement_rate, 3) AS engagement_rate, conversions, round(conversion_rate, 4) AS conversion_rate, "
            "round(revenue, 2) AS revenue FROM daily_kpis ORDER BY app_id, date",
        ),
        "table",
    )
    if not no_serve:
        from clicklake.collector.server import serve as run_server
        from clicklake.query.access import with_demo_token

        settings, token = with_demo_token(ctx.obj.settings())
        host, port = settings.collector.host, settings.collector.port
        stdout.print(f"\ndashboard (signed in with a demo token): http://{host}:{port}/#token={token}")
        stdout.print("Ctrl-C stops it.")
        run_server(settings, with_pipeline=True)


def _demo_over_http(settings: Settings, n_events: int, days: int, seed: int) -> None:
    """Generate a Segment export and send it to a collector started here (see collector/replay.py)."""
    import tempfile

    from clicklake.collector.options import CollectorOptions
    from clicklake.collector.replay import replay
    from clicklake.collector.server import BackgroundCollector
    from clicklake.sources.generator import generate as gen

    if days > settings.pipeline.max_age_days:
        raise InputError(
            f"--days {days} is over pipeline.max_age_days ({settings.pipeline.max_age_days}): "
            "older events would fail validation; ask for fewer days or raise the limit"
        )
    write_keys = dict(settings.collector.write_keys)
    write_keys.setdefault("wk_demo", "demo-shop")
    options = CollectorOptions.from_settings(settings, write_keys=write_keys)
    data_dir = Path(settings.storage.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-export-", dir=data_dir) as export:
        with _progress(n_events, "generate") as advance:
            done = [0]

            def progress(n: int) -> None:
                advance(n - done[0])
                done[0] = n

            manifest = gen(
                Path(export),
                events=n_events,
                days=days,
                seed=seed,
                fmt="ndjson",
                app_id=write_keys["wk_demo"],
                write_key="wk_demo",
                progress=progress,
            )
        manifest_path = data_dir / "generator-manifest.json"
        manifest.write(manifest_path)
        stdout.print(
            f"generated {manifest.events_total:,} events over {days} days "
            f"({manifest.expected_events_rows:,} valid, {manifest.expected_failed_rows:,} malformed); "
            f"manifest: {manifest_path}"
        )
        with BackgroundCollector(options) as collector:
            stats = replay(
                [Path(f) for f in manifest.files],
                collector.url,
                "wk_demo",
                max_request_bytes=options.max_request_bytes,
                max_event_bytes=options.max_event_bytes,
            )
    stdout.print(
        f"sent them to the collector at {collector.url} in {stats.requests:,} requests, {stats.seconds:.1f} s: "
        f"{stats.accepted_events:,} events accepted"
        + (
            f"; {sum(stats.refused.values()):,} requests ({stats.refused_events:,} events) refused: "
            + ", ".join(f"{reason} x{n}" for reason, n in stats.refused.items())
            if stats.refused
            else ""
        )
    )


@cli.command()
@click.option("--host", help="Override collector.host.")
@click.option("--port", type=int, help="Override collector.port.")
@click.option(
    "--no-pipeline", is_flag=True, help="Only collect into the spool; do not run the pipeline loop."
)
@click.option("--commit-interval", type=float, help="Override pipeline.commit_interval_s.")
@click.pass_obj
def serve(
    obj: _Ctx, host: str | None, port: int | None, no_pipeline: bool, commit_interval: float | None
) -> None:
    """Run the HTTP collector (Segment Tracking API) and the pipeline loop until SIGTERM or Ctrl-C.

    On SIGTERM it stops accepting, writes what it acknowledged, lets the pipeline read the spool
    to its end and commit, then exits. Metrics at /metrics, health at /healthz and /readyz.
    """
    from clicklake.collector.server import serve as run_server

    settings = obj.settings(
        collector={"host": host, "port": port}, pipeline={"commit_interval_s": commit_interval}
    )
    stdout.print(
        f"collector listening on http://{settings.collector.host}:{settings.collector.port}/v1/batch"
    )
    stdout.print(
        f"dashboard at http://{settings.collector.host}:{settings.collector.port}/ (a token from api.tokens)"
    )
    run_server(settings, with_pipeline=not no_pipeline)


#: DuckDB's allocator settings for ``clicklake models ...`` (see :func:`models`).
MODELS_DUCKDB_MALLOC_CONF = "dirty_decay_ms:10000"


@cli.group()
def models() -> None:
    """Page views, sessions, users and daily KPIs built from events."""
    # DuckDB's allocator (its own jemalloc) returns freed pages to the system after 1 s; a model
    # build frees and takes back gigabytes from step to step, and faulting them in again cost ~3
    # million page faults, 2-3 s of system CPU at 10M events. Ten seconds keeps them for the next
    # step (a million fewer faults). Only here: the pipeline, whose peak memory has a budget, held
    # up to ~75 MB more with it. DuckDB reads the variable when it loads, which no command has done
    # by now; a value the user set wins.
    os.environ.setdefault("DUCKDB_JE_MALLOC_CONF", MODELS_DUCKDB_MALLOC_CONF)


@models.command("build")
@click.option(
    "--full-refresh", is_flag=True, help="Rebuild every day instead of the days new events touched."
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: DuckDB; spark: the same SQL transpiled to Spark (always a full rebuild).",
)
@click.pass_obj
def models_build(obj: _Ctx, full_refresh: bool, engine: str = "local") -> None:
    """Build the model tables (incrementally by default)."""
    from clicklake.models.runner import build_models

    t0 = time.monotonic()
    if engine == "spark":
        from clicklake.models.spark import build_models_spark as build_models
    counts = build_models(obj.settings(), full_refresh=full_refresh)
    stdout.print(
        f"built {', '.join(f'{name} ({rows:,} rows)' for name, rows in counts.items()) or 'nothing: no new events'} "
        f"in {time.monotonic() - t0:.1f} s"
    )


@cli.group()
def maintain() -> None:
    """Table maintenance: compact small files, expire snapshots, remove orphans, apply retention.

    Each action runs over events, failed_events and the model tables (or --table ...), is safe
    while the pipeline writes, and never touches a snapshot a pipeline checkpoint still needs.
    Thresholds are the [maintenance] settings; `clicklake serve` also runs them on a schedule.
    """


_TABLES = click.option(
    "--table",
    "tables",
    multiple=True,
    help="Only this table (repeat for several; default: every clicklake table).",
)


def _maintain(obj: _Ctx, action: str, tables: tuple[str, ...], dry_run: bool = False) -> list[Any]:
    from clicklake.lakehouse.maintenance import input_bytes, run_action

    settings = obj.settings()
    t0 = time.monotonic()
    total = input_bytes(settings, action, tables or None) if action == "compact" else None
    with _progress(total, action) if action == "compact" else _count_progress(action) as advance:
        results = run_action(settings, action, tables or None, dry_run=dry_run, progress=advance)
    rich_table = RichTable(title=f"maintain {action} ({time.monotonic() - t0:.1f} s)")
    skip = ("table", "snapshots", "paths", "snapshot_id", "manifests_before")
    fields = [f for f in vars(results[0]) if f not in skip] if results else []
    # One column per table: the tables are few, the figures many.
    rich_table.add_column("")
    for r in results:
        rich_table.add_column(r.table.split(".")[-1], justify="right")
    for f in fields:
        rich_table.add_row(f.replace("_", " "), *(_cell(getattr(r, f)) for r in results))
    stdout.print(rich_table)
    return results


@contextmanager
def _count_progress(label: str) -> Iterator[Callable[[int], None]]:
    if not console.is_terminal:
        yield lambda n: None
        return
    from rich.progress import MofNCompleteColumn, SpinnerColumn

    with Progress(
        SpinnerColumn(),
        TextColumn(f"[bold]{label}"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        yield lambda n: bar.advance(task, n)


@maintain.command("compact")
@_TABLES
@click.pass_obj
def maintain_compact(obj: _Ctx, tables: tuple[str, ...]) -> None:
    """Rewrite small files into target-size files, as Iceberg replace snapshots.

    Files under maintenance.small_file_bytes are bin-packed by their real Parquet size into
    files of up to maintenance.target_file_bytes, in partitions with at least
    maintenance.min_input_files of them; whole partitions are replaced together up to
    maintenance.compact_commit_bytes of input per commit. Manifests are merged once there are
    maintenance.manifest_merge_count of them. A commit that loses a race with the pipeline is
    retried; a group whose files changed meanwhile is skipped. No row is lost or doubled.
    """
    _maintain(obj, "compact", tables)


@maintain.command("expire")
@_TABLES
@click.pass_obj
def maintain_expire(obj: _Ctx, tables: tuple[str, ...]) -> None:
    """Expire old snapshots, then delete the files no remaining snapshot references.

    Keeps snapshots younger than maintenance.snapshot_max_age_hours, the last
    maintenance.keep_last_snapshots, the newest checkpoint of every pipeline (and the snapshots
    between it and the current one) and the events snapshots the models were built from.
    """
    _maintain(obj, "expire", tables)


@maintain.command("orphans")
@_TABLES
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.pass_obj
def maintain_orphans(obj: _Ctx, tables: tuple[str, ...], dry_run: bool) -> None:
    """Remove files under each table's location that no snapshot references.

    Only files older than maintenance.orphan_min_age_hours go (younger ones may belong to a
    commit still in flight): typically data files of a crashed write or compaction.
    """
    results = _maintain(obj, "orphans", tables, dry_run=dry_run)
    if dry_run:
        for r in results:
            for path in r.paths:
                stdout.print(path, highlight=False)


@maintain.command("retention")
@_TABLES
@click.pass_obj
def maintain_retention(obj: _Ctx, tables: tuple[str, ...]) -> None:
    """Drop whole day partitions older than the retention of each table.

    maintenance.retention_events_days, .retention_failed_events_days and .retention_models_days
    (0 keeps everything): partitions whose day is before today (UTC) minus that many days.
    Whole data files are removed, never rewritten; expire then frees the space.
    """
    _maintain(obj, "retention", tables)


def _print_table(table: Any, fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(table.to_pylist(), default=_json_default) + "\n")
        return
    if fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        sys.stdout.write(buf.getvalue().decode())
        return
    rich_table = RichTable(show_lines=False)
    for name in table.column_names:
        rich_table.add_column(name, overflow="fold")
    for row in table.to_pylist():
        rich_table.add_row(*(_cell(v) for v in row.values()))
    stdout.print(rich_table)


def _json_default(v: Any) -> Any:
    from decimal import Decimal

    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        # rates keep four significant digits, amounts their cents
        return f"{v:.4g}" if abs(v) < 1 else f"{v:,.2f}"
    return str(v)


_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


@cli.command()
@click.argument("query")
@_FORMAT
@click.pass_obj
def sql(obj: _Ctx, query: str, fmt: str) -> None:
    """Run one read-only SQL statement (DuckDB) over the current snapshots of every table.

    Tables are views named events, failed_events, page_views, sessions, users, user_mapping and
    daily_kpis. Example: clicklake sql "SELECT date, sessions, bounce_rate FROM daily_kpis ORDER BY date"
    """
    from clicklake.query.audit import audited_local_sql

    _print_table(audited_local_sql(obj.settings(), query), fmt)


@cli.command()
@click.option(
    "--step",
    "steps",
    multiple=True,
    required=True,
    metavar="EVENT[@PATH_REGEX]",
    help="A step: an event name, '@regex' for a URL path, or both ('Product Viewed@^/p/'). Repeat, in order.",
)
@click.option(
    "--window",
    default="1h",
    show_default=True,
    help="Conversion window: seconds, or with a unit (30m, 2h, 7d).",
)
@click.option("--order", type=click.Choice(["strict", "any"]), default="strict", show_default=True)
@click.option(
    "--breakdown", help="Split by an events column, e.g. default_channel_group, dvce_class, geo_country."
)
@click.option("--start", type=click.DateTime(), help="Only funnels starting at or after (UTC).")
@click.option("--end", type=click.DateTime(), help="Only events before (UTC).")
@click.option("--app-id", help="Only this app.")
@_FORMAT
@click.pass_obj
def funnel(
    obj: _Ctx,
    steps: tuple[str, ...],
    window: str,
    order: str,
    breakdown: str | None,
    start: Any,
    end: Any,
    app_id: str | None,
    fmt: str,
) -> None:
    """Count how many visitors reach each step of a funnel, with drop-off."""
    from datetime import UTC

    from clicklake.models.funnel import Step
    from clicklake.models.funnel import funnel as run_funnel

    parsed = []
    for raw in steps:
        event, _, path = raw.partition("@")
        parsed.append(Step(event=event or None, path=path or None))
    result = run_funnel(
        obj.settings(),
        parsed,
        _duration(window),
        order=order,
        breakdown=breakdown,
        start=start.replace(tzinfo=UTC) if start else None,
        end=end.replace(tzinfo=UTC) if end else None,
        app_id=app_id,
    )
    _print_table(result, fmt)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise InputError(
            f"--window {text!r}: give seconds or a number with s, m, h or d (e.g. 30m)"
        ) from None


def main() -> None:
    cli(prog_name="clicklake")
