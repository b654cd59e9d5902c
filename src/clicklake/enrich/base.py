"""What an enrichment step is.

A step is a callable ``RecordBatch -> RecordBatch`` that returns the same rows, in the same
order, with its own columns appended (or, for privacy steps, some columns rewritten). It
declares the columns it adds, so the ``events`` schema can grow by schema evolution, and it
computes per unique value (user agent, IP, URL) rather than per row.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.events.schema import Column

EnrichFn = Callable[[pa.RecordBatch], pa.RecordBatch]
V = TypeVar("V")


@dataclass(frozen=True)
class Step:
    """One step of the chain.

    Attributes:
        name: The config name (``url``, ``bots``, ...).
        fn: The function; pure, no I/O per batch (load lookup data when the step is built).
        columns: The columns it appends, in order.
        state: What the step keeps between batches, for the engine to restore after a restart
            (the dedup window); ``None`` for stateless steps.
    """

    name: str
    fn: EnrichFn
    columns: tuple[Column, ...] = ()
    state: object = None

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return self.fn(batch)


_local = threading.local()


def thread_connection() -> duckdb.DuckDBPyConnection:
    """This thread's DuckDB connection for the steps' SQL over Arrow batches (one thread each:
    the engine runs steps on several threads at once)."""
    con: duckdb.DuckDBPyConnection | None = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect(config={"threads": 1})
    return con


def append_columns(batch: pa.RecordBatch, columns: dict[str, pa.Array]) -> pa.RecordBatch:
    """``batch`` with ``columns`` appended (or replaced, when a column of that name exists)."""
    names = list(batch.schema.names)
    arrays = list(batch.columns)
    fields = list(batch.schema)
    for name, arr in columns.items():
        field = pa.field(name, arr.type)
        if name in names:
            i = names.index(name)
            arrays[i] = arr
            fields[i] = field
        else:
            names.append(name)
            arrays.append(arr)
            fields.append(field)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


ENCODINGS_KEPT = 8
"""Dictionary encodings each thread remembers (:func:`encode`): the columns of one batch that
several steps read (``page_url``, ``page_referrer``, ``user_agent``, ``context``,
``user_ipaddress``, ``user_id``, ``traits``), so at most about one batch's worth is held."""


class Encoded:
    """A string column as its distinct values and, per row, the index of its value (null: null).

    Attributes:
        dictionary: The distinct non-null values, in order of first appearance.
        indices: Per row, an ``int32`` index into ``dictionary``; null where the value is null.
    """

    __slots__ = ("_values", "dictionary", "indices", "source")

    def __init__(self, source: pa.Array, dictionary: pa.Array, indices: pa.Array) -> None:
        self.source = source  # held, so the buffers that identify it are never reused meanwhile
        self.dictionary = dictionary
        self.indices = indices
        self._values: list[Any] | None = None

    def values(self) -> list[Any]:
        """``dictionary`` as Python values (converted once, shared by the steps that ask)."""
        if self._values is None:
            self._values = self.dictionary.to_pylist()
        return self._values


def _identity(values: pa.Array) -> tuple[object, ...]:
    """What makes two arrays the same data: their type, place and buffers' addresses.

    Arrow arrays are immutable, so while one of them is held (and its buffers cannot be freed
    and reused) another array with the same identity holds the very same values.
    """
    return (
        values.type,
        values.offset,
        len(values),
        tuple(b.address if b is not None else 0 for b in values.buffers()),
    )


def encode(values: pa.Array | pa.ChunkedArray, *, keep: bool = True) -> Encoded:
    """``pc.dictionary_encode`` of a column, computed once per thread for the same data.

    Several steps look up the same columns of a batch (``page_url`` in url, dedup, referrer and
    campaign; ``context`` in dedup, campaign and ip_anonymization; ``user_agent``,
    ``user_ipaddress``): the first one hashes the column, the next ones reuse its encoding.
    Each thread remembers its last :data:`ENCODINGS_KEPT` encodings (the engine runs a batch's
    whole chain on one thread), holding the source arrays so their identity stays valid.

    Args:
        values: A column (a chunked one is combined first).
        keep: Remember the encoding for the next steps; false for a column only this call
            reads (a step's own intermediate), so it does not push out one that is shared.

    Returns:
        Its encoding; do not modify it.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    memo: OrderedDict[tuple[object, ...], Encoded] | None = getattr(_local, "encodings", None)
    if memo is None:
        memo = _local.encodings = OrderedDict()
    key = _identity(values)
    found = memo.get(key)
    if found is not None:
        memo.move_to_end(key)
        return found
    encoded = pc.dictionary_encode(values)
    out = Encoded(values, encoded.dictionary, encoded.indices)
    if not keep:
        return out
    memo[key] = out
    if len(memo) > ENCODINGS_KEPT:
        memo.popitem(last=False)
    return out


def forget_encodings() -> None:
    """Drop this thread's remembered encodings (the chain does, once a batch is through it)."""
    memo: OrderedDict[tuple[object, ...], Encoded] | None = getattr(_local, "encodings", None)
    if memo is not None:
        memo.clear()


