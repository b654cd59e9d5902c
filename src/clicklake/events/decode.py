"""Segment Tracking API decoding and validation, in bulk.

``decode`` turns a batch of raw lines into one Arrow table with the canonical event columns plus
``stage``, ``error_type``, ``error_message`` and ``raw``: rows with ``error_type`` NULL are good
events, the others are failures with the reason and the raw payload. It is a pure function of
its input (and of the limits in :class:`DecodeOptions`), with no per-event Python on the happy path.

Three paths give the same rows, in source order (offset, then index in a batch):

- the compiled decoder (``_cdecode.c``, built by ``make install``) scans each typical line once,
  with the GIL released, straight into Arrow buffers. It flags any line it is not sure of
  (failures, events without ``messageId``, odd number formats, escaped or duplicate keys, merges
  it does not do, lines longer than one event may be, ...) and those take the DuckDB paths below;
- without it, DuckDB's ``read_json`` fast path, and the exact path for the lines it leaves;
- the exact path, DuckDB's JSON functions line by line, which is the reference.

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

``context`` holds the rest of what was sent: a member whose value the row's columns already
hold (``userAgent``, ``ip``, ``sessionId``, ``page.url/path/title/referrer``,
``library.name/version``, see :data:`CONTEXT_COPIES`) is dropped from it when that value is a
JSON string equal to the column's, so a row stores it once (two thirds of a typical context). A
value that differs, is not a string or has an escape in its JSON text stays; a ``page`` or
``library`` object emptied this way goes too.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.events.options import DecodeOptions as DecodeOptions  # re-exported: its old home
from clicklake.events.schema import EVENT_COLUMNS, EVENTS_ARROW, FAILED_ARROW
from clicklake.sources.base import Chunk, EnvelopeMode

# The compiled fast path (_cdecode.c). Without it (no compiler at install time, or a build older
# than this file) decoding takes the DuckDB paths alone, slower, with the same results.
_CDECODE_ABI = 2
try:
    from clicklake.events import _cdecode  # type: ignore[attr-defined]
except ImportError as exc:
    _cdecode = None
    _CDECODE_MISSING: str | None = str(exc)
else:
    _CDECODE_MISSING = None
    if getattr(_cdecode, "ABI", None) != _CDECODE_ABI:
        _cdecode = None
        _CDECODE_MISSING = "the compiled decoder is a stale build (run make install)"

log = logging.getLogger("clicklake.events")

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
        pa.field("rn", pa.int64()),
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
# Top-level fields SDKs commonly send that map to no column: kept under context._unmapped like
# any other, but read as fields so that typical lines carrying them stay on the fast path.
_EXTRAS = ("integrations", "_metadata")
_FIELDS = (*_MAPPED, *_EXTRAS)
_EVENT_STRUCT = "{" + ",".join(f'"{k}":"JSON"' for k in (*_FIELDS, "batch")) + "}"
_KNOWN_KEYS = "[" + ",".join(f"'{k}'" for k in (*_FIELDS, "batch")) + "]"
_DROP_MAPPED = "'{" + ",".join(f'"{k}":null' for k in (*_FIELDS, "batch")) + "}'"
_HAS_EXTRAS = " OR ".join(f'(ev."{k}" IS NOT NULL AND json_type(ev."{k}") <> \'NULL\')' for k in _EXTRAS)
_EXTRAS_OBJ = "json_merge_patch('{}', json_object(" + ", ".join(f"'{k}', ev.\"{k}\"" for k in _EXTRAS) + "))"


def _context_sql(rest: str, has_other: str) -> str:
    """SQL: ``context`` with what maps to no column under ``_unmapped``; the same expression
    in both paths, so a line gives the same bytes whichever path decodes it (the dedup
    fingerprint hashes them)."""
    return f"""CASE WHEN err IS NULL AND ({has_other} OR {_HAS_EXTRAS})
                 THEN json_merge_patch(COALESCE(ctx_json, '{{}}'), json_object('_unmapped', json_merge_patch(
                        json_merge_patch({rest}, {_EXTRAS_OBJ}),
                        CASE WHEN b_unmapped IS NOT NULL THEN json_object('_batch', b_unmapped) ELSE '{{}}' END)))::VARCHAR
                 ELSE ctx_json::VARCHAR END AS context"""


_BATCH_FIELDS = ("batch", "sentAt", "context", "writeKey", "receivedAt")
_BATCH_KEYS = "[" + ",".join(f"'{k}'" for k in _BATCH_FIELDS) + "]"
_DROP_BATCH = "'{" + ",".join(f'"{k}":null' for k in _BATCH_FIELDS) + "}'"
_CTX_STRUCT = (
    '{"page":{"url":"VARCHAR","path":"VARCHAR","title":"VARCHAR","referrer":"VARCHAR"},'
    '"userAgent":"VARCHAR","ip":"VARCHAR","sessionId":"VARCHAR",'
    '"library":{"name":"VARCHAR","version":"VARCHAR"}}'
)
_PROPS_STRUCT = (
    '{"url":"VARCHAR","path":"VARCHAR","title":"VARCHAR","referrer":"VARCHAR","session_id":"VARCHAR"}'
)


def lines_of(chunk: Chunk) -> tuple[pa.RecordBatch, pa.Table | None]:
    """Split a chunk into lines, zero-copy.

    Returns:
        The lines as a record batch (``line``, ``source_stream``, ``source_offset``), blank lines
        dropped, and a table of decode failures for lines that are not UTF-8 (``None`` when all
        are, the common case).
    """
    data = chunk.data
    buf = np.frombuffer(data, dtype=np.uint8)
    if _cdecode is not None:
        found, ascii_only = _cdecode.line_ends(data)
        ends = np.frombuffer(found, dtype=np.int64)
    else:
        ends, ascii_only = np.flatnonzero(buf == 10) + 1, None
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    ends = ends.astype(np.int64)
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    n = len(ends)
    bad_utf8: pa.Table | None = None
    keep = np.ones(n, dtype=bool)
    if not ascii_only and not _is_utf8(data):
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
            _line_offsets(chunk, starts)[bad],
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
            pa.array(np.arange(n, dtype=np.int64)),
            line_arr,
            pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, dtype=np.int32)), pa.array([chunk.stream], pa.large_string())
            ).cast(pa.large_string()),
            pa.array(_line_offsets(chunk, starts), pa.int64()),
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


def _is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8, without decoding it into a string."""
    if data.isascii():
        return True
    whole = pa.LargeStringArray.from_buffers(
        1, pa.py_buffer(np.array([0, len(data)], dtype=np.int64).tobytes()), pa.py_buffer(data)
    )
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _line_offsets(chunk: Chunk, starts: np.ndarray) -> np.ndarray:
    """The source offset of each line: its byte offset, or its message offset (Kafka)."""
    if chunk.line_offsets is None:
        return starts + chunk.start
    if len(chunk.line_offsets) != len(starts):
        raise ValueError(
            f"chunk of {chunk.stream} has {len(starts)} lines but {len(chunk.line_offsets)} message offsets"
        )
    return chunk.line_offsets


