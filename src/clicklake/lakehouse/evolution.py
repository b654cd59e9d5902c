"""Schema and partition evolution of the clicklake tables, in place, by Iceberg's own rules.

Allowed, as metadata-only commits: adding optional columns (new enrichers, promoted
properties), widening a type (``int -> long``, ``float -> double``), and changing the bucket
count of a ``bucket(N, col)`` partition field (Iceberg partition evolution: old files keep their
spec, new files use the new one, readers see both). Refused with a :class:`SchemaEvolutionError`
that says what to do instead: narrowing or changing a type, adding a required column or making
an optional one required, and changing what a table is partitioned by (another source column
or transform).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.transforms import BucketTransform
from pyiceberg.types import DoubleType, FloatType, IntegerType, LongType, NestedField

from clicklake.exceptions import SchemaEvolutionError

log = logging.getLogger("clicklake.lakehouse")

#: (from, to) type promotions Iceberg allows for primitive columns that clicklake uses.
_WIDENINGS = {(IntegerType, LongType), (FloatType, DoubleType)}


def _name(table: Table) -> str:
    return ".".join(table.name())


def evolve_columns(table: Table, wanted: Iterable[NestedField], hint: str = "") -> Table:
    """Make ``table`` hold every ``wanted`` column: add the missing ones, widen types.

    Args:
        table: The table.
        wanted: Columns (name, type, required) the writer needs.
        hint: Appended to refusals: where the wanted column comes from (a config key).

    Returns:
        The table, evolved when something changed (one schema update).

    Raises:
        SchemaEvolutionError: An incompatible change; nothing was changed.
    """
    schema = table.schema()
    add: list[NestedField] = []
    widen: list[NestedField] = []
    for want in wanted:
        have = schema.find_field(want.name) if want.name in schema.column_names else None
        if have is None:
            if want.required:
                raise SchemaEvolutionError(
                    f"cannot add required column {want.name} to {_name(table)}: the rows already "
                    f"written have no value for it; add it as an optional column{hint}"
                )
            add.append(want)
            continue
        if want.required and not have.required:
            raise SchemaEvolutionError(
                f"cannot make column {want.name} of {_name(table)} required: old rows may hold nulls; "
                f"keep it optional and check for nulls in a model or validation rule{hint}"
            )
        if have.field_type == want.field_type:
            continue
        pair = (type(have.field_type), type(want.field_type))
        if pair in _WIDENINGS:
            widen.append(want)
            continue
        narrowing = (pair[1], pair[0]) in _WIDENINGS
        raise SchemaEvolutionError(
            f"column {want.name} of {_name(table)} is {have.field_type}; changing it to {want.field_type} "
            f"is {'a narrowing' if narrowing else 'an incompatible'} type change that old data files "
            f"cannot follow. Keep it {have.field_type}, or write the new type under a new column "
            f"name (old rows read as null there){hint}"
        )
    if add or widen:
        with table.update_schema() as update:
            for f in add:
                update.add_column(f.name, f.field_type, doc=f.doc)
            for f in widen:
                update.update_column(f.name, field_type=f.field_type)
        log.info(
            "event=schema_evolved table=%s added=%s widened=%s",
            _name(table),
            ",".join(f.name for f in add),
            ",".join(f.name for f in widen),
        )
    return table


def evolve_partitioning(table: Table, wanted: PartitionSpec) -> Table:
    """Bring the table's partition spec to ``wanted`` where Iceberg partition evolution allows.

    Only the bucket count of a ``bucket`` field may change (``pipeline.event_buckets``); the new
    spec applies to files written from now on, old files keep theirs and read as before (and
    ``clicklake maintain compact`` rewrites them into the new spec).

    Args:
        table: The table.
        wanted: The spec the writer would create the table with (field ids are ignored).

    Returns:
        The table, evolved when the bucket count changed.

    Raises:
        SchemaEvolutionError: The partition sources or transforms differ otherwise.
    """
    current = table.spec()
    have = list(current.fields)
    want = list(wanted.fields)

    def shape(f: PartitionField) -> tuple[int, str]:
        kind = "bucket" if isinstance(f.transform, BucketTransform) else str(f.transform)
        return f.source_id, kind

    if [shape(f) for f in have] != [shape(f) for f in want]:
        schema = table.schema()

        def describe(fields: list[PartitionField]) -> str:
            return (
                ", ".join(f"{f.transform}({schema.find_column_name(f.source_id)})" for f in fields) or "none"
            )

        raise SchemaEvolutionError(
            f"{_name(table)} is partitioned by {describe(have)}, but this clicklake version partitions "
            f"it by {describe(want)}: changing a partition source or transform is refused (it would "
            "split the table's layout in ways models and retention do not expect). Only the bucket "
            "count evolves in place; for anything else create the table anew under another "
            "storage.namespace and backfill it"
        )
    changes = [
        (h, w)
        for h, w in zip(have, want, strict=True)
        if isinstance(h.transform, BucketTransform)
        and isinstance(w.transform, BucketTransform)
        and h.transform.num_buckets != w.transform.num_buckets
    ]
    if not changes:
        return table
    taken = {f.name for spec in table.metadata.specs().values() for f in spec.fields}
    with table.update_spec() as update:
        for h, _ in changes:
            update.remove_field(h.name)
        for _, w in changes:
            n = w.transform.num_buckets  # type: ignore[attr-defined]
            base = w.name
            # A name an older spec used for another bucket count cannot be reused for this one.
            reuse = any(
                f.name == base and isinstance(f.transform, BucketTransform) and f.transform.num_buckets == n
                for spec in table.metadata.specs().values()
                for f in spec.fields
            )
            name = base if reuse or base not in taken else f"{base}_{n}"
            update.add_field(table.schema().find_column_name(w.source_id) or "", w.transform, name)
    log.info(
        "event=partition_evolved table=%s %s",
        _name(table),
        " ".join(f"{h.name}:{h.transform}->{w.transform}" for h, w in changes),
    )
    return table
