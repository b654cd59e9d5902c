"""What an enrichment step is.

A step is a callable ``RecordBatch -> RecordBatch`` that returns the same rows, in the same
order, with its own columns appended (or, for privacy steps, some columns rewritten). It
declares the columns it adds, so the ``events`` schema can grow by schema evolution, and it
computes per unique value (user agent, IP, URL) rather than per row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import duckdb
import pyarrow as pa

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


def unique_map(
    values: pa.Array, fn: Callable[[str], tuple[object, ...]], types: tuple[pa.DataType, ...]
) -> list[pa.Array]:
    """Apply ``fn`` once per distinct value of a string column and spread the results back.

    Args:
        values: A string column (nulls allowed: they map to nulls).
        fn: Called once per distinct non-null value; returns one item per output column.
        types: The Arrow type of each output column.

    Returns:
        One array per output column, aligned with ``values``.
    """
    import pyarrow.compute as pc

    encoded = (
        pc.dictionary_encode(values).combine_chunks()
        if isinstance(values, pa.ChunkedArray)
        else pc.dictionary_encode(values)
    )
    dictionary = encoded.dictionary.to_pylist()
    results = [fn(v) for v in dictionary]
    out = []
    for i, t in enumerate(types):
        dict_values = pa.array([r[i] for r in results], type=t)
        out.append(pc.take(dict_values, encoded.indices))
    return out


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