def _line_failures(
    chunk: Chunk, raws: list[bytes], offsets: np.ndarray, error_type: str, message: str
) -> pa.Table:
    n = len(raws)
    cols: dict[str, pa.Array] = {
        "source_stream": pa.array([chunk.stream] * n, pa.large_string()),
        "source_offset": pa.array(offsets, pa.int64()),
        "source_index": pa.array([0] * n, pa.int32()),
        "stage": pa.array(["decode"] * n, pa.large_string()),
        "error_type": pa.array([error_type] * n, pa.large_string()),
        "error_message": pa.array([message] * n, pa.large_string()),
        "raw": pa.array(raws, pa.large_binary()),
    }
    return pa.table([cols.get(f.name, pa.nulls(n, f.type)) for f in DECODED_ARROW], schema=DECODED_ARROW)


_EXACT_EV_TEXT_CHECKS = """
              WHEN ev_text IS NULL OR NOT starts_with(ltrim(ev_text), '{') THEN 'invalid_envelope'
              WHEN strlen(ev_text) > $max_event THEN 'event_too_large'
"""
_EXACT_CONTEXT = _context_sql(
    f"json_merge_patch(ev_text, {_DROP_MAPPED})",
    f"b_unmapped IS NOT NULL OR NOT list_has_all({_KNOWN_KEYS}, json_keys(ev_text))",
)


def _exact_sql(mode: EnvelopeMode) -> str:
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
               NULL::JSON AS b_wk, NULL::JSON AS b_recv, NULL::JSON AS b_unmapped
        FROM lines3 WHERE lerr2 IS NULL AND s.batch IS NULL
    ),
    -- batch envelopes: one row per element. The line's small fields and its elements are taken
    -- out first: unnested next to the line's text, each element row would carry the whole
    -- request along (500 KB for hundreds of events), and memory would grow with its square.
    batch_lines AS MATERIALIZED (
        SELECT source_stream, source_offset, line_app, line_ip, line_ua, line_rt_us,
               s.context AS b_context, s.sentAt AS b_sent, s.writeKey AS b_wk, s.receivedAt AS b_recv,
               CASE WHEN NOT list_has_all({_BATCH_KEYS}, json_keys(p_text_lazy))
                    THEN json_merge_patch(p_text_lazy, {_DROP_BATCH}) END AS b_unmapped,
               json_extract(s.batch, '$[*]') AS elems_list
        FROM lines3
        WHERE lerr2 IS NULL AND s.batch IS NOT NULL
    ),
    elems AS (
        SELECT source_stream, source_offset, line_app, line_ip, line_ua, line_rt_us,
               b_context, b_sent, b_wk, b_recv, b_unmapped,
               e.elem AS ev_text, (e.idx - 1)::INTEGER AS source_index
        FROM batch_lines, unnest(elems_list) WITH ORDINALITY AS e(elem, idx)
    ),
    batched AS MATERIALIZED (
        SELECT source_stream, source_offset, source_index, line_app, line_ip, line_ua, line_rt_us,
               from_json(ev_text, '{
        _EVENT_STRUCT
    }') AS ev, ev_text, b_context, b_sent, b_wk, b_recv, b_unmapped
        FROM elems
    ),
{
        _tail(
            ev_text_checks=_EXACT_EV_TEXT_CHECKS,
            event_id="COALESCE(ev.messageId ->> '$', 'md5:' || md5(app_id_v || ev_text)) AS event_id",
            context=_EXACT_CONTEXT,
            raw="CASE WHEN err IS NOT NULL THEN encode(rtrim(ev_text::VARCHAR, chr(10) || chr(13))) END AS raw",
        )
    }    SELECT * FROM good_and_bad
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


