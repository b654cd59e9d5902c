"""The enrichment steps' compiled kernels (``_ckernels.c``), when they are built, and the
writer's bucket transform.

Each function returns ``None`` when the kernel is not there (no compiler at install time, a
build older than this file, a big-endian machine) or does not take the input's types; the
caller then takes its DuckDB path, which gives the same results (the tests hold them to it).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pyarrow as pa

_CKERNELS_ABI = 2
try:
    from clicklake.enrich import _ckernels  # type: ignore[attr-defined]
except ImportError:
    _ckernels = None
# The hash reads 8 bytes at a time as DuckDB does on little-endian machines (all it runs on).
if getattr(_ckernels, "ABI", None) != _CKERNELS_ABI or sys.byteorder != "little":
    _ckernels = None


def available() -> bool:
    """Whether the compiled kernels are built and current."""
    return _ckernels is not None


def _spec(values: pa.Array) -> tuple[str, int, Any, Any, Any] | None:
    """How the kernels read one array, or ``None`` for a type they do not take."""
    t = values.type
    if pa.types.is_large_string(t):
        kind = "large_string"
    elif pa.types.is_string(t):
        kind = "string"
    elif (pa.types.is_timestamp(t) and t.unit == "us") or pa.types.is_int64(t):
        kind = "int64"
    else:
        return None
    buffers = values.buffers()
    validity = buffers[0] if values.null_count else None
    if kind == "int64":
        return (kind, values.offset, validity, None, buffers[1])
    return (kind, values.offset, validity, buffers[1], buffers[2])


def _combined(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _text(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, tuple[str, int, Any, Any, Any]] | None:
    """A string column as one array and how the kernels read it; ``None`` when the kernels are
    missing or the column is not strings."""
    if _ckernels is None:
        return None
    values = _combined(values)
    spec = _spec(values)
    if spec is None or spec[0] == "int64":
        return None
    return values, spec


def duckdb_hash(columns: list[pa.Array]) -> np.ndarray[Any, np.dtype[np.uint64]] | None:
    """DuckDB's ``hash(c1, c2, ...)`` of each row, bit for bit.

    Args:
        columns: Equal-length ``string``, ``large_string``, ``int64`` or ``timestamp[us]``
            arrays (a timestamp hashes as its microseconds since the epoch, as DuckDB's does).

    Returns:
        One ``uint64`` per row, or ``None`` when the kernel is missing or a type is another.
    """
    if _ckernels is None or not columns:
        return None
    arrays = [_combined(c) for c in columns]
    specs = [_spec(a) for a in arrays]
    if any(s is None for s in specs):
        return None
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("columns of different lengths")
    out = _ckernels.fingerprint(n, tuple(specs))
    return np.frombuffer(out, dtype=np.uint64)


def hex16(values: np.ndarray[Any, np.dtype[np.uint64]]) -> pa.Array | None:
    """Each 64-bit value as 16 lower-case hex digits (``printf('%016x')``), a ``large_string``
    array; ``None`` when the kernel is missing."""
    if _ckernels is None:
        return None
    n = len(values)
    text = _ckernels.hex16(np.ascontiguousarray(values, dtype=np.uint64), pa.allocate_buffer)
    offsets = np.arange(0, 16 * n + 1, 16, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), text)


def contains(text: pa.Array, literal: str) -> np.ndarray[Any, np.dtype[np.bool_]] | None:
    """Whether each row's ``text`` holds ``literal`` (null: false).

    Args:
        text: A string column.
        literal: A non-empty substring.

    Returns:
        One boolean per row, or ``None`` when the kernel is missing or ``text`` is not strings.
    """
    taken = _text(text)
    if taken is None:
        return None
    text, spec = taken
    out = _ckernels.contains(len(text), spec, literal.encode("utf-8"))
    return np.frombuffer(out, dtype=np.bool_)


def replace_quoted(text: pa.Array, old: pa.Array, new: pa.Array) -> pa.Array | None:
    """Each row's ``text`` with every ``"<old>"`` replaced by ``"<new>"``, or by ``null`` where
    ``new`` is null, left to right and non-overlapping, as DuckDB's ``replace`` does.

    A row whose ``text`` or ``old`` is null, or whose ``new`` equals ``old``, is kept as it is.

    Args:
        text: A string column (nulls stay null).
        old: Per row, the value to replace, without its quotes.
        new: Per row, its replacement.

    Returns:
        An array of ``text``'s type (``text`` itself when nothing was replaced), or ``None``
        when the kernel is missing or a type is not a string type.
    """
    if _ckernels is None:
        return None
    text, old, new = _combined(text), _combined(old), _combined(new)
    specs = [_spec(a) for a in (text, old, new)]
    if any(s is None or s[0] == "int64" for s in specs):
        return None
    n = len(text)
    if len(old) != n or len(new) != n:
        raise ValueError("columns of different lengths")
    # The new column's buffers come from Arrow's memory pool, as the rest of the batch's.
    out = _ckernels.replace_quoted(n, *specs, pa.allocate_buffer)
    if out is None:
        return text
    offsets, data = out
    validity = None
    if text.null_count:
        validity = text.is_valid().buffers()[1]
    result = pa.LargeStringArray.from_buffers(n, offsets, data, validity, text.null_count)
    return result if text.type == result.type else result.cast(text.type)


def iceberg_bucket(values: pa.Array | pa.ChunkedArray, num_buckets: int) -> pa.Array | None:
    """Iceberg's ``bucket[num_buckets]`` transform of strings: an ``int32`` array, null where
    ``values`` is null; what PyIceberg's transform returns, in ~16 ns a row against its ~120.

    Args:
        values: A ``string`` or ``large_string`` column.
        num_buckets: The bucket count (> 0).

    Returns:
        The bucket of each value, or ``None`` when the kernel is missing or ``values`` is not
        strings.
    """
    taken = _text(values)
    if taken is None:
        return None
    values, spec = taken
    out = _ckernels.bucket(len(values), spec, num_buckets)
    validity = values.is_valid().buffers()[1] if values.null_count else None
    return pa.Array.from_buffers(pa.int32(), len(values), [validity, pa.py_buffer(out)], values.null_count)
