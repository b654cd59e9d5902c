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
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.conversions import to_bytes
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import (
    MetricModeTypes,
    _get_parquet_writer_kwargs,
    _primitive_to_physical,
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
from pyiceberg.transforms import BucketTransform
from pyiceberg.typedef import Record
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
)
from pyiceberg.utils.concurrent import ExecutorFactory
from pyiceberg.utils.config import Config
from pyiceberg.utils.properties import property_as_int
from pyiceberg.utils.truncate import truncate_upper_bound_binary_string, truncate_upper_bound_text_string

from clicklake.enrich import kernels


def write_data_files(
    table: Table,
    df: pa.Table,
    target_bytes: int | None = None,
    presorted: bool = False,
    small_files: bool = True,
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
        small_files: The files are a commit's, a few thousand rows each: the dictionary
            columns get :data:`DICTIONARY_CODEC` (snappy by default, see there). Compaction
            passes ``False``: its files are large and are what stays, every column gets the
            table's codec.

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
    write_file = _file_writer(table, small_files)
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
        _transform(field.transform, source.field_type, batch.column(source.name))
        for field in spec.fields
        for source in [schema.find_field(field.source_id)]
    ]


def _transform(transform: Any, source_type: Any, values: pa.Array) -> pa.Array:
    """PyIceberg's partition transform of ``values``. A bucket of strings (events'
    ``bucket(16, user_key)``) comes from the compiled kernel when it is built: the same values,
    ~16 ns a row against PyIceberg's ~120 ns, and the pipeline computes it twice per event (the
    sort on the decode workers, the split into files)."""
    if isinstance(transform, BucketTransform) and isinstance(source_type, StringType):
        fast = kernels.iceberg_bucket(values, transform.num_buckets)
        if fast is not None:
            return fast
    return transform.pyarrow_transform(source_type)(values)


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


#: Table property: the codec of the dictionary-encoded columns in the pipeline's files
#: (``write.parquet.compression-codec`` stays the codec of the others, where nearly all the bytes
#: are, and of every column in compacted files).
DICTIONARY_CODEC = "clicklake.write.parquet.dictionary-codec"
#: Their pages are small (dictionary indexes and a dictionary per column chunk, ~3,000 rows per
#: file at a commit a few minutes long) and many (two per column per file). Arrow's zstd makes a
#: new compression context for each page, and each context runs the ``cpuid`` instruction,
#: which a virtual machine traps: ~25 us per page, more than compressing it. Snappy has no
#: context: the writer spends a quarter less CPU per file for ~7 % more bytes. The default
#: when the table's codec is zstd; with any other, they get the table's codec.
DICTIONARY_CODEC_DEFAULT = "snappy"


def _codecs(
    writer_kwargs: dict[str, Any], dictionary_codec: str, dictionary: list[str], paths: list[str]
) -> dict[str, Any]:
    """The Parquet writer's arguments: the table's codec (and level) on every leaf column of
    ``paths`` (the file schema's Parquet paths), except ``dictionary_codec`` on the
    ``dictionary`` columns."""
    codec = writer_kwargs["compression"]
    if dictionary_codec == codec or not dictionary:
        return writer_kwargs
    level = writer_kwargs.get("compression_level")
    chosen = set(dictionary)
    return {
        **writer_kwargs,
        "compression": {p: dictionary_codec if p in chosen else codec for p in paths},
        # snappy takes no level: only the other columns get the table's
        "compression_level": None if level is None else {p: level for p in paths if p not in chosen},
    }


#: Iceberg types whose bounds :func:`_statistics` computes itself (their Parquet physical type
#: being the expected one); files with any other column (decimals, nested fields) go through
#: PyIceberg's own function.
_FAST_BOUNDS = (
    BooleanType,
    IntegerType,
    LongType,
    FloatType,
    DoubleType,
    DateType,
    TimeType,
    TimestampType,
    TimestamptzType,
    StringType,
    BinaryType,
)