def _tail(ev_text_checks: str, event_id: str, context: str, raw: str) -> str:
    """SQL shared by both paths: from ``events_raw`` (one row per event) to the decoded rows.

    ``events_raw`` has the source position, the line's envelope fields, ``ev`` (the event's
    fields as raw JSON), the batch-level fields ``b_*`` and ``ev_text`` (the event's JSON text,
    which only the exact path has).
    """
    return f"""
    events_raw AS (
        SELECT * FROM singles
        UNION ALL
        SELECT * FROM batched
    ),
    f AS (
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
    g AS (
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
    checked AS (
        SELECT *,
            CASE
{ev_text_checks}              WHEN ev.type IS NULL THEN 'missing_field'
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
            {event_id},
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
            {context},
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
            {raw}
        FROM checked
    )
    """


def _ts_us(expr: str) -> str:
    """SQL: a JSON timestamp (ISO 8601 string or epoch-ms number) as epoch microseconds."""
    return f"""(CASE json_type({expr})
        WHEN 'VARCHAR' THEN epoch_us(TRY_CAST({expr} ->> '$' AS TIMESTAMPTZ))
        WHEN 'UBIGINT' THEN TRY_CAST(({expr} ->> '$') AS BIGINT) * 1000
        WHEN 'BIGINT' THEN TRY_CAST(({expr} ->> '$') AS BIGINT) * 1000
        WHEN 'DOUBLE' THEN TRY_CAST(TRY_CAST(({expr} ->> '$') AS DOUBLE) * 1000 AS BIGINT)
      END)"""


# --- the fast path -------------------------------------------------------------------------
# DuckDB's read_json parses each line once, straight into typed vectors; the JSON functions the
# exact path uses parse and re-serialize several times. The fast path writes the chunk's lines
# to a scratch file, reads them with read_json (one row per line, in order, NULL where a line is
# not JSON; the row count is checked) next to the lines, and keeps the rows it can decode
# without the raw text:
# objects with a ``type`` (or a batch whose elements all have one), no field it does not map,
# no larger than one event may be. Every other line, and every line that yields a failure or
# an event without ``messageId`` (both need the exact raw text), is decoded again by the exact
# path, so both paths give the same rows; the tests run the golden cases through each.

_EV_FIELDS_SQL = ", ".join(f'"{k}" JSON' for k in _FIELDS)
_EV_STRUCT_TYPE = f"STRUCT({_EV_FIELDS_SQL})"
_EV_COLUMNS = ", ".join(f"\"{k}\": 'JSON'" for k in _FIELDS)


def _pack(prefix: str) -> str:
    return "{" + ", ".join(f"'{k}': {prefix}\"{k}\"" for k in _FIELDS) + "}"


