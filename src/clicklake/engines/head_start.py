"""A head start for the embedded pipeline: decode the first chunks while the process starts.

Starting ``clicklake run`` costs more than a second of imports and set-up on one core (PyIceberg
builds hundreds of pydantic models at import, the catalog is opened, tables are created or
evolved, enrichers load their lists) before the first chunk is read. Decoding needs none of
that, and the compiled decoder runs without the GIL, so a thread started first reads and
decodes the first chunks from the start of the source on the other core meanwhile.

The work is speculative: the pipeline learns where to resume only once its tables are open.
If that is the start of the source (nothing committed from it yet: a fresh load of files), it
takes the decoded chunks and reads on after them; otherwise it drops them. Decoding does not
depend on when it ran, so a row is the same either way (the receive time of a file event is its
decode time, as for any chunk). What the thread holds is capped in chunks and decoded bytes.

This module imports nothing heavy at import time: the thread imports the decoder itself, so its
imports too overlap the main thread's.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from clicklake.config import Settings
    from clicklake.events.options import DecodeOptions
    from clicklake.sources.base import Chunk, Position, Source

log = logging.getLogger("clicklake.pipeline")

# What the head start may hold: at most this many chunks and decoded bytes. A 32 MB chunk (the
# default read_chunk_bytes) of Segment events decodes in ~0.2 s on one core, so a start-up of
# ~1.2 s fills about five (1M-event bench: 5 chunks, 197k rows); smaller chunks fill more.
MAX_CHUNKS = 12
MAX_DECODED_BYTES = 256 * 1024 * 1024


def decode_options(settings: Settings, app_id: str | None = None) -> DecodeOptions:
    # Not from clicklake.events.decode: importing it here (DuckDB, pyarrow, PyIceberg's
    # transforms) would hold back the thread's start by ~0.3 s; the thread imports it itself.
    from clicklake.events.options import DecodeOptions

    return DecodeOptions(
        write_keys=dict(settings.collector.write_keys),
        default_app_id=app_id or settings.pipeline.default_app_id,
        max_event_bytes=settings.collector.max_event_bytes,
        max_request_bytes=settings.collector.max_request_bytes,
        max_future_s=settings.pipeline.max_future_s,
        max_age_days=settings.pipeline.max_age_days,
    )


@dataclass(frozen=True)
class Raw:
    """A decoded chunk, not yet split into good and failed rows nor enriched: where it ends in
    its stream, how many bytes it had, and every row decoded from it (failures included)."""

    stream: str
    end: int
    nbytes: int
    decoded: pa.Table


def decode_chunk(chunk: Chunk, options: DecodeOptions) -> Raw:
    """Decode one chunk: its lines (bad UTF-8 lines become failures) as rows, in source order."""
    import pyarrow as pa

    from clicklake.events.decode import decode, lines_of

    lines, bad_utf8 = lines_of(chunk)
    decoded = decode(lines, chunk.envelope, options, int(time.time() * 1_000_000))
    if bad_utf8 is not None:
        decoded = pa.concat_tables([decoded, bad_utf8])
    return Raw(chunk.stream, chunk.end, len(chunk.data), decoded)


def use_jemalloc() -> None:
    """Make jemalloc Arrow's allocator for this process, unless ``ARROW_DEFAULT_MEMORY_POOL``
    chose one. Every chunk allocates and frees a few hundred MB of Arrow buffers from several
    threads at once; at 1M events jemalloc (which returns freed pages after a decay) peaked
    ~100 MB lower than mimalloc and spent less CPU."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it
        return
    pa.set_memory_pool(pool)


class _PandasProbeGuard(importlib.abc.MetaPathFinder):
    """Finds no ``pandas`` for the threads in :attr:`refusing` (others import it as usual)."""

    def __init__(self) -> None:
        self.refusing: set[int] = set()

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "pandas" and threading.get_ident() in self.refusing:
            raise ImportError("pandas is not probed at start-up (clicklake.engines.head_start)")
        return None


_GUARD = _PandasProbeGuard()


