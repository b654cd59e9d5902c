"""Segment Tracking API decoding and validation, in bulk.

``decode`` turns a batch of raw lines into one Arrow table with the canonical event columns plus
``stage``, ``error_type``, ``error_message`` and ``raw``: rows with ``error_type`` NULL are good
events, the others are failures with the reason and the raw payload. It is a pure function of
its input (and of the limits in :class:`DecodeOptions`); the heavy lifting runs in DuckDB's JSON
functions over the whole batch, with no per-event Python on the happy path.

Each line is either a collector envelope (spool, Kafka; see :mod:`clicklake.events.envelope`) or
a bare Segment call or ``{"batch": [...]}`` envelope (files). Batch-level ``context``,
``sentAt``, ``writeKey`` and ``receivedAt`` apply to each event of the batch; an event's own
``context`` is merged over the batch's.

Rules, checked in this order; the first that matches names the failure:

=====================  ========  =======================================================
error_type             stage     when
=====================  ========  =======================================================
invalid_utf8           decode    the line is not UTF-8
batch_too_large        decode    the line is longer than ``max_request_bytes``
invalid_json           decode    the line is not JSON
invalid_envelope       decode    not an object; ``batch`` not an array of objects; a spool
                                 line without a numeric ``rt`` or an object ``p``
event_too_large        decode    one event's JSON is longer than ``max_event_bytes``
missing_field          validate  no ``type``; no ``userId`` and no ``anonymousId``; track
                                 without ``event``; group without ``groupId``; alias
                                 without ``previousId``
invalid_type           validate  ``type`` is not track/page/screen/identify/group/alias
wrong_type             validate  a field of the wrong JSON type (ids must be strings or
                                 numbers, ``event`` a string, properties/traits/context
                                 objects)
invalid_message_id     validate  ``messageId`` present but empty or not a string/integer
invalid_timestamp      validate  timestamp/originalTimestamp/sentAt not ISO 8601 or epoch ms
timestamp_out_of_range validate  ``derived_tstamp`` more than ``max_future_s`` after, or
                                 ``max_age_days`` before, the collector time
=====================  ========  =======================================================

An event without ``messageId`` gets a deterministic id, ``md5:`` + the MD5 of its app id and
JSON, so a resent copy gets the same id. Top-level fields the decoder does not map are kept in
``context`` under ``_unmapped``; nothing a client sent is thrown away.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.events.schema import EVENT_COLUMNS, EVENTS_ARROW, FAILED_ARROW
from clicklake.sources.base import Chunk, EnvelopeMode

CALL_TYPES = ("track", "page", "screen", "identify", "group", "alias")

DECODED_EXTRA = (
    pa.field("stage", pa.large_string()),
    pa.field("error_type", pa.large_string()),
    pa.field("error_message", pa.large_string()),
    pa.field("raw", pa.large_binary()),
)
DECODED_ARROW = pa.schema([*EVENTS_ARROW, *DECODED_EXTRA])

LINES_ARROW = pa.schema(
    [
        pa.field("line", pa.large_string()),
        pa.field("source_stream", pa.large_string()),
        pa.field("source_offset", pa.int64()),
    ]
)

# Fields of a Segment call the decoder maps to columns (all read as raw JSON first, so that
# their JSON type can be checked).
_MAPPED = (
    "type",
    "event",
    "name",
    "category",
    "messageId",
    "userId",
    "anonymousId",
    "groupId",
    "previousId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "writeKey",
    "properties",
    "traits",
    "context",
)
_EVENT_STRUCT = "{" + ",".join(f'"{k}":"JSON"' for k in (*_MAPPED, "batch")) + "}"
_KNOWN_KEYS = "[" + ",".join(f"'{k}'" for k in (*_MAPPED, "batch")) + "]"
_DROP_MAPPED = "'{" + ",".join(f'"{k}":null' for k in (*_MAPPED, "batch")) + "}'"
_CTX_STRUCT = (
    '{"page":{"url":"VARCHAR","path":"VARCHAR","title":"VARCHAR","referrer":"VARCHAR"},'
    '"userAgent":"VARCHAR","ip":"VARCHAR","sessionId":"VARCHAR",'
    '"library":{"name":"VARCHAR","version":"VARCHAR"}}'
)
_PROPS_STRUCT = (
    '{"url":"VARCHAR","path":"VARCHAR","title":"VARCHAR","referrer":"VARCHAR","session_id":"VARCHAR"}'
)


@dataclass(frozen=True)
class DecodeOptions:
    """Limits and defaults of decoding.

    Attributes:
        write_keys: Write key -> app id, for events that carry ``writeKey`` (files).
        default_app_id: App id of file events without a known write key.
        max_event_bytes: Largest event JSON accepted (Segment: 32 KB).
        max_request_bytes: Largest line (request) accepted (Segment: 500 KB).
        max_future_s: How far after the collector time a derived timestamp may be.
        max_age_days: How far before the collector time a derived timestamp may be.
    """

    write_keys: dict[str, str] = field(default_factory=dict)
    default_app_id: str = "default"
    max_event_bytes: int = 32 * 1024
    max_request_bytes: int = 500 * 1024
    max_future_s: float = 24 * 3600.0
    max_age_days: float = 365.0


def lines_of(chunk: Chunk) -> tuple[pa.RecordBatch, pa.Table | None]:
    """Split a chunk into lines, zero-copy.

    Returns:
        The lines as a record batch (``line``, ``source_stream``, ``source_offset``), blank lines
        dropped, and a table of decode failures for lines that are not UTF-8 (``None`` when all
        are, the common case).
    """
    data = chunk.data
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10) + 1
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    ends = ends.astype(np.int64)
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    n = len(ends)
    bad_utf8: pa.Table | None = None
    keep = np.ones(n, dtype=bool)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # Slow path, only for broken input: find the lines that are not UTF-8.
        bad = np.zeros(n, dtype=bool)
        for i in range(n):
            try:
                data[starts[i] : ends[i]].decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
        bad_utf8 = _line_failures(
            chunk,
            [data[starts[i] : ends[i]] for i in np.flatnonzero(bad)],
            starts[bad],
            "invalid_utf8",
            "the line is not valid UTF-8",
        )
        keep &= ~bad
    line_arr = (
        pa.LargeStringArray.from_buffers(
            n,
            pa.py_buffer(offsets.tobytes()),
            pa.py_buffer(data) if not isinstance(data, pa.Buffer) else data,
        )
        if bad_utf8 is None
        else pa.array(
            [data[s:e].decode("utf-8", "replace") for s, e in zip(starts, ends, strict=True)],
            pa.large_string(),
        )
    )
    batch = pa.RecordBatch.from_arrays(
        [
            line_arr,
            pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, dtype=np.int32)), pa.array([chunk.stream], pa.large_string())
            ).cast(pa.large_string()),
            pa.array(starts + chunk.start, pa.int64()),
        ],
        schema=LINES_ARROW,
    )
    # Blank lines carry nothing: they are not events. Only lines that start with whitespace
    # can be blank, so only those (rare) are looked at one by one.
    if n:
        first = buf[starts]
        for j in np.flatnonzero((first == 32) | (first == 9) | (first == 13) | (first == 10)):
            if not data[starts[j] : ends[j]].strip():
                keep[j] = False
    if not keep.all():
        batch = batch.filter(pa.array(keep))
    return batch, bad_utf8


def _line_failures(
    chunk: Chunk, raws: list[bytes], starts: np.ndarray, error_type: str, message: str
) -> pa.Table:
    n = len(raws)
    cols: dict[str, pa.Array] = {
        "source_stream": pa.array([chunk.stream] * n, pa.large_string()),
        "source_offset": pa.array(starts + chunk.start, pa.int64()),
        "source_index": pa.array([0] * n, pa.int32()),
        "stage": pa.array(["decode"] * n, pa.large_string()),
        "error_type": pa.array([error_type] * n, pa.large_string()),
        "error_message": pa.array([message] * n, pa.large_string()),
        "raw": pa.array(raws, pa.large_binary()),
    }
    return pa.table([cols.get(f.name, pa.nulls(n, f.type)) for f in DECODED_ARROW], schema=DECODED_ARROW)


def _sql(mode: EnvelopeMode) -> str:
    if mode == "spool":
        head = f"""
        parsed AS MATERIALIZED (
            SELECT source_stream, source_offset, line, j,
                   from_json(j, '{{"rt":"JSON","app":"VARCHAR","ip":"VARCHAR","ua":"VARCHAR","p":{_EVENT_STRUCT}}}') AS env
            FROM valid
        ),
        lines2 AS MATERIALIZED (
            SELECT source_stream, source_offset, line, j,
                   env.p AS s, env.app AS line_app, env.ip AS line_ip, env.ua AS line_ua,
                   CASE WHEN json_type(env.rt) IN ('UBIGINT', 'BIGINT') THEN (env.rt)::BIGINT * 1000 END AS line_rt_us,
                   CASE WHEN j IS NULL THEN 'invalid_json'
                        WHEN NOT starts_with(ltrim(line), '{{') THEN 'invalid_envelope'
                        WHEN json_type(env.rt) NOT IN ('UBIGINT', 'BIGINT') OR env.rt IS NULL OR env.app IS NULL
                             THEN 'invalid_envelope' END AS lerr,
                   json_extract(j, '$.p') AS p_text_lazy
            FROM parsed
        ),"""
    else:
        head = f"""
        lines2 AS MATERIALIZED (
            SELECT source_stream, source_offset, line, j,
                   from_json(j, '{_EVENT_STRUCT}') AS s,
                   NULL::VARCHAR AS line_app, NULL::VARCHAR AS line_ip, NULL::VARCHAR AS line_ua,
                   NULL::BIGINT AS line_rt_us,
                   CASE WHEN j IS NULL THEN 'invalid_json'
                        WHEN NOT starts_with(ltrim(line), '{{') THEN 'invalid_envelope' END AS lerr,
                   j AS p_text_lazy
            FROM valid
        ),"""
    return f"""
    WITH valid AS MATERIALIZED (
        SELECT source_stream, source_offset, line,
               CASE WHEN strlen(line) <= $max_request THEN TRY_CAST(line AS JSON) END AS j
        FROM lines
    ),
    {head}
    lines3 AS MATERIALIZED (
        SELECT *,
            CASE WHEN lerr IS NULL AND s.batch IS NOT NULL AND json_type(s.batch) <> 'ARRAY' THEN 'invalid_envelope'
                 ELSE lerr END AS lerr2
        FROM lines2
    ),
    -- single calls: the line's payload is the event
    singles AS (
        SELECT source_stream, source_offset, 0 AS source_index, line_app, line_ip, line_ua, line_rt_us,
               s AS ev, p_text_lazy AS ev_text, NULL::JSON AS b_context, NULL::JSON AS b_sent,
               NULL::JSON AS b_wk, NULL::JSON AS b_recv
        FROM lines3 WHERE lerr2 IS NULL AND s.batch IS NULL
    ),
    -- batch envelopes: one row per element
    elems AS (
        SELECT source_stream, source_offset, line_app, line_ip, line_ua, line_rt_us,
               s.context AS b_context, s.sentAt AS b_sent, s.writeKey AS b_wk, s.receivedAt AS b_recv,
               e.elem AS ev_text, (e.idx - 1)::INTEGER AS source_index
        FROM lines3, unnest(json_extract(s.batch, '$[*]')) WITH ORDINALITY AS e(elem, idx)
        WHERE lerr2 IS NULL AND s.batch IS NOT NULL
    ),
    batched AS MATERIALIZED (
        SELECT source_stream, source_offset, source_index, line_app, line_ip, line_ua, line_rt_us,
               from_json(ev_text, '{_EVENT_STRUCT}') AS ev, ev_text, b_context, b_sent, b_wk, b_recv
        FROM elems
    ),
    events_raw AS (
        SELECT * FROM singles
        UNION ALL
        SELECT * FROM batched
    ),
    f AS MATERIALIZED (
        SELECT *,
            COALESCE(line_app, wk.app, $default_app) AS app_id_v,
            CASE WHEN ev.context IS NULL THEN b_context
                 WHEN b_context IS NULL OR json_type(b_context) <> 'OBJECT' THEN ev.context
                 ELSE json_merge_patch(b_context, ev.context) END AS ctx_json,
            COALESCE(ev.sentAt, b_sent) AS sent_json,
            COALESCE(ev.timestamp, ev.originalTimestamp) AS created_json,
            COALESCE(line_rt_us, epoch_us(TRY_CAST(COALESCE(ev.receivedAt, b_recv) ->> '$' AS TIMESTAMPTZ)), $now_us) AS collector_us
        FROM events_raw
        LEFT JOIN write_keys wk ON wk.key = COALESCE(ev.writeKey, b_wk) ->> '$'
    ),
    g AS MATERIALIZED (
        SELECT *,
            from_json(ctx_json, '{_CTX_STRUCT}') AS c,
            from_json(ev.properties, '{_PROPS_STRUCT}') AS pr,
            json_type(ev.type) AS t_type, ev.type ->> '$' AS type_v,
            json_type(ev.userId) AS t_uid, json_type(ev.anonymousId) AS t_aid,
            json_type(ev.messageId) AS t_mid,
            NULLIF(ev.userId ->> '$', '') AS user_id_v,
            NULLIF(ev.anonymousId ->> '$', '') AS anonymous_id_v,
            {_ts_us("created_json")} AS created_us,
            {_ts_us("sent_json")} AS sent_us
        FROM f
    ),
    h AS (
        SELECT *,
            CASE WHEN created_us IS NOT NULL AND sent_us IS NOT NULL THEN collector_us - (sent_us - created_us)
                 WHEN created_us IS NOT NULL THEN created_us
                 ELSE collector_us END AS derived_us
        FROM g
    ),
    checked AS MATERIALIZED (
        SELECT *,
            CASE
              WHEN ev_text IS NULL OR NOT starts_with(ltrim(ev_text), '{{') THEN 'invalid_envelope'
              WHEN strlen(ev_text) > $max_event THEN 'event_too_large'
              WHEN ev.type IS NULL THEN 'missing_field'
              WHEN t_type <> 'VARCHAR' THEN 'wrong_type'
              WHEN type_v NOT IN {CALL_TYPES} THEN 'invalid_type'
              WHEN ev.userId IS NOT NULL AND t_uid NOT IN ('VARCHAR', 'UBIGINT', 'BIGINT', 'DOUBLE', 'NULL') THEN 'wrong_type'
              WHEN ev.anonymousId IS NOT NULL AND t_aid NOT IN ('VARCHAR', 'UBIGINT', 'BIGINT', 'DOUBLE', 'NULL') THEN 'wrong_type'
              WHEN user_id_v IS NULL AND anonymous_id_v IS NULL THEN 'missing_field'
              WHEN type_v = 'track' AND (ev.event IS NULL OR json_type(ev.event) = 'NULL') THEN 'missing_field'
              WHEN type_v = 'track' AND json_type(ev.event) <> 'VARCHAR' THEN 'wrong_type'
              WHEN type_v = 'group' AND (ev.groupId IS NULL OR json_type(ev.groupId) = 'NULL') THEN 'missing_field'
              WHEN type_v = 'alias' AND (ev.previousId IS NULL OR json_type(ev.previousId) = 'NULL') THEN 'missing_field'
              WHEN ev.properties IS NOT NULL AND json_type(ev.properties) NOT IN ('OBJECT', 'NULL') THEN 'wrong_type'
              WHEN ev.traits IS NOT NULL AND json_type(ev.traits) NOT IN ('OBJECT', 'NULL') THEN 'wrong_type'
              WHEN ev.context IS NOT NULL AND json_type(ev.context) NOT IN ('OBJECT', 'NULL') THEN 'wrong_type'
              WHEN ev.messageId IS NOT NULL AND (t_mid NOT IN ('VARCHAR', 'UBIGINT', 'BIGINT') OR (ev.messageId ->> '$') = '') THEN 'invalid_message_id'
              WHEN created_json IS NOT NULL AND json_type(created_json) <> 'NULL' AND created_us IS NULL THEN 'invalid_timestamp'
              WHEN sent_json IS NOT NULL AND json_type(sent_json) <> 'NULL' AND sent_us IS NULL THEN 'invalid_timestamp'
              WHEN derived_us > collector_us + $max_future_us THEN 'timestamp_out_of_range'
              WHEN derived_us < collector_us - $max_age_us THEN 'timestamp_out_of_range'
            END AS err
        FROM h
    ),
    good_and_bad AS (
        SELECT
            COALESCE(ev.messageId ->> '$', 'md5:' || md5(app_id_v || ev_text)) AS event_id,
            type_v AS event_type,
            CASE WHEN type_v = 'track' THEN ev.event ->> '$' WHEN type_v IN ('page', 'screen') THEN ev.name ->> '$' END AS event_name,
            app_id_v AS app_id,
            user_id_v AS user_id,
            anonymous_id_v AS anonymous_id,
            NULLIF(COALESCE(c.sessionId, pr.session_id), '') AS session_id,
            COALESCE(user_id_v, anonymous_id_v) AS user_key,
            ev.groupId ->> '$' AS group_id,
            ev.previousId ->> '$' AS previous_id,
            created_us, sent_us, collector_us, derived_us,
            COALESCE(pr.url, c.page.url) AS page_url,
            COALESCE(pr.path, c.page.path) AS page_path,
            COALESCE(pr.title, c.page.title) AS page_title,
            COALESCE(pr.referrer, c.page.referrer) AS page_referrer,
            COALESCE(c.userAgent, line_ua) AS user_agent,
            COALESCE(c.ip, line_ip) AS user_ipaddress,
            c.library.name AS library_name,
            c.library.version AS library_version,
            ev.properties::VARCHAR AS properties,
            ev.traits::VARCHAR AS traits,
            CASE WHEN err IS NULL AND NOT list_has_all({_KNOWN_KEYS}, json_keys(ev_text))
                 THEN json_merge_patch(COALESCE(ctx_json, '{{}}'), json_object('_unmapped', json_merge_patch(ev_text, {_DROP_MAPPED})))::VARCHAR
                 ELSE ctx_json::VARCHAR END AS context,
            source_stream, source_offset, source_index,
            CASE WHEN err IS NULL THEN NULL
                 WHEN err IN ('invalid_envelope', 'event_too_large') THEN 'decode' ELSE 'validate' END AS stage,
            err AS error_type,
            CASE err
              WHEN 'invalid_envelope' THEN 'a batch element is not a JSON object'
              WHEN 'event_too_large' THEN 'event is ' || strlen(ev_text) || ' bytes; the limit is ' || $max_event
              WHEN 'missing_field' THEN
                CASE WHEN ev.type IS NULL THEN 'type is required'
                     WHEN user_id_v IS NULL AND anonymous_id_v IS NULL THEN 'userId or anonymousId is required'
                     WHEN type_v = 'track' THEN 'event is required for track calls'
                     WHEN type_v = 'group' THEN 'groupId is required for group calls'
                     ELSE 'previousId is required for alias calls' END
              WHEN 'wrong_type' THEN 'a field has the wrong JSON type (type/event: string; userId/anonymousId: string or number; properties/traits/context: object)'
              WHEN 'invalid_type' THEN 'type ' || to_json(type_v) || ' is not one of track, page, screen, identify, group, alias'
              WHEN 'invalid_message_id' THEN 'messageId must be a non-empty string'
              WHEN 'invalid_timestamp' THEN 'timestamp or sentAt is not ISO 8601 or epoch milliseconds: ' || COALESCE(created_json::VARCHAR, '') || ' ' || COALESCE(sent_json::VARCHAR, '')
              WHEN 'timestamp_out_of_range' THEN 'derived timestamp ' || make_timestamp(derived_us) || ' is outside [collector - ' || $max_age_days || ' days, collector + ' || $max_future_s || ' s]'
            END AS error_message,
            CASE WHEN err IS NOT NULL THEN encode(rtrim(ev_text::VARCHAR, chr(10) || chr(13))) END AS raw
        FROM checked
    )
    SELECT * FROM good_and_bad
    UNION ALL
    SELECT NULL, NULL, NULL, COALESCE(line_app, $default_app), NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, COALESCE(line_rt_us, $now_us), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           source_stream, source_offset, 0, 'decode', lerr_final,
           CASE lerr_final
             WHEN 'batch_too_large' THEN 'request is ' || strlen(line) || ' bytes; the limit is ' || $max_request
             WHEN 'invalid_json' THEN 'the line is not valid JSON'
             ELSE 'not a Segment call: expected a JSON object (with a "batch" array for batch requests)'
           END,
           encode(rtrim(line, chr(10) || chr(13)))
    FROM (
        SELECT *, CASE WHEN strlen(line) > $max_request THEN 'batch_too_large' ELSE lerr2 END AS lerr_final
        FROM lines3
    ) WHERE lerr_final IS NOT NULL
    """


def _ts_us(expr: str) -> str:
    """SQL: a JSON timestamp (ISO 8601 string or epoch-ms number) as epoch microseconds."""
    return f"""(CASE json_type({expr})
        WHEN 'VARCHAR' THEN epoch_us(TRY_CAST({expr} ->> '$' AS TIMESTAMPTZ))
        WHEN 'UBIGINT' THEN TRY_CAST(({expr} ->> '$') AS BIGINT) * 1000
        WHEN 'BIGINT' THEN TRY_CAST(({expr} ->> '$') AS BIGINT) * 1000
        WHEN 'DOUBLE' THEN TRY_CAST(TRY_CAST(({expr} ->> '$') AS DOUBLE) * 1000 AS BIGINT)
      END)"""


_SQL = {"spool": _sql("spool"), "segment": _sql("segment")}
_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    con: duckdb.DuckDBPyConnection | None = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(config={"threads": 2})
        _local.con = con
    return con


def decode(lines: pa.RecordBatch, mode: EnvelopeMode, options: DecodeOptions, now_us: int) -> pa.Table:
    """Decode and validate a batch of lines.

    Args:
        lines: ``line``, ``source_stream``, ``source_offset`` (see :func:`lines_of`).
        mode: ``"spool"`` for collector envelopes, ``"segment"`` for bare Segment lines.
        options: Limits and the write-key mapping.
        now_us: Receive time (epoch microseconds) for file events that carry no ``receivedAt``.

    Returns:
        A table of :data:`DECODED_ARROW`: good events have ``error_type`` NULL.
    """
    con = _connection()
    wk = pa.table(
        {
            "key": pa.array(list(options.write_keys), pa.large_string()),
            "app": pa.array(list(options.write_keys.values()), pa.large_string()),
        }
    )
    con.register("lines", lines)
    con.register("write_keys", wk)
    try:
        out = con.sql(
            _SQL[mode],
            params={
                "max_request": options.max_request_bytes,
                "max_event": options.max_event_bytes,
                "default_app": options.default_app_id,
                "now_us": now_us,
                "max_future_us": int(options.max_future_s * 1_000_000),
                "max_age_us": int(options.max_age_days * 86_400_000_000),
                "max_future_s": options.max_future_s,
                "max_age_days": options.max_age_days,
            },
        ).to_arrow_table()
    finally:
        con.unregister("lines")
        con.unregister("write_keys")
    return _to_decoded(out)


def _to_decoded(t: pa.Table) -> pa.Table:
    ts = pa.timestamp("us", tz="UTC")
    renames = {
        "created_us": "dvce_created_tstamp",
        "sent_us": "dvce_sent_tstamp",
        "collector_us": "collector_tstamp",
        "derived_us": "derived_tstamp",
    }
    cols = {}
    for name in t.column_names:
        cols[renames.get(name, name)] = t.column(name)
    arrays = []
    for f in DECODED_ARROW:
        if f.name in cols:
            col = cols[f.name]
            if f.type == ts:
                col = pc.cast(col, pa.int64()).cast(ts)
            arrays.append(col.cast(f.type))
        else:
            arrays.append(pa.nulls(t.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=DECODED_ARROW)


def split(decoded: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Good events (as :data:`EVENTS_ARROW`) and failures (as :data:`FAILED_ARROW`)."""
    ok = pc.is_null(decoded.column("error_type"))
    good = decoded.filter(ok).select([c.name for c in EVENT_COLUMNS])
    bad = decoded.filter(pc.invert(ok))
    failed = pa.Table.from_arrays(
        [
            bad.column(f.name) if f.name in bad.column_names else pa.nulls(bad.num_rows, f.type)
            for f in FAILED_ARROW
        ],
        schema=FAILED_ARROW,
    )
    return good, failed


def decode_chunk(chunk: Chunk, options: DecodeOptions, now_us: int) -> pa.Table:
    """:func:`lines_of` then :func:`decode`, with UTF-8 failures appended."""
    lines, bad_utf8 = lines_of(chunk)
    out = decode(lines, chunk.envelope, options, now_us)
    if bad_utf8 is not None:
        out = pa.concat_tables([out, bad_utf8])
    return out