@dataclass(frozen=True)
class _ColumnPlan:
    """What a data file's metadata records of one Parquet column (PyIceberg's plan, resolved)."""

    field_id: int
    counts: bool  # value and null counts (metrics mode not "none")
    bounds: bool  # lower and upper bounds (mode "truncate(n)" or "full")
    truncate: int | None  # bounds' length in characters (bytes) of a string (binary) column
    kind: str  # "string", "binary" or "other"
    serialize: Callable[[Any], bytes]


def _statistics(
    file_schema: Schema, props: dict[str, str], mapping: dict[str, int]
) -> Callable[[pq.FileMetaData, pa.Schema], dict[str, Any]]:
    """A function giving a written file's statistics, as PyIceberg's
    ``data_file_statistics_from_parquet_metadata(...).to_serialized_dict()`` gives them.

    Same numbers and bytes, at under a third of the CPU (~3.3 -> ~1.0 ms per file of the events'
    69 columns): PyIceberg resolves each column's metrics mode, makes an aggregator and a
    truncation transform (pydantic models) for every column of every file, ~1 CPU s for the ~300
    small files of 1M events. Here that is resolved once per file schema; what PyIceberg does
    per column is kept as is (the bounds' serialization, its truncation rules, the physical types
    it accepts). ``mapping``: ``parquet_path_to_id_mapping(file_schema)``."""
    plan = compute_statistics_plan(file_schema, props)
    by_schema: dict[pa.Schema, list[_ColumnPlan] | None] = {}

    def resolve(meta: pq.FileMetaData) -> list[_ColumnPlan] | None:
        columns = []
        parquet_schema = meta.schema
        for i in range(len(parquet_schema)):
            collector = plan[mapping[parquet_schema.column(i).path]]
            kind = collector.mode.type
            iceberg_type = collector.iceberg_type
            if kind in (MetricModeTypes.TRUNCATE, MetricModeTypes.FULL) and not (
                isinstance(iceberg_type, _FAST_BOUNDS)
                and parquet_schema.column(i).physical_type == _primitive_to_physical(iceberg_type)
            ):
                return None
            columns.append(
                _ColumnPlan(
                    field_id=collector.field_id,
                    counts=kind != MetricModeTypes.NONE,
                    bounds=kind in (MetricModeTypes.TRUNCATE, MetricModeTypes.FULL),
                    truncate=collector.mode.length,
                    kind="string"
                    if isinstance(iceberg_type, StringType)
                    else "binary"
                    if isinstance(iceberg_type, BinaryType)
                    else "other",
                    serialize=partial(to_bytes, iceberg_type),
                )
            )
        return columns

    def statistics(meta: pq.FileMetaData, schema: pa.Schema) -> dict[str, Any]:
        if schema not in by_schema:
            by_schema[schema] = resolve(meta)
        columns = by_schema[schema]
        if columns is None:
            return data_file_statistics_from_parquet_metadata(
                parquet_metadata=meta, stats_columns=plan, parquet_column_mapping=mapping
            ).to_serialized_dict()
        sizes: dict[int, int] = {}
        values: dict[int, int] = {}
        nulls: dict[int, int] = {}
        mins: dict[int, Any] = {}
        maxs: dict[int, Any] = {}
        invalid: set[int] = set()
        splits = []
        for r in range(meta.num_row_groups):
            row_group = meta.row_group(r)
            first = row_group.column(0)
            data, dictionary = first.data_page_offset, first.dictionary_page_offset
            splits.append(dictionary if first.has_dictionary_page and dictionary < data else data)
            for pos, col in enumerate(columns):
                chunk = row_group.column(pos)
                fid = col.field_id
                sizes[fid] = sizes.get(fid, 0) + chunk.total_compressed_size
                if not col.counts:
                    continue
                values[fid] = values.get(fid, 0) + chunk.num_values
                if not chunk.is_stats_set:
                    invalid.add(fid)
                    continue
                try:
                    stats = chunk.statistics
                    if stats.has_null_count:
                        nulls[fid] = nulls.get(fid, 0) + stats.null_count
                    if not col.bounds:
                        continue
                    low, high = stats.min, stats.max
                except pa.ArrowNotImplementedError:
                    invalid.add(fid)
                    continue
                # as PyIceberg's aggregator: the first value, then the least (greatest) non-null
                if fid not in mins or mins[fid] is None:
                    mins[fid] = low
                elif low is not None:
                    mins[fid] = min(low, mins[fid])
                if fid not in maxs or maxs[fid] is None:
                    maxs[fid] = high
                elif high is not None:
                    maxs[fid] = max(high, maxs[fid])
        for fid in invalid:
            mins.pop(fid, None)
            maxs.pop(fid, None)
            nulls.pop(fid, None)
        lower, upper = {}, {}
        for col in columns:
            fid = col.field_id
            low = mins.get(fid)
            if low is not None:
                lower[fid] = col.serialize(low if col.kind == "other" else low[: col.truncate])
            high = maxs.get(fid)
            if high is not None:
                if col.kind == "string":
                    high = truncate_upper_bound_text_string(high, col.truncate)
                elif col.kind == "binary":
                    high = truncate_upper_bound_binary_string(high, col.truncate)
                if high is not None:
                    upper[fid] = col.serialize(high)
        return {
            "record_count": meta.num_rows,
            "column_sizes": sizes,
            "value_counts": values,
            "null_value_counts": nulls,
            "nan_value_counts": {},
            "lower_bounds": lower,
            "upper_bounds": upper,
            "split_offsets": sorted(splits),
        }

    return statistics