def _in_list(names: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{k}'" for k in names) + ")"


def _present(x: str, f: str) -> str:
    return f'({x}."{f}" IS NOT NULL)::INTEGER'


def _object_len(x: str, fields: tuple[str, ...], extra: list[tuple[str, str]] = ()) -> str:  # type: ignore[assignment]
    """SQL: the length of ``x``'s fields written as a compact JSON object.

    ``extra`` adds (present, length of "key":value) pairs computed elsewhere.
    """
    parts = [
        f'CASE WHEN {x}."{f}" IS NOT NULL THEN {len(f) + 3} + strlen({x}."{f}") ELSE 0 END' for f in fields
    ]
    counts = [_present(x, f) for f in fields]
    for present, length in extra:
        parts.append(length)
        counts.append(present)
    return f"(1 + {' + '.join(parts)} + greatest({' + '.join(counts)}, 1))"


_BATCH_LEVEL = tuple(f for f in _BATCH_FIELDS if f != "batch")
_SENTINEL = "__clicklake_end__"


def _fast_sql(mode: EnvelopeMode) -> str:
    if mode == "spool":
        columns = (
            "{v: 'JSON', rt: 'BIGINT', app: 'VARCHAR', ip: 'VARCHAR', ua: 'VARCHAR', "
            f"p: 'STRUCT({_EV_FIELDS_SQL}, batch {_EV_STRUCT_TYPE}[])'}}"
        )
        ev, batch, where = _pack("l.p."), "l.p.batch", "l.p"
        envelope = "l.app AS line_app, l.ip AS line_ip, l.ua AS line_ua, l.rt * 1000 AS line_rt_us"
        envelope_ok = "l.rt IS NOT NULL AND l.app IS NOT NULL AND l.p IS NOT NULL AND "
        keys_path = ", '$.p'"
        elem_path = "$.p.batch[*]"
        is_sentinel = f"l.app = '{_SENTINEL}'"
    else:
        columns = f"{{{_EV_COLUMNS}, batch: '{_EV_STRUCT_TYPE}[]'}}"
        ev, batch, where = _pack("l."), "l.batch", "l"
        envelope = "NULL::VARCHAR AS line_app, NULL::VARCHAR AS line_ip, NULL::VARCHAR AS line_ua, NULL::BIGINT AS line_rt_us"
        envelope_ok = ""
        keys_path = ""
        elem_path = "$.batch[*]"
        is_sentinel = f'l."type" = \'"{_SENTINEL}"\''
    type_col = f'{where}."type"'
    nulls = ", ".join(["NULL"] * (len(EVENT_COLUMNS) - 1 + len(DECODED_EXTRA)))  # no load_tstamp yet
    elem_len = _object_len("e", _FIELDS)
    batch_text_len = (
        f"(2 + list_sum(list_transform({batch}, lambda e: {elem_len})) + greatest(len({batch}) - 1, 0))"
    )
    single_len = _object_len(where, _FIELDS)
    batch_line_len = _object_len(where, _BATCH_LEVEL, [("1", f"{len('batch') + 3} + {batch_text_len}")])
    payload_len = f"(CASE WHEN {batch} IS NULL THEN {single_len} ELSE {batch_line_len} END)"
    if mode == "spool":
        line_len = _object_len(
            "l",
            ("v",),
            [
                (
                    "(l.rt IS NOT NULL)::INTEGER",
                    "CASE WHEN l.rt IS NOT NULL THEN 5 + strlen(l.rt::VARCHAR) ELSE 0 END",
                ),
                (
                    "(l.app IS NOT NULL)::INTEGER",
                    "CASE WHEN l.app IS NOT NULL THEN 8 + strlen(l.app) ELSE 0 END",
                ),
                (
                    "(l.ip IS NOT NULL)::INTEGER",
                    "CASE WHEN l.ip IS NOT NULL THEN 7 + strlen(l.ip) ELSE 0 END",
                ),
                (
                    "(l.ua IS NOT NULL)::INTEGER",
                    "CASE WHEN l.ua IS NOT NULL THEN 7 + strlen(l.ua) ELSE 0 END",
                ),
                ("1", f"4 + {payload_len}"),
            ],
        )
    else:
        line_len = payload_len
    keys_exact = f"""CASE WHEN {batch} IS NULL
                   THEN len(list_filter(TRY(json_keys(l.line{keys_path})), lambda x: x NOT IN {_in_list(_FIELDS)})) = 0
                   ELSE len(list_filter(TRY(json_keys(l.line{keys_path})), lambda x: x NOT IN {_in_list(_BATCH_FIELDS)})) = 0
                        AND list_bool_and(list_transform(TRY(json_keys(l.line, '{elem_path}')),
                            lambda kk: len(list_filter(kk, lambda x: x NOT IN {_in_list(_FIELDS)})) = 0))
              END"""
    type_ok = f"""CASE WHEN {batch} IS NULL THEN {type_col} IS NOT NULL
                     ELSE NOT list_bool_or(list_transform({batch}, lambda e: e."type" IS NULL)) END"""
    return f"""
    WITH
    -- read_json makes exactly one row per line (NULL where a line is not JSON), in order; the
    -- scratch file ends with a sentinel line, which must come out right after the last line
    r AS (
        SELECT * FROM read_json($path, format='newline_delimited', ignore_errors=true,
                                maximum_object_size=$max_object, columns={columns})
        POSITIONAL JOIN (SELECT rn, source_stream, source_offset, line FROM lines)
    ),
    cls AS MATERIALIZED (
        SELECT l.rn, l.source_stream, l.source_offset, {envelope},
               {ev} AS ev_single, {batch} AS ev_batch,
               l.rn IS NULL AS is_tail, coalesce({is_sentinel}, false) AS is_sentinel,
               {envelope_ok}strlen(l.line) <= $max_event AND starts_with(l.line, '{{')
               AND {type_ok}
               -- only fields the decoder maps: when the line is exactly as long as those fields
               -- written compactly, there is nothing else in it; otherwise ask for its keys
               AND CASE WHEN strlen(l.line) - CASE WHEN ends_with(l.line, chr(13) || chr(10)) THEN 2
                                                   WHEN ends_with(l.line, chr(10)) THEN 1 ELSE 0 END = {
        line_len
    }
                        THEN true
                        ELSE {keys_exact} END AS fast_ok
        FROM r AS l
    ),
    singles AS (
        SELECT source_stream, source_offset, 0 AS source_index, line_app, line_ip, line_ua, line_rt_us,
               ev_single AS ev, NULL::VARCHAR AS ev_text, NULL::JSON AS b_context, NULL::JSON AS b_sent,
               NULL::JSON AS b_wk, NULL::JSON AS b_recv, NULL::JSON AS b_unmapped
        FROM cls WHERE fast_ok AND ev_batch IS NULL
    ),
    batched AS (
        SELECT source_stream, source_offset, (u.idx - 1)::INTEGER AS source_index,
               line_app, line_ip, line_ua, line_rt_us,
               u.e AS ev, NULL::VARCHAR AS ev_text, ev_single.context AS b_context, ev_single.sentAt AS b_sent,
               ev_single.writeKey AS b_wk, ev_single.receivedAt AS b_recv, NULL::JSON AS b_unmapped
        FROM cls, unnest(ev_batch) WITH ORDINALITY AS u(e, idx)
        WHERE fast_ok AND ev_batch IS NOT NULL
    ),
    {
        _tail(
            ev_text_checks="",
            event_id="ev.messageId ->> '$' AS event_id",
            context=_context_sql("'{}'", "false"),
            raw="NULL::BLOB AS raw",
        )
    }
    SELECT *, NULL::BIGINT AS slow_rn FROM good_and_bad
    UNION ALL
    SELECT {nulls}, rn
    FROM lines WHERE rn NOT IN (SELECT rn FROM cls WHERE fast_ok)
    UNION ALL
    -- one more row: -1 when the sentinel is the one row past the lines (rows and lines aligned),
    -- else -2, and the chunk is decoded exactly instead
    SELECT {
        nulls
    }, CASE WHEN (SELECT count(*) FILTER (is_tail) = 1 AND count(*) FILTER (is_tail AND is_sentinel) = 1
                               FROM cls) THEN -1 ELSE -2 END
    """


_SQL = {"spool": _exact_sql("spool"), "segment": _exact_sql("segment")}
_FAST_SQL = {"spool": _fast_sql("spool"), "segment": _fast_sql("segment")}
_SENTINEL_LINE = {
    "spool": b'{"app":"' + _SENTINEL.encode() + b'"}\n',
    "segment": b'{"type":"' + _SENTINEL.encode() + b'"}\n',
}
_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    con: duckdb.DuckDBPyConnection | None = getattr(_local, "con", None)
    if con is None:
        # A bounded buffer pool keeps the pipeline's memory flat whatever the input size;
        # DuckDB spills to its temp directory past it.
        # Large string buffers: the decoded columns are large_string, so none needs a cast.
        con = duckdb.connect(config={"threads": 2, "memory_limit": "1GB", "arrow_large_buffer_size": True})
        _local.con = con
    return con


#: What :func:`strip_context` drops from ``context``: (column, member path), in the order the
#: compiled kernel takes the columns (``_cdecode.c``'s ``SC_*``).
CONTEXT_COPIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("user_agent", ("userAgent",)),
    ("user_ipaddress", ("ip",)),
    ("session_id", ("sessionId",)),
    ("page_url", ("page", "url")),
    ("page_path", ("page", "path")),
    ("page_title", ("page", "title")),
    ("page_referrer", ("page", "referrer")),
    ("library_name", ("library", "name")),
    ("library_version", ("library", "version")),
)


