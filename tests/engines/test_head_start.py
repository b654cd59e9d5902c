"""The head start: chunks decoded while the process starts are used when the run begins at the
start of the source, dropped otherwise, and either way the tables end up holding exactly what a
run without it gives."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from clicklake.config import Settings, load_settings
from clicklake.engines.head_start import HeadStart, decode_options
from clicklake.engines.local import Pipeline
from clicklake.lakehouse.catalog import EVENTS, FAILED_EVENTS, open_catalog, table_id
from clicklake.sources.files import FilesSource

CHUNK = 4096  # bytes per chunk: the files below make dozens


def _write_inputs(tmp: Path) -> list[str]:
    """Two files of track calls, with a resend, a malformed line and a line of bad UTF-8."""
    paths = []
    for f in range(2):
        lines = [
            orjson.dumps(
                {
                    "type": "track",
                    "event": "Product Viewed",
                    "userId": f"u{i % 37}",
                    "messageId": f"f{f}-m{i}",
                    "timestamp": "2026-11-20T10:00:00Z",
                    "properties": {"sku": f"s{i}", "price": i / 4},
                }
            )
            for i in range(1500)
        ]
        lines[10] = lines[9]  # a client's resend
        lines[500] = b'{"type": "track", "event": '  # broken JSON
        lines[900] = b'{"type": "track", "event": "\xff\xfe", "userId": "u", "messageId": "x"}'
        path = tmp / f"events-{f}.ndjson"
        path.write_bytes(b"\n".join(lines) + b"\n")
        paths.append(str(path))
    return paths


def _settings(data_dir: Path) -> Settings:
    return load_settings(
        environ={}, storage={"data_dir": str(data_dir)}, pipeline={"commit_max_events": 1000}
    )


def _table(settings: Settings, name: str, cols: tuple[str, ...]) -> pa.Table:
    table = open_catalog(settings).load_table(table_id(settings, name))
    return table.scan(selected_fields=cols).to_arrow().sort_by([(c, "ascending") for c in cols])


EVENT_COLS = ("event_id", "source_stream", "source_offset", "source_index", "user_id", "properties")
FAILED_COLS = ("source_stream", "source_offset", "error_type", "raw")


def _run(settings: Settings, paths: list[str], head: bool, max_chunks: int = 5) -> tuple[int, int]:
    source = FilesSource(paths, chunk_bytes=CHUNK)
    start = HeadStart(source, decode_options(settings), max_chunks=max_chunks) if head else None
    stats = Pipeline(settings, source).run(once=True, head_start=start)
    return stats.events, stats.failed


def test_a_head_start_gives_the_rows_a_plain_run_gives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _write_inputs(tmp_path)
    plain, ahead = _settings(tmp_path / "plain"), _settings(tmp_path / "ahead")
    assert _run(plain, paths, head=False) == (2994, 4)
    with caplog.at_level(logging.INFO, logger="clicklake.pipeline"):
        assert _run(ahead, paths, head=True) == (2994, 4)
    assert "event=head_start chunks=5 " in caplog.text  # it was used, not dropped
    assert _table(ahead, EVENTS, EVENT_COLS).equals(_table(plain, EVENTS, EVENT_COLS))
    assert _table(ahead, FAILED_EVENTS, FAILED_COLS).equals(_table(plain, FAILED_EVENTS, FAILED_COLS))

    # Run again: the run resumes at the end of both files, so the head start is dropped and
    # nothing is landed twice.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clicklake.pipeline"):
        assert _run(ahead, paths, head=True) == (0, 0)
    assert "event=head_start_dropped chunks=5" in caplog.text
    assert _table(ahead, EVENTS, EVENT_COLS).equals(_table(plain, EVENTS, EVENT_COLS))


def test_a_head_start_spanning_files_reads_on_after_it(tmp_path: Path) -> None:
    """More chunks than the first file has: the run reads on in the second file after them."""
    paths = _write_inputs(tmp_path)
    plain, ahead = _settings(tmp_path / "plain"), _settings(tmp_path / "ahead")
    first_file_chunks = -(-Path(paths[0]).stat().st_size // CHUNK)
    assert _run(plain, paths, head=False) == _run(ahead, paths, head=True, max_chunks=first_file_chunks + 3)
    assert _table(ahead, EVENTS, EVENT_COLS).equals(_table(plain, EVENTS, EVENT_COLS))


def test_the_head_start_stops_at_its_caps(tmp_path: Path) -> None:
    paths = _write_inputs(tmp_path)
    settings = _settings(tmp_path / "d")
    by_chunks = HeadStart(FilesSource(paths, chunk_bytes=CHUNK), decode_options(settings), max_chunks=3)
    assert by_chunks.wait(60)  # it stopped by itself
    items, after = by_chunks.take({})
    assert len(items) == 3
    assert after == {paths[0]: items[-1].end}
    assert items[0].end == items[1].end - items[1].nbytes  # consecutive chunks

    by_bytes = HeadStart(FilesSource(paths, chunk_bytes=CHUNK), decode_options(settings), max_bytes=1)
    assert by_bytes.wait(60)
    assert len(by_bytes.take({})[0]) == 1


def test_a_source_that_fails_in_the_head_start_fails_in_the_run(tmp_path: Path) -> None:
    """The head start swallows nothing: the pipeline's own read meets the error and raises it."""
    settings = _settings(tmp_path / "d")
    gone = tmp_path / "gone.ndjson"
    gone.write_bytes(b"{}\n")
    source = FilesSource([str(gone)], chunk_bytes=CHUNK)
    gone.unlink()  # after the source checked it
    start = HeadStart(source, decode_options(settings))
    assert start.wait(60)
    with pytest.raises(Exception, match=r"cannot open input file .*gone\.ndjson"):
        Pipeline(settings, source).run(once=True, head_start=start)


