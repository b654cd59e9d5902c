"""Group commit: concurrent requests share one spool append and one fsync.

Each request hands its line to :meth:`GroupCommitter.submit` and waits. One writer task takes
everything queued so far (up to a group limit), appends it with a single
:meth:`SpoolWriter.append` on a dedicated thread, and then releases all of those requests at
once. While one group is being fsynced the next one gathers, so the fsync rate, not the request
rate, bounds the work, and a request is answered only once its line is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from clicklake.collector.metrics import CollectorMetrics

log = logging.getLogger("clicklake.collector")


class LogWriter(Protocol):
    """The durable log the collector writes to: the spool or Kafka."""

    kind: str

    def append(self, lines: Sequence[bytes]) -> None:
        """Make ``lines`` durable, or raise (then none of them may be acknowledged)."""
        ...

    def close(self) -> None: ...


class Unavailable(Exception):
    """The line could not be made durable now; the client should retry (503).

    Args:
        reason: A short machine-readable reason (``spool_write_failed``, ``queue_full``, ...).
        message: What happened, for the client and the log.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Item:
    line: bytes
    future: asyncio.Future[None]


class GroupCommitter:
    """Queues lines from concurrent requests and appends them to the spool in groups.

    Args:
        writer: The spool writer (owned: closed by :meth:`close`).
        metrics: Where group sizes and fsync latencies are recorded.
        max_queue_lines: Above this many waiting lines, :meth:`submit` refuses (log behind).
        max_queue_bytes: Above this many waiting bytes, :meth:`submit` refuses.
        max_group_lines: Most lines per append.
        max_group_bytes: Most bytes per append.
    """

    def __init__(
        self,
        writer: LogWriter,
        metrics: CollectorMetrics,
        *,
        max_queue_lines: int,
        max_queue_bytes: int,
        max_group_lines: int,
        max_group_bytes: int,
    ):
        self.writer = writer
        self.metrics = metrics
        self.max_queue_lines = max_queue_lines
        self.max_queue_bytes = max_queue_bytes
        self.max_group_lines = max_group_lines
        self.max_group_bytes = max_group_bytes
        self._pending: list[_Item] = []
        self._pending_bytes = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clicklake-spool")
        self.last_error: str = ""

    @property
    def queued_lines(self) -> int:
        return len(self._pending)

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="clicklake-group-commit")

    async def submit(self, line: bytes) -> None:
        """Queue one line and return once it is durable.

        Raises:
            Unavailable: The queue is over its bound, the committer is closing, or the append
                failed (nothing of this line was acknowledged).
        """
        if self._closing:
            raise Unavailable("shutting_down", "the collector is shutting down")
        if (
            len(self._pending) >= self.max_queue_lines
            or self._pending_bytes + len(line) > self.max_queue_bytes
        ):
            raise Unavailable("queue_full", "the spool writer is behind; retry later")
        self.start()
        assert self._wake is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(line, future))
        self._pending_bytes += len(line)
        self.metrics.queue_lines.set(len(self._pending))
        self._wake.set()
        # Shielded: a client that disconnects must not cancel the future others share the group with.
        await asyncio.shield(future)

    def _take_group(self) -> list[_Item]:
        n = 0
        size = 0
        for item in self._pending:
            if n and (n >= self.max_group_lines or size + len(item.line) > self.max_group_bytes):
                break
            n += 1
            size += len(item.line)
        group = self._pending[:n]
        del self._pending[:n]
        self._pending_bytes -= size
        self.metrics.queue_lines.set(len(self._pending))
        return group

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group = self._take_group()
                lines = [item.line for item in group]
                t0 = time.perf_counter()
                error: BaseException | None = None
                try:
                    await loop.run_in_executor(self._executor, self.writer.append, lines)
                except Exception as exc:  # any failure to append means: not durable, retry later
                    error = exc
                elapsed = time.perf_counter() - t0
                if error is None:
                    self.last_error = ""
                    self.metrics.group_lines.observe(len(group))
                    self.metrics.fsync_seconds.observe(elapsed)
                    for item in group:
                        if not item.future.done():
                            item.future.set_result(None)
                else:
                    self.last_error = str(error)
                    self.metrics.append_errors.inc()
                    log.warning("event=spool_append_failed lines=%d error=%r", len(group), str(error))
                    kind = self.writer.kind
                    exc_out = Unavailable(
                        f"{kind}_write_failed", f"the {kind} cannot be written; retry later"
                    )
                    for item in group:
                        if not item.future.done():
                            item.future.set_exception(exc_out)
                            # Mark retrieved so a cancelled waiter leaves no "never retrieved" warning.
                            item.future.exception()
            if self._closing and not self._pending:
                return

    async def close(self) -> None:
        """Refuse new lines, write every queued one, then close the spool writer."""
        self._closing = True
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)
        self.writer.close()
