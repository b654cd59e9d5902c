"""The spool: a directory of append-only NDJSON segments, the embedded durable log.

Segments are named ``seg-<16-digit sequence>.ndjson``. The writer appends to the newest one and
starts a new one when it reaches ``segment_max_bytes`` or ``segment_max_age_s``; a segment is
*sealed* once a newer one exists. ``append`` returns only after ``fsync``, so whatever the
collector acknowledges is on disk. Readers take complete lines only; a torn tail left by a crash
is cut off by the next writer before it starts a new segment (it was never acknowledged).
A segment is deleted once every table's checkpoint has passed its end.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from clicklake.exceptions import StorageError
from clicklake.sources.base import Chunk

SEGMENT_RE = re.compile(r"^seg-(\d{16})\.ndjson$")


def segment_name(seq: int) -> str:
    return f"seg-{seq:016d}.ndjson"


def list_segments(spool_dir: Path) -> list[str]:
    """Segment file names in order (oldest first)."""
    try:
        names = [p.name for p in spool_dir.iterdir() if SEGMENT_RE.match(p.name)]
    except FileNotFoundError:
        return []
    return sorted(names)


class SpoolWriter:
    """Appends lines to the spool with one fsync per call (callers batch to share it).

    Args:
        spool_dir: The spool directory (created if missing).
        segment_max_bytes: Rotate after a segment reaches this size.
        segment_max_age_s: Rotate after a segment has been open this long.

    Raises:
        StorageError: The directory cannot be created or written.
    """

    kind = "spool"

    def __init__(self, spool_dir: Path, segment_max_bytes: int = 64 << 20, segment_max_age_s: float = 60.0):
        self.spool_dir = spool_dir
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_s = segment_max_age_s
        self._lock = threading.Lock()
        try:
            spool_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create spool directory {spool_dir}: {exc}") from exc
        existing = list_segments(spool_dir)
        if existing:
            _cut_torn_tail(spool_dir / existing[-1])
            self._seq = int(SEGMENT_RE.match(existing[-1]).group(1)) + 1  # type: ignore[union-attr]
        else:
            self._seq = 1
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0

    def _open_new(self) -> None:
        path = self.spool_dir / segment_name(self._seq)
        self._seq += 1
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            # The new name must be durable too, or a crash could lose an acknowledged segment.
            dfd = os.open(self.spool_dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise StorageError(f"cannot create spool segment {path}: {exc}") from exc
        self._size = 0
        self._opened = time.monotonic()

    def append(self, lines: Sequence[bytes]) -> None:
        """Write newline-terminated lines and fsync them.

        Raises:
            StorageError: The write or fsync failed (full disk, read-only); nothing was
                acknowledged and the segment is sealed so no torn data is appended to.
        """
        data = b"".join(lines)
        if not data:
            return
        with self._lock:
            if self._fd is None or self._should_rotate():
                self._close_current()
                self._open_new()
            assert self._fd is not None
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except OSError as exc:
                # Whatever part was written is cut off by the next writer; seal this segment.
                self._close_current()
                raise StorageError(f"spool write failed: {exc}") from exc
            self._size += len(data)

    def _should_rotate(self) -> bool:
        return (
            self._size >= self.segment_max_bytes or time.monotonic() - self._opened >= self.segment_max_age_s
        )

    def _close_current(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def rotate(self) -> None:
        """Seal the current segment; the next append starts a new one."""
        with self._lock:
            self._close_current()

    def close(self) -> None:
        self.rotate()

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_torn_tail(path: Path) -> None:
    """Truncate a segment after its last newline (a line cut by a crash was never acked)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return
        with path.open("rb+") as f:
            back = min(size, 1 << 20)
            while True:
                f.seek(size - back)
                tail = f.read(back)
                nl = tail.rfind(b"\n")
                if nl >= 0 or back == size:
                    keep = size - back + nl + 1 if nl >= 0 else 0
                    break
                back = min(size, back * 4)
            if keep != size:
                f.truncate(keep)
                os.fsync(f.fileno())
    except OSError as exc:
        raise StorageError(f"cannot repair spool segment {path}: {exc}") from exc


class SpoolSource:
    """Reads complete lines from spool segments, oldest first.

    Args:
        spool_dir: The spool directory.
        chunk_bytes: How much to read at a time.
    """

    name = "spool"

    def __init__(self, spool_dir: Path, chunk_bytes: int = 16 << 20):
        self.spool_dir = spool_dir
        self.chunk_bytes = chunk_bytes

    def chunks(self, start: Mapping[str, int]) -> Iterator[Chunk]:
        segments = list_segments(self.spool_dir)
        for i, name in enumerate(segments):
            sealed = i < len(segments) - 1
            offset = start.get(name, 0)
            path = self.spool_dir / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if offset >= size:
                continue
            with path.open("rb") as f:
                f.seek(offset)
                pending = b""
                while True:
                    buf = f.read(self.chunk_bytes)
                    if not buf:
                        break
                    buf = pending + buf
                    cut = buf.rfind(b"\n") + 1
                    if cut == 0:
                        pending = buf
                        continue
                    yield Chunk(name, offset, buf[:cut], "spool")
                    offset += cut
                    pending = buf[cut:]
                if pending and sealed:
                    # A sealed segment never grows: its unterminated tail is one (torn) line.
                    yield Chunk(name, offset, pending, "spool")

    def total_bytes(self) -> int | None:
        total = 0
        for name in list_segments(self.spool_dir):
            try:
                total += (self.spool_dir / name).stat().st_size
            except FileNotFoundError:
                continue
        return total

    def lag(self, position: Mapping[str, int]) -> int:
        """Bytes of the spool beyond ``position`` (what is not yet committed, for the lag metric)."""
        total = 0
        for name in list_segments(self.spool_dir):
            try:
                total += max(0, (self.spool_dir / name).stat().st_size - position.get(name, 0))
            except FileNotFoundError:
                continue
        return total

    def prune(self, position: Mapping[str, int]) -> dict[str, int]:
        existing = set(list_segments(self.spool_dir))
        return {k: v for k, v in position.items() if k in existing}

    def committed(self, position: Mapping[str, int]) -> None:
        """Delete sealed segments every table has read to the end."""
        segments = list_segments(self.spool_dir)
        for name in segments[:-1]:
            path = self.spool_dir / name
            try:
                if position.get(name, 0) >= path.stat().st_size:
                    path.unlink()
            except FileNotFoundError:
                continue
