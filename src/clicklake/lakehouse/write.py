"""Arrow table -> Iceberg data files, split by partition with one sort instead of one filter each.

PyIceberg's own writer filters the whole table once per partition value; a micro-batch of a
week of events touches ~100 partitions (days x user buckets), so that is ~100 scans. Here the
partition values are computed once with the table's own transforms, each batch's rows are
sorted by them once, and each partition's file is made of zero-copy slices of the sorted batches.

The files are written with PyIceberg's own pieces (schema projection with field ids, writer
options, column statistics), but what does not depend on the file is done once per call, not
once per file: with ~100 small files per commit, PyIceberg's per-file schema visitors cost more
CPU than the Parquet encoding itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import (
    _get_parquet_writer_kwargs,
    _to_requested_schema,
    bin_pack_arrow_table,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    pyarrow_to_schema,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
from pyiceberg.schema import Schema, sanitize_column_names
from pyiceberg.table import DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE, Table, TableProperties, WriteTask
from pyiceberg.table.locations import load_location_provider
from pyiceberg.typedef import Record
from pyiceberg.types import ListType, MapType, StructType, TimestampType, TimestamptzType
from pyiceberg.utils.concurrent import ExecutorFactory
from pyiceberg.utils.config import Config
from pyiceberg.utils.properties import property_as_int


def write_data_files(
    table: Table, df: pa.Table, target_bytes: int | None = None, presorted: bool = False
) -> list[DataFile]:
    """Write ``df`` as Parquet data files of ``table`` (not committed).

    Args:
        table: The Iceberg table (its current schema and default partition spec are used).
        df: Rows matching the table's Arrow schema.
        target_bytes: In-memory (Arrow) bytes per file; default the table's
            ``write.target-file-size-bytes``. Compaction passes its own.
        presorted: Each batch of ``df`` is already sorted by partition, as
            :func:`sort_by_partition` leaves it (the pipeline sorts each chunk on its decode
            workers): the files are the same, without a sorted copy of the whole commit.

    Returns:
        The data files, ready for a fast append.
    """
    meta = table.metadata
    schema = meta.schema()
    spec = meta.spec()
    target = target_bytes or property_as_int(
        meta.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    assert target is not None
    task_schema = pyarrow_to_schema(
        df.schema, name_mapping=schema.name_mapping, format_version=meta.format_version
    )
    write_file = _file_writer(table)
    write_uuid = uuid.uuid4()
    counter = iter(range(1 << 62))

    if spec.is_unpartitioned():
        df = _project(table, df, task_schema)
        tasks = [
            WriteTask(
                write_uuid=write_uuid, task_id=next(counter), record_batches=batches, schema=task_schema
            )
            for batches in bin_pack_arrow_table(df, target)
        ]
        return list(ExecutorFactory.get_or_create().map(write_file, tasks))

    # Each batch (mostly one decoded chunk) is sorted by partition on its own and projected to
    # the file schema once; a partition's rows are then its slice of each sorted batch, in batch
    # order: the same rows in the same order as one stable sort of the whole table, without first
    # copying every column into one chunk, and each take stays within one batch (a third less
    # CPU than one take over the whole commit).
    def sort(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[pa.Array], list[int]]:
        """``batch`` sorted by partition and projected, its sorted keys and where each run starts."""
        keys = _partition_keys(table, batch)
        if not presorted:
            order = _order(keys)
            batch = batch.take(order)
            keys = [pc.take(k, order) for k in keys]
        projected = _project(table, pa.Table.from_batches([batch]), task_schema)
        return projected.combine_chunks().to_batches()[0], keys, _run_starts(keys)

    parts: dict[tuple[Any, ...], list[pa.RecordBatch]] = {}
    part_bytes: dict[tuple[Any, ...], float] = {}  # estimated from each batch's bytes per row
    # Batches are sorted on the writer threads (the takes run without the GIL), then split in order.
    batches = [b for b in df.to_batches() if b.num_rows]
    for sorted_batch, sorted_keys, starts in ExecutorFactory.get_or_create().map(sort, batches):
        row_bytes = sorted_batch.nbytes / sorted_batch.num_rows
        for start, end in zip(starts, [*starts[1:], sorted_batch.num_rows], strict=True):
            value = tuple(k[start].as_py() for k in sorted_keys)
            parts.setdefault(value, []).append(sorted_batch.slice(start, end - start))
            part_bytes[value] = part_bytes.get(value, 0.0) + (end - start) * row_bytes
    tasks = []
    for value in sorted(parts, key=_nulls_last):
        key = PartitionKey(
            field_values=[
                PartitionFieldValue(field=field, value=v) for field, v in zip(spec.fields, value, strict=True)
            ],
            partition_spec=spec,
            schema=schema,
        )
        # One file unless the partition is over the target (the size of a sliced batch costs a
        # pass over it: the estimate spares one per slice, and the target is a proxy anyway).
        groups = (
            [parts[value]]
            if part_bytes[value] <= target
            else bin_pack_arrow_table(pa.Table.from_batches(parts[value]), target)
        )
        for batches in groups:
            tasks.append(
                WriteTask(
                    write_uuid=write_uuid,
                    task_id=next(counter),
                    record_batches=batches,
                    partition_key=key,
                    schema=task_schema,
                )
            )
    return list(ExecutorFactory.get_or_create().map(write_file, tasks))


def sort_by_partition(table: Table, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """``rows`` with each batch stably sorted by ``table``'s partition, as
    :func:`write_data_files` sorts it (pass ``presorted=True`` then), and the permutation:
    sorted row ``i`` is row ``order[i]`` of ``rows``.

    The pipeline sorts each chunk on its decode workers, so that a commit holds one copy of its
    rows, not a second sorted one beside it. Rows may be filtered afterwards (the order stays).
    """
    n = rows.num_rows
    if table.metadata.spec().is_unpartitioned() or n == 0:
        return rows, np.arange(n, dtype=np.int64)
    out, orders, start = [], [], 0
    for batch in rows.to_batches():
        order = _order(_partition_keys(table, batch))
        out.append(batch.take(order))
        orders.append(np.asarray(order, dtype=np.int64) + start)
        start += batch.num_rows
    return pa.Table.from_batches(out, schema=rows.schema), np.concatenate(orders)


def _partition_keys(table: Table, batch: pa.RecordBatch) -> list[pa.Array]:
    """The partition value of each row of ``batch``, one array per partition field."""
    schema = table.metadata.schema()
    spec = table.metadata.spec()
    return [
        field.transform.pyarrow_transform(source.field_type)(batch.column(source.name))
        for field in spec.fields
        for source in [schema.find_field(field.source_id)]
    ]


def _order(keys: list[pa.Array]) -> pa.Array:
    """Stable ascending order of rows by ``keys`` (nulls last)."""
    return pc.sort_indices(
        pa.table({f"k{i}": k for i, k in enumerate(keys)}),
        sort_keys=[(f"k{i}", "ascending") for i in range(len(keys))],
    )


def _nulls_last(value: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    """Sort key of a partition value: ascending, nulls after values (as Arrow sorts)."""
    return tuple((v is None, v if v is not None else 0) for v in value)


def _file_schema(table: Table) -> Schema:
    schema = table.metadata.schema()
    sanitized = sanitize_column_names(schema)
    return sanitized if sanitized != schema else schema


def _project(table: Table, df: pa.Table, task_schema: Schema) -> pa.Table:
    """``df`` in the table's file schema, with field ids: what PyIceberg does to each batch of
    each file, done once for the whole table."""
    downcast = Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE) or False
    fmt = FileFormatFactory.get(FileFormat.PARQUET)
    file_schema = _file_schema(table)
    batches = [
        _to_requested_schema(
            requested_schema=file_schema,
            file_schema=task_schema,
            batch=batch,
            downcast_ns_timestamp_to_us=downcast,
            include_field_ids=True,
            format_model=fmt,
        )
        for batch in df.to_batches()
    ]
    if not batches:
        return pa.Table.from_batches(
            [],
            schema=_to_requested_schema(
                requested_schema=file_schema,
                file_schema=task_schema,
                batch=pa.RecordBatch.from_pylist([], schema=df.schema),
                downcast_ns_timestamp_to_us=downcast,
                include_field_ids=True,
                format_model=fmt,
            ).schema,
        )
    return pa.Table.from_batches(batches)


#: Columns whose values hardly repeat within a data file: written without dictionary pages.
#: ``event_fingerprint`` is one per event (resends are dropped before the write).
UNIQUE_COLUMNS = frozenset(
    {
        "event_id",
        "event_fingerprint",
        "source_offset",
        "properties",
        "context",
        "traits",
        "raw",
        "error_message",
    }
)


def _file_writer(table: Table) -> Callable[[WriteTask], DataFile]:
    """A function writing one task (batches already in the file schema) as one Parquet data file,
    as PyIceberg's ``write_file`` does, with the per-table parts prepared once."""
    meta = table.metadata
    props = meta.properties
    fmt = FileFormat(props.get(TableProperties.WRITE_FILE_FORMAT, TableProperties.WRITE_FILE_FORMAT_DEFAULT))
    if fmt != FileFormat.PARQUET:
        raise ValueError(f"clicklake writes Parquet data files, not {fmt}")
    file_schema = _file_schema(table)
    writer_kwargs = _get_parquet_writer_kwargs(props)
    # Dictionary pages only where values repeat: on timestamps, ids and JSON documents the writer
    # would build a dictionary per column chunk only to give it up (a quarter of the write CPU).
    writer_kwargs.setdefault(
        "use_dictionary",
        [
            f.name
            for f in file_schema.fields
            if f.name not in UNIQUE_COLUMNS
            and not isinstance(f.field_type, (TimestampType, TimestamptzType, StructType, ListType, MapType))
        ],
    )
    row_group_size = property_as_int(
        properties=props,
        property_name=TableProperties.PARQUET_ROW_GROUP_LIMIT,
        default=TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT,
    )
    stats_plan = compute_statistics_plan(file_schema, props)
    id_mapping = parquet_path_to_id_mapping(file_schema)
    locations = load_location_provider(table_location=meta.location, table_properties=props)
    io = table.io

    def write(task: WriteTask) -> DataFile:
        arrow_table = pa.Table.from_batches(task.record_batches)
        file_path = locations.new_data_location(
            data_file_name=task.generate_data_file_filename("parquet"), partition_key=task.partition_key
        )
        out = io.new_output(file_path)
        with out.create(overwrite=True) as fos:
            writer = pq.ParquetWriter(
                fos, schema=arrow_table.schema, store_decimal_as_integer=True, **writer_kwargs
            )
            with writer:
                writer.write(arrow_table, row_group_size=row_group_size)
            # Every byte is written once the writer closes: the file's size, without asking the
            # storage for it (a stat per file here, a request on an object store).
            size = fos.tell()
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=writer.writer.metadata,
            stats_columns=stats_plan,
            parquet_column_mapping=id_mapping,
        )
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=file_path,
            file_format=FileFormat.PARQUET,
            partition=task.partition_key.partition if task.partition_key else Record(),
            file_size_in_bytes=size,
            sort_order_id=None,
            spec_id=meta.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )

    return write


def _run_starts(sorted_keys: list[pa.ChunkedArray | pa.Array]) -> list[int]:
    """Row indexes where any of the (sorted) key columns changes value, nulls included."""
    n = len(sorted_keys[0])
    if n == 0:
        return []
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in sorted_keys:
        arr = k.combine_chunks() if isinstance(k, pa.ChunkedArray) else k
        if pa.types.is_date(arr.type) or pa.types.is_timestamp(arr.type):
            # identity(date) partitions of model tables (compaction writes them through here)
            arr = arr.view(pa.int32() if pa.types.is_date32(arr.type) else pa.int64())
        valid = np.asarray(pc.is_valid(arr))
        values = np.asarray(pc.fill_null(arr, 0).cast(pa.int64()))
        change[1:] |= (values[1:] != values[:-1]) | (valid[1:] != valid[:-1])
    return [int(i) for i in np.flatnonzero(change)]
