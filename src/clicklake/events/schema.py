"""Iceberg and Arrow schemas of ``events`` and ``failed_events``, and their partition specs.

One list of columns drives both schemas, so they cannot drift apart. Every column is optional
in Iceberg: validation guarantees the core ones are set, and optional columns keep schema
evolution (adding enrichment columns) a metadata-only change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import BucketTransform, DayTransform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DoubleType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

Kind = Literal["string", "ts", "long", "int", "binary", "bool", "double"]

ICEBERG_TYPES: dict[str, IcebergType] = {
    "string": StringType(),
    "ts": TimestamptzType(),
    "long": LongType(),
    "int": IntegerType(),
    "binary": BinaryType(),
    "bool": BooleanType(),
    "double": DoubleType(),
}
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.large_string(),
    "ts": pa.timestamp("us", tz="UTC"),
    "long": pa.int64(),
    "int": pa.int32(),
    "binary": pa.large_binary(),
    "bool": pa.bool_(),
    "double": pa.float64(),
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    doc: str


EVENT_COLUMNS: tuple[Column, ...] = (
    Column("event_id", "string", "Segment messageId (client UUID, reused on retry)"),
    Column("event_type", "string", "track | page | screen | identify | group | alias"),
    Column("event_name", "string", "track: event; page/screen: name"),
    Column("app_id", "string", "the write key's app (tenant)"),
    Column("user_id", "string", "userId; numbers become strings"),
    Column("anonymous_id", "string", "anonymousId"),
    Column("session_id", "string", "context.sessionId or properties.session_id"),
    Column("user_key", "string", "coalesce(user_id, anonymous_id): partition and session key"),
    Column("group_id", "string", "groupId of group calls"),
    Column("previous_id", "string", "previousId of alias calls"),
    Column("dvce_created_tstamp", "ts", "timestamp (or originalTimestamp) from the device"),
    Column("dvce_sent_tstamp", "ts", "sentAt from the device"),
    Column("collector_tstamp", "ts", "when the collector received it"),
    Column("derived_tstamp", "ts", "collector - (sent - created): device clock skew removed"),
    Column("load_tstamp", "ts", "when the batch was committed"),
    Column("page_url", "string", "properties.url or context.page.url"),
    Column("page_path", "string", "properties.path or context.page.path"),
    Column("page_title", "string", "properties.title or context.page.title"),
    Column("page_referrer", "string", "properties.referrer or context.page.referrer"),
    Column("user_agent", "string", "context.userAgent, else the request's User-Agent"),
    Column("user_ipaddress", "string", "context.ip, else the request address"),
    Column("library_name", "string", "context.library.name"),
    Column("library_version", "string", "context.library.version"),
    Column("properties", "string", "properties as JSON"),
    Column("traits", "string", "traits as JSON"),
    Column("context", "string", "context as JSON; unmapped top-level fields under _unmapped"),
    Column("source_stream", "string", "spool segment, file path or Kafka partition"),
    Column("source_offset", "long", "byte offset (spool, file) or Kafka offset of the line"),
    Column("source_index", "int", "position of the event inside a batch request"),
)

FAILED_COLUMNS: tuple[Column, ...] = (
    Column("app_id", "string", "the write key's app, when known"),
    Column("collector_tstamp", "ts", "when the collector received it (read time for files)"),
    Column("failed_tstamp", "ts", "when the failure was committed"),
    Column("stage", "string", "decode | validate | enrich"),
    Column("error_type", "string", "machine-readable reason, e.g. invalid_json"),
    Column("error_message", "string", "human-readable reason"),
    Column("event_id", "string", "messageId, when it could be read"),
    Column("raw", "binary", "the raw payload: the line, or the one event of a batch"),
    Column("source_stream", "string", "spool segment, file path or Kafka partition"),
    Column("source_offset", "long", "byte offset (spool, file) or Kafka offset of the line"),
    Column("source_index", "int", "position of the event inside a batch request"),
)


def _iceberg_schema(columns: tuple[Column, ...]) -> Schema:
    return Schema(
        *(
            NestedField(i, c.name, ICEBERG_TYPES[c.kind], required=False, doc=c.doc)
            for i, c in enumerate(columns, start=1)
        )
    )


def _arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.kind], nullable=True) for c in columns])


EVENTS_SCHEMA = _iceberg_schema(EVENT_COLUMNS)
FAILED_SCHEMA = _iceberg_schema(FAILED_COLUMNS)
EVENTS_ARROW = _arrow_schema(EVENT_COLUMNS)
FAILED_ARROW = _arrow_schema(FAILED_COLUMNS)


def events_partition_spec(buckets: int) -> PartitionSpec:
    """``day(derived_tstamp)`` x ``bucket(buckets, user_key)``."""
    return PartitionSpec(
        PartitionField(
            source_id=EVENTS_SCHEMA.find_field("derived_tstamp").field_id,
            field_id=1000,
            transform=DayTransform(),
            name="derived_day",
        ),
        PartitionField(
            source_id=EVENTS_SCHEMA.find_field("user_key").field_id,
            field_id=1001,
            transform=BucketTransform(buckets),
            name="user_key_bucket",
        ),
    )


def failed_partition_spec() -> PartitionSpec:
    """``day(collector_tstamp)``."""
    return PartitionSpec(
        PartitionField(
            source_id=FAILED_SCHEMA.find_field("collector_tstamp").field_id,
            field_id=1000,
            transform=DayTransform(),
            name="collector_day",
        )
    )
