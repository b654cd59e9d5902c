"""The command line: help, summaries, and bad input answered with a clear message and exit code."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

CLI = [sys.executable, "-m", "clicklake"]


def clicklake(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")}
    base.update(env or {})
    return subprocess.run([*CLI, *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=300)


def write_events(path: Path, n: int, start: int = 0) -> Path:
    lines = [
        orjson.dumps({"type": "track", "event": "E", "userId": f"u{i % 7}", "messageId": f"m{i}"})
        for i in range(start, start + n)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def rows(data_dir: Path, cwd: Path) -> dict[str, int]:
    res = clicklake("--data-dir", str(data_dir), "status", "--json", cwd=cwd)
    assert res.returncode == 0, res.stderr
    return {name: t["rows"] for name, t in json.loads(res.stdout)["tables"].items()}


def test_help_lists_the_commands(tmp_path: Path) -> None:
    res = clicklake("--help", cwd=tmp_path)
    assert res.returncode == 0
    for cmd in ("run", "generate", "status", "demo"):
        assert cmd in res.stdout
    res = clicklake("run", "--help", cwd=tmp_path)
    assert "--source" in res.stdout and "--once" in res.stdout


def test_files_run_and_status(tmp_path: Path) -> None:
    f = write_events(tmp_path / "a.ndjson", 50)
    with gzip.open(tmp_path / "b.ndjson.gz", "wb") as g:
        g.write(b'{"type":"page","anonymousId":"x"}\n{oops\n')
    res = clicklake(
        "--data-dir",
        "d",
        "run",
        "--source",
        "files",
        "--once",
        str(f),
        str(tmp_path / "b.ndjson.gz"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "committed 51 events and 1 failed events" in res.stdout.replace("\n", " ")
    assert rows(tmp_path / "d", tmp_path) == {"events": 51, "failed_events": 1}
    # Running the same files again adds nothing: their checkpoint holds them.
    res = clicklake(
        "--data-dir",
        "d",
        "run",
        "--source",
        "files",
        "--once",
        str(f),
        str(tmp_path / "b.ndjson.gz"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert rows(tmp_path / "d", tmp_path) == {"events": 51, "failed_events": 1}


def test_bad_config_fails_clearly_and_damages_nothing(tmp_path: Path) -> None:
    f = write_events(tmp_path / "a.ndjson", 10)
    assert (
        clicklake("--data-dir", "d", "run", "--source", "files", "--once", str(f), cwd=tmp_path).returncode
        == 0
    )
    (tmp_path / "clicklake.toml").write_text("[pipeline]\ncommit_max_events = 'many'\n")
    res = clicklake("--data-dir", "d", "run", "--source", "files", "--once", str(f), cwd=tmp_path)
    assert res.returncode == 2
    assert "pipeline.commit_max_events" in res.stderr and "valid integer" in res.stderr
    assert "Traceback" not in res.stderr
    (tmp_path / "clicklake.toml").unlink()
    assert rows(tmp_path / "d", tmp_path) == {"events": 10, "failed_events": 0}


def _missing(p: Path) -> Path:
    return p / "missing.ndjson"


def _empty_dir(p: Path) -> Path:
    (p / "empty-dir").mkdir()
    return p / "empty-dir"


def _corrupt_gzip(p: Path) -> Path:
    (p / "bad.ndjson.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 100)
    return p / "bad.ndjson.gz"


@pytest.mark.parametrize(
    ("make", "message"),
    [(_missing, "does not exist"), (_empty_dir, "no .ndjson"), (_corrupt_gzip, "cannot read input file")],
)
def test_unreadable_input_fails_clearly(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    good = write_events(tmp_path / "good.ndjson", 5)
    assert (
        clicklake("--data-dir", "d", "run", "--source", "files", "--once", str(good), cwd=tmp_path).returncode
        == 0
    )
    bad = make(tmp_path)
    res = clicklake("--data-dir", "d", "run", "--source", "files", "--once", str(bad), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr.replace("\n", " ")
    assert "Traceback" not in res.stderr
    assert rows(tmp_path / "d", tmp_path) == {"events": 5, "failed_events": 0}


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small filesystem of our own (real ENOSPC and EROFS, as root in a sandbox)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_data_directory_fails_clearly_and_keeps_what_was_committed(tmp_path: Path) -> None:
    first = write_events(tmp_path / "first.ndjson", 200)
    second = write_events(tmp_path / "second.ndjson", 200, start=1000)
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        data = mnt / "data"
        assert (
            clicklake(
                "--data-dir", str(data), "run", "--source", "files", "--once", str(first), cwd=tmp_path
            ).returncode
            == 0
        )
        filler = mnt / "filler"
        # Unbuffered: a buffered file keeps the bytes of a short last write and fails again
        # flushing them on close, depending on how much room the first run happened to leave.
        with filler.open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        res = clicklake(
            "--data-dir", str(data), "run", "--source", "files", "--once", str(second), cwd=tmp_path
        )
        assert res.returncode == 1
        assert "No space left on device" in res.stderr.replace("\n", " ")
        assert "Traceback" not in res.stderr
        filler.unlink()
        assert rows(data, tmp_path) == {"events": 200, "failed_events": 0}
        # With room again, the same run completes and nothing is doubled.
        res = clicklake(
            "--data-dir",
            str(data),
            "run",
            "--source",
            "files",
            "--once",
            str(first),
            str(second),
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr
        assert rows(data, tmp_path) == {"events": 400, "failed_events": 0}


def test_read_only_data_directory_fails_clearly_and_keeps_what_was_committed(tmp_path: Path) -> None:
    first = write_events(tmp_path / "first.ndjson", 30)
    second = write_events(tmp_path / "second.ndjson", 30, start=100)
    with tmpfs(tmp_path / "mnt", "16m") as mnt:
        data = mnt / "data"
        assert (
            clicklake(
                "--data-dir", str(data), "run", "--source", "files", "--once", str(first), cwd=tmp_path
            ).returncode
            == 0
        )
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        res = clicklake(
            "--data-dir", str(data), "run", "--source", "files", "--once", str(second), cwd=tmp_path
        )
        assert res.returncode == 1
        assert "Read-only file system" in res.stderr.replace("\n", " ")
        assert "Traceback" not in res.stderr
        assert rows(data, tmp_path) == {"events": 30, "failed_events": 0}
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        assert (
            clicklake(
                "--data-dir", str(data), "run", "--source", "files", "--once", str(second), cwd=tmp_path
            ).returncode
            == 0
        )
        assert rows(data, tmp_path) == {"events": 60, "failed_events": 0}


def test_demo_then_models_sql_and_funnel(tmp_path: Path) -> None:
    res = clicklake("--data-dir", "d", "demo", "--events", "3000", "--no-serve", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "daily KPIs" in res.stdout and "built page_views" in res.stdout
    res = clicklake(
        "--data-dir",
        "d",
        "sql",
        "SELECT sum(sessions) AS s FROM daily_kpis",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    kpi_sessions = json.loads(res.stdout)[0]["s"]
    res = clicklake(
        "--data-dir",
        "d",
        "sql",
        "SELECT count(*) AS s FROM sessions WHERE NOT is_bot",
        "--format",
        "csv",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ['"s"', str(kpi_sessions)] or res.stdout.splitlines() == [
        "s",
        str(kpi_sessions),
    ]
    res = clicklake(
        "--data-dir",
        "d",
        "funnel",
        "--step",
        "Product Viewed",
        "--step",
        "Order Completed",
        # The anchor is each visitor's first product view (see models/funnel.py); a window as
        # long as the demo's 7 days keeps the few orders of 3,000 events in the funnel.
        "--window",
        "8d",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    steps = json.loads(res.stdout)
    assert [s["step_name"] for s in steps] == ["Product Viewed", "Order Completed"]
    assert steps[0]["entities"] >= steps[1]["entities"] > 0
    # Only reads are allowed, with a clear error
    res = clicklake("--data-dir", "d", "sql", "DELETE FROM events", cwd=tmp_path)
    assert res.returncode == 2 and "read-only" in res.stderr
    res = clicklake("--data-dir", "d", "funnel", "--step", "X", "--window", "soon", cwd=tmp_path)
    assert res.returncode == 2 and "--window" in res.stderr


def test_the_pipeline_builds_models_every_n_commits_when_asked(tmp_path: Path) -> None:
    f = write_events(tmp_path / "a.ndjson", 40)
    env = {"CLICKLAKE_MODELS__BUILD_EVERY_COMMITS": "1"}
    res = clicklake("--data-dir", "d", "run", "--source", "files", "--once", str(f), cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    res = clicklake(
        "--data-dir", "d", "sql", "SELECT sum(events) AS n FROM sessions", "--format", "json", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [{"n": 40}]


def test_demo_sends_through_the_http_collector_and_reconciles_with_the_manifest(tmp_path: Path) -> None:
    res = clicklake(
        "--data-dir",
        "d",
        "demo",
        "--events",
        "3000",
        "--days",
        "3",
        "--seed",
        "7",
        "--no-serve",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    manifest = json.loads((tmp_path / "d" / "generator-manifest.json").read_text())
    decode_errors = ("invalid_json", "invalid_envelope", "batch_too_large", "event_too_large")
    validate_errors = {k: n for k, n in manifest["malformed"].items() if k not in decode_errors and n}
    # What a collector must refuse was refused at the door, once per generated line...
    refused = sum(manifest["malformed"][k] for k in decode_errors)
    assert refused > 0
    assert f"{refused:,} requests ({refused:,} events) refused" in out
    assert "sent them to the collector at http://127.0.0.1:" in out
    # ...and everything else went through HTTP, the spool and the pipeline, row for row.
    counts = rows(tmp_path / "d", tmp_path)
    assert counts["events"] == manifest["expected_events_rows"] - manifest["retried"]
    assert counts["failed_events"] == sum(validate_errors.values())
    res = clicklake(
        "--data-dir",
        "d",
        "sql",
        "SELECT error_type, count(*) AS n FROM failed_events GROUP BY error_type",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert {r["error_type"]: r["n"] for r in json.loads(res.stdout)} == validate_errors
    # Received now over HTTP, yet the events keep their history: sentAt was moved, not timestamp.
    res = clicklake(
        "--data-dir",
        "d",
        "sql",
        "SELECT count(DISTINCT CAST(derived_tstamp AS DATE)) >= 3 AS days, "
        "max(collector_tstamp) - min(collector_tstamp) < INTERVAL 10 MINUTE AS received_now, "
        "min(derived_tstamp) < max(collector_tstamp) - INTERVAL 2 DAY AS historical, "
        "count(DISTINCT user_ipaddress) > 100 AS client_ips FROM events",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [
        {"days": True, "received_now": True, "historical": True, "client_ips": True}
    ]


def test_demo_refuses_more_days_than_validation_accepts(tmp_path: Path) -> None:
    res = clicklake("--data-dir", "d", "demo", "--days", "400", "--no-serve", cwd=tmp_path)
    assert res.returncode == 2
    assert "pipeline.max_age_days" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "d" / "spool").exists()


@pytest.mark.parametrize("command", ["status", "run"])
def test_garbage_collection_is_back_on_once_a_command_is_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The process entry loads modules with collection off; every command switches it back on
    (`run` once its engine is set up, before the long loop)."""
    import gc

    from click.testing import CliRunner

    from clicklake.cli import cli
    from clicklake.engines import local

    seen: list[bool] = []
    real_run = local.Pipeline.run

    def run(self: local.Pipeline, *args: object, **kwargs: object) -> local.RunStats:
        seen.append(gc.isenabled())
        return real_run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(local.Pipeline, "run", run)
    args = ["--data-dir", str(tmp_path / "data"), command]
    if command == "run":
        args += ["--source", "files", "--once", str(write_events(tmp_path / "e.ndjson", 5))]
    gc.disable()
    try:
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert gc.isenabled()
        assert seen == ([True] if command == "run" else [])
    finally:
        gc.enable()