def test_pandas_is_not_imported_by_pyarrows_probe_but_still_there_when_asked_for() -> None:
    # In a fresh interpreter (this one imported pandas long ago): the probe finds no pandas,
    # converting Python objects does not import it, and asking for pandas objects does; while
    # a thread is refused, another thread importing pandas is not.
    code = textwrap.dedent(
        """
        import sys, threading
        import pyarrow as pa
        from clicklake.engines import head_start

        head_start.skip_pandas_probe()  # the guard is not installed: no probe
        assert head_start._GUARD not in sys.meta_path
        head_start.install_pandas_guard()
        head_start.install_pandas_guard()
        assert sys.meta_path.count(head_start._GUARD) == 1
        head_start.skip_pandas_probe()
        assert not head_start._GUARD.refusing
        pa.array([1, 2]); pa.table({"a": [1]})
        assert "pandas" not in sys.modules, "imported by the probe"
        frame = pa.table({"a": [1, 2]}).to_pandas()
        assert "pandas" in sys.modules and list(frame["a"]) == [1, 2]
        import pandas as pd
        assert pa.array(pd.Series([1, None], dtype="Int64")).to_pylist() == [1, None]
        assert pa.Table.from_pandas(pd.DataFrame({"x": [1.5]})).column("x").to_pylist() == [1.5]

        del sys.modules["pandas"]
        head_start._GUARD.refusing.add(threading.get_ident())
        got = []
        t = threading.Thread(target=lambda: got.append(__import__("pandas")))
        t.start(); t.join()
        assert got, "another thread could not import pandas"
        del sys.modules["pandas"]
        try:
            __import__("pandas")
        except ImportError as exc:
            assert "not probed" in str(exc)
        else:
            raise AssertionError("the refused thread imported pandas")
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_head_start_begins_before_the_heavy_imports(tmp_path: Path) -> None:
    # What `clicklake run --source files` does before the head start's thread begins (the
    # settings, the source, the decode options) imports none of what the thread imports itself:
    # those imports are the start-up the thread is there to overlap.
    data = tmp_path / "in.ndjson"
    data.write_text('{"type":"track","event":"x","messageId":"m","anonymousId":"a"}\n')
    code = textwrap.dedent(
        f"""
        import sys
        from clicklake.config import load_settings
        from clicklake.engines.head_start import decode_options
        from clicklake.sources.files import FilesSource

        settings = load_settings()
        FilesSource([{str(data)!r}], chunk_bytes=settings.pipeline.read_chunk_bytes)
        decode_options(settings)
        heavy = sorted(m for m in ("duckdb", "numpy", "pyarrow", "pyiceberg") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
