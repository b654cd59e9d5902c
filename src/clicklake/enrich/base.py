"""What an enrichment step is.

A step is a callable ``RecordBatch -> RecordBatch`` that returns the same rows, in the same
order, with its own columns appended (or, for privacy steps, some columns rewritten). It
declares the columns it adds, so the ``events`` schema can grow by schema evolution, and it
computes per unique value (user agent, IP, URL) rather than per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from clicklake.events.schema import Column

EnrichFn = Callable[[pa.RecordBatch], pa.RecordBatch]


@dataclass(frozen=True)
class Step:
    """One step of the chain.

    Attributes:
        name: The config name (``url``, ``bots``, ...).
        fn: The function; pure, no I/O per batch (load lookup data when the step is built).
        columns: The columns it appends, in order.
    """

    name: str
    fn: EnrichFn
    columns: tuple[Column, ...] = ()

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return self.fn(batch)


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