def _file_writer(table: Table, small_files: bool = True) -> Callable[[WriteTask], DataFile]:
    """A function writing one task (batches already in the file schema) as one Parquet data file,
    as PyIceberg's ``write_file`` does, with the per-table parts prepared once (``small_files``:
    see :func:`write_data_files`)."""
    meta = table.metadata
    props = meta.properties
    fmt = FileFormat(props.get(TableProperties.WRITE_FILE_FORMAT, TableProperties.WRITE_FILE_FORMAT_DEFAULT))
    if fmt != FileFormat.PARQUET:
        raise ValueError(f"clicklake writes Parquet data files, not {fmt}")
    file_schema = _file_schema(table)
    writer_kwargs = _get_parquet_writer_kwargs(props)
    # Dictionary pages only where values repeat: on timestamps, ids and JSON documents the writer
    # would build a dictionary per column chunk only to give it up (a quarter of the write CPU).
    dictionary = [
        f.name
        for f in file_schema.fields
        if f.name not in UNIQUE_COLUMNS
        and not isinstance(f.field_type, (TimestampType, TimestamptzType, StructType, ListType, MapType))
    ]
    writer_kwargs["use_dictionary"] = dictionary
    codec = writer_kwargs["compression"]
    dictionary_codec = (
        props.get(DICTIONARY_CODEC, DICTIONARY_CODEC_DEFAULT if codec == "zstd" else codec)
        if small_files
        else codec
    )
    # The file schema's Parquet leaf paths (a struct's fields, a list's elements), as Arrow
    # names them: the codec is set per path, and the statistics map them to field ids.
    mapping = parquet_path_to_id_mapping(file_schema)
    file_kwargs = _codecs(writer_kwargs, dictionary_codec, dictionary, list(mapping))
    row_group_size = property_as_int(
        properties=props,
        property_name=TableProperties.PARQUET_ROW_GROUP_LIMIT,
        default=TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT,
    )
    statistics = _statistics(file_schema, props, mapping)
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
                fos, schema=arrow_table.schema, store_decimal_as_integer=True, **file_kwargs
            )
            with writer:
                writer.write(arrow_table, row_group_size=row_group_size)
            # Every byte is written once the writer closes: the file's size, without asking the
            # storage for it (a stat per file here, a request on an object store).
            size = fos.tell()
        file_stats = statistics(writer.writer.metadata, arrow_table.schema)
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
            **file_stats,
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