def strip_context(decoded: pa.Table) -> pa.Table:
    """``decoded`` with each row's ``context`` rid of the members its columns hold
    (:data:`CONTEXT_COPIES`; see the module's docstring). The rows of the DuckDB paths end
    here; the compiled decoder strips its own rows as it writes them, with the same scan. So the
    text is the same whichever path decoded a row (dedup's fingerprint hashes it).

    The compiled kernel when it is built, else :func:`strip_context_text` row by row (the
    reference the tests hold the kernel to).
    """
    if decoded.num_rows == 0 or decoded.column("context").null_count == decoded.num_rows:
        return decoded
    names = [name for name, _ in CONTEXT_COPIES]
    chunks = []
    for batch in decoded.select(["context", *names]).to_batches():
        context = batch.column(0)
        if _cdecode is not None:
            out = _cdecode.strip_context(
                len(context), _large_spec(context), tuple(_large_spec(c) for c in batch.columns[1:])
            )
            if out is not None:
                validity = context.buffers()[0] if context.null_count else None
                context = pa.LargeStringArray.from_buffers(
                    len(context), pa.py_buffer(out[0]), pa.py_buffer(out[1]), validity, context.null_count
                )
        else:
            columns = [c.to_pylist() for c in batch.columns[1:]]
            context = pa.array(
                [
                    None if text is None else strip_context_text(text, [col[i] for col in columns])
                    for i, text in enumerate(context.to_pylist())
                ],
                pa.large_string(),
            )
        chunks.append(context)
    index = decoded.schema.get_field_index("context")
    return decoded.set_column(index, decoded.schema.field(index), pa.chunked_array(chunks, pa.large_string()))


def _large_spec(values: pa.Array) -> tuple[str, int, Any, Any, Any]:
    """How the kernel reads a ``large_string`` array (``_carrow.h``, as the enrichment kernels
    read theirs): (kind, offset, validity, offsets, data)."""
    validity, offsets, data = values.buffers()
    return ("large_string", values.offset, validity if values.null_count else None, offsets, data)


def strip_context_text(text: str, values: list[str | None]) -> str:
    """One ``context``'s text without the members ``values`` hold (one value per entry of
    :data:`CONTEXT_COPIES`, in its order); the text as it is when nothing is dropped or it is
    not a compact JSON object (what the decoders write)."""
    top = {path[0]: value for (_, path), value in zip(CONTEXT_COPIES, values, strict=True) if len(path) == 1}
    nested: dict[str, dict[str, str | None]] = {}
    for (_, path), value in zip(CONTEXT_COPIES, values, strict=True):
        if len(path) == 2:
            nested.setdefault(path[0], {})[path[1]] = value
    try:
        out, dropped, _ = _strip_object(text, 0, len(text), top, nested)
    except (ValueError, IndexError):
        return text
    return out if dropped else text