def test_a_finished_run_exits_without_teardown_and_loses_no_output(tmp_path: Path) -> None:
    """`run` ends the process without the interpreter's teardown once it has committed: the
    summary (stdout, a pipe here), the logs (stderr) and an exit handler's work all survive."""
    f = write_events(tmp_path / "e.ndjson", 2000)
    marker, torn_down = tmp_path / "atexit-ran", tmp_path / "torn-down"
    # An exit handler registered during the run, as a library's would be: it still runs. An
    # object freed only by the teardown: its finalizer does not.
    hook = (
        "import atexit, pathlib, sys; "
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes'); "
        "Freed = type('Freed', (), {'__del__': lambda self: "
        f"pathlib.Path({str(torn_down)!r}).write_text('yes')}}); "
        "freed = Freed(); "
        "from clicklake.__main__ import main; "
        "sys.argv = ['clicklake', *sys.argv[1:]]; main()"
    )
    args = ("--data-dir", "d", "--log-level", "info", "run", "--source", "files", "--once", str(f))
    res = subprocess.run(
        [sys.executable, "-c", hook, *args],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("CLICKLAKE_")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "committed 2,000 events" in res.stdout
    assert "event=finish events=2000" in res.stderr
    assert marker.read_text() == "yes"
    assert not torn_down.exists()
    assert rows(tmp_path / "d", tmp_path)["events"] == 2000
    # A failing run still exits the ordinary way, with its code and message.
    res = subprocess.run(
        [sys.executable, "-c", hook, "--data-dir", "d", "run", "--source", "files", "--once", "missing"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "does not exist" in res.stderr


@pytest.mark.parametrize(
    ("argv", "preset", "expected"),
    [
        (["models", "build", "--help"], None, "dirty_decay_ms:10000"),
        (["--log-level", "info", "models", "build", "--help"], None, "dirty_decay_ms:10000"),
        (["models", "build", "--help"], "dirty_decay_ms:0", "dirty_decay_ms:0"),
        (["run", "--help"], None, ""),
    ],
)
def test_models_commands_keep_duckdb_memory_longer_unless_told_otherwise(
    tmp_path: Path, argv: list[str], preset: str | None, expected: str
) -> None:
    """`clicklake models ...` sets DuckDB's allocator to keep freed pages 10 s (fewer page faults
    between model steps) before anything loads DuckDB; other commands, and a value the user
    set, are left alone."""
    script = (
        "import os, sys\n"
        "import clicklake.__main__ as entry\n"
        "from clicklake import cli\n"
        "loaded = []\n"
        "group = cli.models.callback\n"
        "def models():\n"
        "    loaded.append('duckdb' in sys.modules)\n"
        "    group()\n"
        "cli.models.callback = models\n"
        f"sys.argv = ['clicklake', *{argv!r}]\n"
        "try:\n"
        "    entry.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert not any(loaded), 'DuckDB was loaded before the models group ran'\n"
        "print('CONF=' + os.environ.get('DUCKDB_JE_MALLOC_CONF', ''))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DUCKDB_JE_MALLOC_CONF"}
    if preset is not None:
        env["DUCKDB_JE_MALLOC_CONF"] = preset
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert f"CONF={expected}\n" in res.stdout


def test_run_hands_the_gil_over_sooner_only_while_it_sets_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --source files` shortens the interpreter's switch interval while it imports and sets
    up beside its head start, and puts it back before the pipeline loop (and after it)."""
    from click.testing import CliRunner

    from clicklake import cli as cli_module
    from clicklake.engines import local

    before = sys.getswitchinterval()
    seen: dict[str, float] = {}
    real_init, real_run = local.Pipeline.__init__, local.Pipeline.run

    def init(self: local.Pipeline, *args: object, **kwargs: object) -> None:
        seen["setup"] = sys.getswitchinterval()
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    def run(self: local.Pipeline, *args: object, **kwargs: object) -> local.RunStats:
        seen["loop"] = sys.getswitchinterval()
        return real_run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(local.Pipeline, "__init__", init)
    monkeypatch.setattr(local.Pipeline, "run", run)
    args = ["--data-dir", str(tmp_path / "data"), "run", "--source", "files", "--once"]
    result = CliRunner().invoke(cli_module.cli, [*args, str(write_events(tmp_path / "e.ndjson", 5))])
    assert result.exit_code == 0, result.output
    assert seen == {"setup": cli_module.STARTUP_SWITCH_S, "loop": before}
    assert sys.getswitchinterval() == before