def install_pandas_guard() -> None:
    """Put the guard first in ``sys.meta_path``, once per process (it stays: it only ever refuses
    a thread inside :func:`skip_pandas_probe`). Inserting is safe while other threads import
    (one iterating the list sees a finder twice at worst); removing is not (one could skip a
    finder), so it is never removed."""
    if _GUARD not in sys.meta_path:
        sys.meta_path.insert(0, _GUARD)


def skip_pandas_probe() -> None:
    """Let pyarrow's first look for pandas find none, unless pandas is already imported (or the
    guard is not installed).

    pyarrow imports pandas the first time it converts Python objects (``pa.array``), to tell
    pandas objects apart: ~0.3-0.45 CPU s at the start of every run, for a library the pipeline
    never uses. After a probe that found none, pyarrow imports pandas when a pandas object is
    actually asked for (``to_pandas``, ``Table.from_pandas``; ``pa.array`` of a pandas column
    goes through its ``__arrow_array__``), so a plugin using pandas still works. Only this
    thread is refused, only during the probe."""
    if "pandas" in sys.modules or _GUARD not in sys.meta_path:
        return
    import pyarrow as pa

    me = threading.get_ident()
    _GUARD.refusing.add(me)
    try:
        pa.array([0])
    finally:
        _GUARD.refusing.discard(me)


class HeadStart:
    """Decodes the first chunks of ``source`` (from its start) on a thread of its own, until
    :meth:`take` or the caps.

    Args:
        source: The pipeline's source; only its :meth:`~clicklake.sources.base.Source.chunks`
            is called, from the start, on the thread.
        options: How to decode (as the pipeline will).
        max_chunks: At most this many chunks are decoded ahead.
        max_bytes: Decoding stops once the decoded rows hold this many bytes.
    """

    def __init__(
        self,
        source: Source,
        options: DecodeOptions,
        max_chunks: int = MAX_CHUNKS,
        max_bytes: int = MAX_DECODED_BYTES,
    ):
        self._source = source
        self._options = options
        self._max_chunks = max_chunks
        self._max_bytes = max_bytes
        self._items: list[Raw] = []
        self._stop = threading.Event()
        install_pandas_guard()  # from the thread that starts the run, before its thread starts
        self._thread = threading.Thread(target=self._run, name="clicklake-head-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        use_jemalloc()
        skip_pandas_probe()
        held = 0
        chunks: Iterator[Chunk] = self._source.chunks({})
        try:
            for chunk in chunks:
                if self._stop.is_set():
                    return
                # A chunk begun is finished and kept: take() waits for it and hands it on.
                raw = decode_chunk(chunk, self._options)
                self._items.append(raw)
                held += raw.decoded.nbytes
                if len(self._items) >= self._max_chunks or held >= self._max_bytes:
                    return
        except Exception as exc:
            # Whatever failed here fails again in the pipeline's own read, with its handling.
            log.debug("event=head_start_stopped error=%r", exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the thread stopped by itself (a cap reached, the source read to its end,
        or an error); whether it did within ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def take(self, position: Position) -> tuple[list[Raw], Position]:
        """Stop decoding; the chunks decoded so far and the position after them when the
        pipeline resumes at the start of the source (``position`` is empty), else nothing and
        ``position`` unchanged (the decoded chunks are dropped)."""
        self._stop.set()
        self._thread.join()
        items, self._items = self._items, []
        if position or not items:
            if items:
                log.info("event=head_start_dropped chunks=%d resume_not_at_start=1", len(items))
            return [], position
        after: Position = {}
        for raw in items:
            after[raw.stream] = raw.end
        log.info(
            "event=head_start chunks=%d rows=%d bytes=%d",
            len(items),
            sum(r.decoded.num_rows for r in items),
            sum(r.nbytes for r in items),
        )
        return items, after

    def cancel(self) -> None:
        """Stop decoding and drop what was decoded (the pipeline did not start)."""
        self._stop.set()
        self._thread.join()
        self._items = []
