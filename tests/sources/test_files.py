"""The files source: chunks of whole lines, each at most one line past ``chunk_bytes``, the same
whether a file is plain or gzip, from any line start."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from clicklake.sources.files import FilesSource


def _reference(data: bytes, chunk_bytes: int, start: int) -> list[tuple[int, bytes]]:
    """Read ``chunk_bytes``, then the rest of the last line: the chunks the source must yield."""
    f = io.BytesIO(data)
    f.seek(start)
    out, offset = [], start
    while buf := f.read(chunk_bytes):
        if buf[-1:] != b"\n":
            buf += f.readline()
        out.append((offset, buf))
        offset += len(buf)
    return out


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.sampled_from([0, 1, 5, 70, 300, 70_000, 140_000]), max_size=30),
    final_newline=st.booleans(),
    chunk_bytes=st.sampled_from([1, 64, 1000, 65_536, 100_000, 1 << 20]),
    start_line=st.integers(min_value=0, max_value=30),
    gz=st.booleans(),
)
def test_chunks_are_whole_lines_from_any_line_start(
    tmp_path_factory: object,
    lines: list[int],
    final_newline: bool,
    chunk_bytes: int,
    start_line: int,
    gz: bool,
) -> None:
    data = b"\n".join(bytes([97 + i % 26]) * n for i, n in enumerate(lines)) + (
        b"\n" if final_newline else b""
    )
    starts = [0] + [i + 1 for i, c in enumerate(data) if c == 10]
    start = starts[min(start_line, len(starts) - 1)]
    directory = Path(tmp_path_factory.mktemp("f"))  # type: ignore[attr-defined]
    path = directory / ("e.ndjson.gz" if gz else "e.ndjson")
    path.write_bytes(gzip.compress(data) if gz else data)
    source = FilesSource([path], chunk_bytes=chunk_bytes)
    got = [(c.start, c.data) for c in source.chunks({str(path.resolve()): start})]
    assert got == _reference(data, chunk_bytes, start)
    assert {c.stream for c in source.chunks({})} <= {str(path.resolve())}