def _strip_object(
    text: str, start: int, end: int, want: dict[str, str | None], nested: dict[str, dict[str, str | None]]
) -> tuple[str, int, int]:
    """The object ``text[start:end]`` without the members ``want`` (and ``nested``, one level
    down) name: ``(text, members dropped, members kept)``; ValueError when malformed."""
    if end - start < 2 or text[start] != "{" or text[end - 1] != "}":
        raise ValueError("not an object")
    if end - start == 2:
        return text[start:end], 0, 0
    kept: list[str] = []
    dropped, p = 0, start + 1
    while True:
        if text[p] != '"':
            raise ValueError("no key")
        key_end = _string_end(text, p, end)
        key = text[p + 1 : key_end - 1]
        if key_end >= end or text[key_end] != ":":
            raise ValueError("no colon")
        v = key_end + 1
        v_end = _value_end(text, v, end)
        member = text[p:v_end]
        escaped_key = "\\" in key
        if not escaped_key and text[v] == '"' and key in want:
            value = text[v + 1 : v_end - 1]
            if want[key] is not None and "\\" not in value and value == want[key]:
                dropped += 1
                member = ""
        elif not escaped_key and text[v] == "{" and key in nested:
            inner, inner_dropped, inner_kept = _strip_object(text, v, v_end, nested[key], {})
            if inner_dropped:
                dropped += inner_dropped
                member = text[p:v] + inner if inner_kept else ""
        if member:
            kept.append(member)
        p = v_end
        if p < end and text[p] == ",":
            p += 1
            continue
        if p == end - 1:
            break
        raise ValueError("no comma")
    return "{" + ",".join(kept) + "}", dropped, len(kept)


def _string_end(text: str, p: int, end: int) -> int:
    """Past the closing quote of the string at ``text[p]``."""
    p += 1
    while p < end:
        if text[p] == '"':
            return p + 1
        p += 2 if text[p] == "\\" else 1
    raise ValueError("unterminated string")


def _value_end(text: str, p: int, end: int) -> int:
    """Past the end of the JSON value at ``text[p]``."""
    if p >= end:
        raise ValueError("no value")
    if text[p] == '"':
        return _string_end(text, p, end)
    if text[p] in "{[":
        depth = 0
        while p < end:
            c = text[p]
            if c == '"':
                p = _string_end(text, p, end)
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return p + 1
            p += 1
        raise ValueError("unterminated")
    q = p
    while q < end and text[q] not in ",}]":
        q += 1
    if q == p:
        raise ValueError("no value")
    return q


def decode(lines: pa.RecordBatch, mode: EnvelopeMode, options: DecodeOptions, now_us: int) -> pa.Table:
    """Decode and validate a batch of lines.

    Rows come out in source order: by ``source_offset``, then ``source_index``.

    Args:
        lines: ``rn``, ``line``, ``source_stream``, ``source_offset`` (see :func:`lines_of`).
        mode: ``"spool"`` for collector envelopes, ``"segment"`` for bare Segment lines.
        options: Limits, the write-key mapping, and whether to take the fast path.
        now_us: Receive time (epoch microseconds) for file events that carry no ``receivedAt``.

    Returns:
        A table of :data:`DECODED_ARROW`: good events have ``error_type`` NULL.
    """
    if not options.fast_path or lines.num_rows == 0:
        return strip_context(_in_source_order(_run_exact(mode, lines, options, now_us)))
    if _cdecode is None:
        _note_compiled_missing()
        return strip_context(_in_source_order(_decode_duckdb(lines, mode, options, now_us)))
    return _decode_compiled(lines, mode, options, now_us)


def _note_compiled_missing() -> None:
    global _CDECODE_MISSING
    if _CDECODE_MISSING is not None:
        log.warning("event=decoder_compiled_path_missing fallback=duckdb error=%r", _CDECODE_MISSING)
        _CDECODE_MISSING = None


def _decode_duckdb(
    lines: pa.RecordBatch, mode: EnvelopeMode, options: DecodeOptions, now_us: int
) -> pa.Table:
    """The DuckDB fast path (read_json), with the exact path for the lines it cannot take."""
    out = _run(_FAST_SQL[mode], lines, options, now_us, scratch=_write_scratch(lines, _SENTINEL_LINE[mode]))
    marker = out.column("slow_rn")
    is_marker = pc.is_valid(marker)
    if pc.min(marker).as_py() != -1:
        # Rows and lines came out misaligned (a line that held two JSON values, say): only
        # the exact path can tell them apart.
        return _run_exact(mode, lines, options, now_us)
    slow_rns = pc.filter(marker, pc.and_(is_marker, pc.greater_equal(marker, 0)))
    fast = _without_markers(out, marker, is_marker).drop_columns(["slow_rn"])
    # Failures need their raw text and events without messageId an id derived from it:
    # the exact path has both, so their whole lines go there.
    needs_text = pc.or_(pc.is_valid(fast.column("error_type")), pc.is_null(fast.column("event_id")))
    redo_offsets = pc.unique(pc.filter(fast.column("source_offset"), needs_text))
    if len(redo_offsets):
        fast = fast.filter(pc.invert(pc.is_in(fast.column("source_offset"), redo_offsets)))
    slow_mask = pc.or_(
        pc.is_in(lines.column("rn"), slow_rns), pc.is_in(lines.column("source_offset"), redo_offsets)
    )
    slow_lines = lines.filter(slow_mask)
    if slow_lines.num_rows == 0:
        return fast
    return pa.concat_tables([fast, _run_exact(mode, slow_lines, options, now_us)])