def spread(values: pa.Array | list[Any], encoded: Encoded, type: pa.DataType | None = None) -> pa.Array:
    """Per-distinct-value results (aligned with ``encoded.dictionary``) as a per-row column."""
    if not isinstance(values, pa.Array):
        values = pa.array(values, type=type)
    if values.null_count == len(values):  # e.g. no URL of the batch has a fragment: no take
        return pa.nulls(len(encoded.indices), values.type)
    return pc.take(values, encoded.indices)


def unique_map(
    values: pa.Array,
    fn: Callable[[str], tuple[object, ...]],
    types: tuple[pa.DataType, ...],
    *,
    keep: bool = True,
) -> list[pa.Array]:
    """Apply ``fn`` once per distinct value of a string column and spread the results back.

    Args:
        values: A string column (nulls allowed: they map to nulls).
        fn: Called once per distinct non-null value; returns one item per output column.
        types: The Arrow type of each output column.
        keep: Whether other steps may read the same column (see :func:`encode`).

    Returns:
        One array per output column, aligned with ``values``.
    """
    encoded = encode(values, keep=keep)
    results = [fn(v) for v in encoded.values()]
    columns = list(zip(*results, strict=True)) if results else [() for _ in types]
    return [spread(pa.array(col, type=t), encoded) for col, t in zip(columns, types, strict=True)]


def contains_literal(values: pa.Array, literal: str) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Whether each value of a string column contains ``literal`` (null: false).

    One byte search over the column's data buffer, instead of Arrow's ``match_substring``
    (several times slower on long values such as the JSON ``context``).

    Args:
        values: A ``string`` or ``large_string`` array.
        literal: A non-empty substring.

    Returns:
        One boolean per value.
    """
    n = len(values)
    found = np.zeros(n, dtype=bool)
    if n == 0:
        return found
    width = np.int64 if pa.types.is_large_string(values.type) else np.int32
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width)[values.offset : values.offset + n + 1].astype(np.int64)
    if data_buf is None:
        return found
    data = memoryview(data_buf)[offsets[0] : offsets[-1]].tobytes()
    needle = literal.encode("utf-8")
    base = int(offsets[0])
    hits: list[int] = []
    at = data.find(needle)
    while at >= 0:
        hits.append(at + base)
        at = data.find(needle, at + 1)
    if hits:
        starts = np.asarray(hits, dtype=np.int64)
        row = np.searchsorted(offsets, starts, side="right") - 1
        inside = starts + len(needle) <= offsets[row + 1]
        found[row[inside]] = True
    if values.null_count:
        found &= np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return found


class BoundedCache(Generic[V]):
    """Results per distinct value, kept across batches, at most ``size`` of them.

    When it would outgrow ``size`` it forgets its oldest entries (at least a quarter at once, so
    the cost of forgetting is spread over many batches).
    """

    def __init__(self, size: int):
        self.size = size
        self._data: dict[str, V] = {}

    def get_many(self, values: Sequence[str], compute: Callable[[list[str]], Sequence[V]]) -> list[V]:
        """The result for each of ``values`` (distinct), computing the missing ones in one call.

        Args:
            values: Distinct keys.
            compute: Given the keys not cached yet, returns their results in the same order.

        Returns:
            One result per value, in order.
        """
        data = self._data
        missing = [v for v in values if v not in data]
        if not missing:
            return [data[v] for v in values]
        found = dict(zip(missing, compute(missing), strict=True))
        out = [data[v] if v in data else found[v] for v in values]
        overflow = len(data) + len(found) - self.size
        if overflow > 0:
            for key in list(data)[: max(overflow, self.size // 4)]:
                del data[key]
        if len(found) <= self.size:
            data.update(found)
        return out

    def __len__(self) -> int:
        return len(self._data)
