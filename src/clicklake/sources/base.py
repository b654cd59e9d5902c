"""What every source yields, and how positions are kept.

A *position* maps a stream name (a spool segment, a file path, a Kafka partition) to the offset
of the next unread byte (or message) in it. A table's checkpoint is such a mapping; a row from
stream ``s`` at offset ``o`` is already in a table when ``o < checkpoint[s]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # only annotations: a run's head start reads files before numpy is imported
    import numpy as np
    import numpy.typing as npt

Position = dict[str, int]
EnvelopeMode = Literal["spool", "segment"]


@dataclass(frozen=True)
class Chunk:
    """Complete lines from one stream.

    Attributes:
        stream: The stream name (spool segment file name, absolute file path, Kafka partition).
        start: Offset of the first byte of ``data`` in the stream.
        data: One or more complete lines; the last may lack its newline at the end of a file.
        envelope: ``"spool"`` when each line is a collector envelope, ``"segment"`` when it is a
            bare Segment call or batch (files).
        line_offsets: For message logs (Kafka), the offset of each line in ``data`` (one message,
            one line); ``None`` when lines are at byte offsets ``start + i``.
        next_offset: For message logs, the offset after the last line; ``None`` for byte streams.
    """

    stream: str
    start: int
    data: bytes
    envelope: EnvelopeMode
    line_offsets: npt.NDArray[np.int64] | None = None
    next_offset: int | None = None

    @property
    def end(self) -> int:
        if self.next_offset is not None:
            return self.next_offset
        return self.start + len(self.data)


class Source(Protocol):
    """A resumable reader of chunks."""

    name: str

    def chunks(self, start: Mapping[str, int]) -> Iterator[Chunk]:
        """Yield chunks from ``start`` on (streams absent from it are read from offset 0)."""
        ...

    def total_bytes(self) -> int | None:
        """Bytes readable now, for progress bars (``None`` if unknown)."""
        ...

    def committed(self, position: Mapping[str, int]) -> None:
        """Told the smallest position every table has committed (the spool deletes segments)."""
        ...

    def prune(self, position: Mapping[str, int]) -> Position:
        """``position`` without streams that are gone for good (deleted spool segments)."""
        ...


def min_position(positions: Iterable[Mapping[str, int]]) -> Position:
    """The stream-wise minimum of several positions; a stream absent from any one is at 0."""
    plist = list(positions)
    if not plist:
        return {}
    keys = set().union(*plist)
    return {k: min(p.get(k, 0) for p in plist) for k in keys}