def _in_source_order(t: pa.Table) -> pa.Table:
    """``t`` ordered by source position (offset, then index in the batch); usually it already is,
    and then it is returned as is."""
    if t.num_rows < 2:
        return t
    offset = t.column("source_offset").to_numpy()
    index = t.column("source_index").to_numpy()
    step = np.diff(offset)
    if (step > 0).all() or ((step >= 0).all() and (np.diff(index)[step == 0] > 0).all()):
        return t
    return t.take(pa.array(np.lexsort((index, offset))))


# String columns the compiled decoder writes, in its order; "app" is the envelope's app (spool)
# or the write key (files), mapped to the app id here.
_COMPILED_STRINGS = (
    "event_id",
    "event_type",
    "event_name",
    "app",
    "user_id",
    "anonymous_id",
    "session_id",
    "user_key",
    "group_id",
    "previous_id",
    "page_url",
    "page_path",
    "page_title",
    "page_referrer",
    "user_agent",
    "user_ipaddress",
    "library_name",
    "library_version",
    "properties",
    "traits",
    "context",
)
_COMPILED_TIMESTAMPS = ("dvce_created_tstamp", "dvce_sent_tstamp", "collector_tstamp", "derived_tstamp")


def compiled_scan(
    lines: pa.RecordBatch, mode: EnvelopeMode, options: DecodeOptions, now_us: int
) -> tuple[Any, ...]:
    """The compiled decoder's raw output for ``lines`` (no nulls): per-line fallback flags (one
    byte each), the row count, the string and timestamp column buffers, ``source_index`` and
    each row's line."""
    assert _cdecode is not None
    line = lines.column("line")
    _, offsets, data = line.buffers()
    result: tuple[Any, ...] = _cdecode.decode_lines(
        data,
        offsets,
        line.offset,
        len(line),
        mode == "spool",
        options.max_event_bytes,
        options.max_request_bytes,
        now_us,
        int(options.max_future_s * 1_000_000),
        int(options.max_age_days * 86_400_000_000),
    )
    return result


def _decode_compiled(
    lines: pa.RecordBatch, mode: EnvelopeMode, options: DecodeOptions, now_us: int
) -> pa.Table:
    """Typical lines through the compiled decoder, the lines it flags through the DuckDB paths."""
    if lines.column("line").null_count:
        return strip_context(_in_source_order(_decode_duckdb(lines, mode, options, now_us)))
    # The compiled decoder strips each context itself (the same scan as strip_context's kernel).
    fallback, n, strings, stamps, source_index, line_idx = compiled_scan(lines, mode, options, now_us)
    cols: dict[str, pa.Array] = {}
    for name, (valid, nulls, offs, chars) in zip(_COMPILED_STRINGS, strings, strict=True):
        cols[name] = pa.LargeStringArray.from_buffers(
            n, pa.py_buffer(offs), pa.py_buffer(chars), pa.py_buffer(valid) if nulls else None, nulls
        )
    ts = pa.timestamp("us", tz="UTC")
    for name, (valid, nulls, values) in zip(_COMPILED_TIMESTAMPS, stamps, strict=True):
        cols[name] = pa.Array.from_buffers(
            ts, n, [pa.py_buffer(valid) if nulls else None, pa.py_buffer(values)], null_count=nulls
        )
    app = cols.pop("app")
    if mode == "spool":
        cols["app_id"] = app
    else:
        keys = pa.array(list(options.write_keys), pa.large_string())
        apps = pa.array(list(options.write_keys.values()), pa.large_string())
        cols["app_id"] = pc.fill_null(
            pc.take(apps, pc.index_in(app, value_set=keys)),
            pa.scalar(options.default_app_id, pa.large_string()),
        )
    redo = np.frombuffer(fallback, dtype=np.uint8).view(bool)
    if n == lines.num_rows and not redo.any():
        # every line gave exactly one row (a batch gives at least one): the lines' own columns
        cols["source_stream"] = lines.column("source_stream")
        cols["source_offset"] = lines.column("source_offset")
    else:
        take = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(line_idx)])
        cols["source_stream"] = lines.column("source_stream").take(take)
        cols["source_offset"] = lines.column("source_offset").take(take)
    cols["source_index"] = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(source_index)])
    fast = pa.Table.from_arrays(
        [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in DECODED_ARROW], schema=DECODED_ARROW
    )
    if not redo.any():
        return fast
    # What the compiled decoder leaves is mostly failures, which need the exact path anyway, but
    # it goes through DuckDB's fast path first all the same: the two DuckDB paths do not agree on
    # every line (a spool line's "rt" as a numeric string passes read_json's BIGINT column, and
    # the exact path calls it an invalid envelope), and the decoded rows must not depend on it.
    rest = strip_context(_decode_duckdb(lines.filter(pa.array(redo)), mode, options, now_us))
    return _in_source_order(pa.concat_tables([fast, rest]))


