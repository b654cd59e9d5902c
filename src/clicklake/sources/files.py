"""NDJSON files (optionally gzip) as a source: one stream per file, position = byte offset.

For gzip files the offset counts decompressed bytes; resuming decompresses and skips.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from clicklake.exceptions import InputError
from clicklake.sources.base import Chunk

_TAIL = 64 * 1024  # bytes read past a chunk at a time to find where its last line ends
SUFFIXES = (".ndjson", ".jsonl", ".json", ".ndjson.gz", ".jsonl.gz", ".json.gz", ".gz")


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files named, and the NDJSON files inside directories named, sorted and checked.

    Raises:
        InputError: A path does not exist, is not readable, or a directory holds no NDJSON.
    """
    if not paths:
        raise InputError("no input files given: pass one or more NDJSON files or directories")
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                c
                for c in p.iterdir()
                if c.is_file() and c.name.endswith(SUFFIXES) and c.name != "manifest.json"
            )
            if not found:
                raise InputError(f"{p} is a directory with no .ndjson/.jsonl/.json(.gz) files in it")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"input file {p} does not exist")
    for p in out:
        if not os.access(p, os.R_OK):
            raise InputError(f"input file {p} is not readable (check its permissions)")
    return [p.resolve() for p in out]


def _open(path: Path) -> BinaryIO:
    try:
        if path.name.endswith(".gz"):
            # gzip.open owns the file: a GzipFile over a file object leaves it open on close.
            return gzip.open(path, "rb")  # type: ignore[return-value]
        f: BinaryIO = path.open("rb")
        return f
    except OSError as exc:
        raise InputError(f"cannot open input file {path}: {exc}") from exc


class FilesSource:
    """Reads NDJSON files in the order given.

    Args:
        paths: Files and directories (see :func:`expand_paths`).
        chunk_bytes: How much to read at a time.
    """

    name = "files"

    def __init__(self, paths: Sequence[str | Path], chunk_bytes: int = 16 << 20):
        self.paths = expand_paths(paths)
        self.chunk_bytes = chunk_bytes
        self._sizes: dict[str, int] = {}

    def chunks(self, start: Mapping[str, int]) -> Iterator[Chunk]:
        for path in self.paths:
            stream = str(path)
            offset = start.get(stream, 0)
            done = self._sizes.get(stream)
            if done is not None and offset >= done:
                continue
            try:
                with _open(path) as f:
                    yield from self._read(f, stream, offset)
            except (OSError, EOFError, zlib.error) as exc:
                raise InputError(f"cannot read input file {path}: {exc}") from exc

    def _read(self, f: BinaryIO, stream: str, offset: int) -> Iterator[Chunk]:
        if not isinstance(f, gzip.GzipFile):
            yield from self._pread(f.fileno(), stream, offset)
            return
        _skip(f, offset)
        while True:
            buf = f.read(self.chunk_bytes)
            if not buf:
                break
            if buf[-1:] != b"\n":
                # Complete the last line (one copy of the chunk, not a head and a tail carried
                # into the next read); the last line of a file may lack its newline.
                buf += f.readline()
            yield Chunk(stream, offset, buf, "segment")
            offset += len(buf)
        self._sizes[stream] = offset

    def _pread(self, fd: int, stream: str, offset: int) -> Iterator[Chunk]:
        """Chunks of a plain file, each read with one ``pread`` of exactly its whole lines: the
        end of the last line is found first in a small read past the chunk, so the chunk's bytes
        are never copied again to complete it."""
        while True:
            # Where the chunk's last line ends: from its last byte on (already a newline, or the
            # newline after it), as reading chunk_bytes and then the rest of the line would.
            size = self.chunk_bytes
            while True:
                tail = os.pread(fd, _TAIL, offset + size - 1)
                newline = tail.find(b"\n")
                if newline >= 0:
                    size += newline
                    break
                if len(tail) < _TAIL:  # the end of the file: the last line lacks its newline
                    size += max(len(tail) - 1, 0)
                    break
                size += _TAIL - 1
            buf = os.pread(fd, size, offset)
            if not buf:
                break
            yield Chunk(stream, offset, buf, "segment")
            offset += len(buf)
            if len(buf) < size:  # the file ended (or shrank) inside this read
                break
        self._sizes[stream] = offset

    def total_bytes(self) -> int | None:
        return sum(p.stat().st_size for p in self.paths)

    def prune(self, position: Mapping[str, int]) -> dict[str, int]:
        # Files never go away from the record: a file read once is never read again.
        return dict(position)

    def committed(self, position: Mapping[str, int]) -> None:
        return None


def _skip(f: io.BufferedIOBase | BinaryIO, n: int) -> None:
    while n > 0:
        got = f.read(min(n, 1 << 22))
        if not got:
            break
        n -= len(got)