def _without_markers(out: pa.Table, marker: pa.ChunkedArray, is_marker: pa.ChunkedArray) -> pa.Table:
    """The decoded rows of the fast path's output, without its marker rows. These usually come
    out last, and then a zero-copy slice drops them instead of a filter copying every column."""
    markers = len(marker) - marker.null_count
    rows = out.num_rows - markers
    if marker.slice(rows).null_count == 0:
        return out.slice(0, rows)
    return out.filter(pc.invert(is_marker))


# The exact path parses and re-serializes each line several times: big batch lines (SDKs send up
# to 500 KB) would take it past the connection's memory limit in one go, so it runs on slices.
_EXACT_SLICE_BYTES = 4 << 20


def _run_exact(mode: EnvelopeMode, lines: pa.RecordBatch, options: DecodeOptions, now_us: int) -> pa.Table:
    """The exact path over ``lines``, in slices of about ``_EXACT_SLICE_BYTES`` of text."""
    sizes = pc.binary_length(lines.column("line")).to_numpy(zero_copy_only=False)
    if lines.num_rows <= 1 or int(sizes.sum()) <= _EXACT_SLICE_BYTES:
        return _run(_SQL[mode], lines, options, now_us)
    # A new slice starts wherever the running size enters the next multiple of the slice size.
    group = (np.cumsum(sizes) - sizes) // _EXACT_SLICE_BYTES
    bounds = [0, *(np.flatnonzero(np.diff(group)) + 1).tolist(), lines.num_rows]
    parts = [_run(_SQL[mode], lines.slice(a, b - a), options, now_us) for a, b in itertools.pairwise(bounds)]
    return pa.concat_tables(parts)


def _write_scratch(lines: pa.RecordBatch, sentinel: bytes) -> str:
    """Write the lines, one per line, and then ``sentinel``, to this thread's scratch file."""
    line = lines.column("line")
    scratch = _scratch()
    # Overwritten in place and cut to size, not truncated first: the file's pages (in /dev/shm,
    # memory) are reused from chunk to chunk instead of being freed and zeroed again.
    os.lseek(scratch.fd, 0, os.SEEK_SET)
    with open(scratch.fd, "wb", closefd=False) as f:
        if len(line):
            offsets = np.frombuffer(
                line.buffers()[1], dtype=np.int64, count=len(line) + 1, offset=line.offset * 8
            )
            data = memoryview(line.buffers()[2])[offsets[0] : offsets[-1]]
            f.write(data)
            if bytes(data[-1:]) != b"\n":
                f.write(b"\n")
        f.write(sentinel)
        size = f.tell()
    os.ftruncate(scratch.fd, size)
    return scratch.path


class _Scratch:
    """This thread's scratch file, open for the thread's whole life.

    Where ``/proc/self/fd`` exists (Linux), the file is unlinked as soon as it is created and
    read through its descriptor, so nothing is left behind in /dev/shm even by a process killed
    with -9. It is closed (and elsewhere removed) when the thread ends, as its thread-local data
    goes and this with it, or at exit.
    """

    def __init__(self) -> None:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        self.fd, name = tempfile.mkstemp(prefix="clicklake-decode-", suffix=".ndjson", dir=base)
        if Path("/proc/self/fd").is_dir():
            _unlink(name)
            self.path = f"/proc/self/fd/{self.fd}"
            weakref.finalize(self, os.close, self.fd)
        else:
            self.path = name
            weakref.finalize(self, _close_and_unlink, self.fd, name)


def _close_and_unlink(fd: int, path: str) -> None:
    os.close(fd)
    _unlink(path)


def _scratch() -> _Scratch:
    scratch: _Scratch | None = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = _Scratch()
    return scratch


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()


def _run(
    sql: str, lines: pa.RecordBatch, options: DecodeOptions, now_us: int, scratch: str | None = None
) -> pa.Table:
    con = _connection()
    wk = pa.table(
        {
            "key": pa.array(list(options.write_keys), pa.large_string()),
            "app": pa.array(list(options.write_keys.values()), pa.large_string()),
        }
    )
    params: dict[str, object] = {
        "max_event": options.max_event_bytes,
        "default_app": options.default_app_id,
        "now_us": now_us,
        "max_future_us": int(options.max_future_s * 1_000_000),
        "max_age_us": int(options.max_age_days * 86_400_000_000),
        "max_future_s": options.max_future_s,
        "max_age_days": options.max_age_days,
    }
    if scratch is None:
        params["max_request"] = options.max_request_bytes
    else:
        params["path"] = scratch
        params["max_object"] = max(options.max_request_bytes, 1 << 20) * 4
    con.register("lines", lines)
    con.register("write_keys", wk)
    try:
        out = con.sql(sql, params=params).to_arrow_table()
    finally:
        con.unregister("lines")
        con.unregister("write_keys")
    if scratch is not None:
        marker = out.column("slow_rn")
        return _to_decoded(out.drop_columns(["slow_rn"])).append_column("slow_rn", marker)
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
    error_type = decoded.column("error_type")
    if error_type.null_count == decoded.num_rows:
        # Nothing failed, the common case: no filter, no copy.
        good = decoded.select([c.name for c in EVENT_COLUMNS])
        return good, FAILED_ARROW.empty_table()
    ok = pc.is_null(error_type)
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
