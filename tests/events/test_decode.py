"""Golden tests of the Segment decoder: each call type and the edge cases, worked out by hand."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest

import clicklake.events.decode as decode_module
from clicklake.events.decode import DecodeOptions, decode_chunk, split
from clicklake.events.envelope import encode_line
from clicklake.sources.base import Chunk

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)
OPTS = DecodeOptions(write_keys={"wk_demo": "demo-shop"}, default_app_id="fallback")
_current = {"opts": OPTS}


@pytest.fixture(autouse=True, params=["compiled", "fast", "exact"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every golden case runs through each decoding path: the compiled decoder (with the DuckDB
    paths for what it leaves), DuckDB's fast path, the exact path. They must agree exactly."""
    _current["opts"] = dataclasses.replace(OPTS, fast_path=request.param != "exact")
    if request.param != "compiled":
        monkeypatch.setattr(decode_module, "_cdecode", None)
        monkeypatch.setattr(decode_module, "_CDECODE_MISSING", None)
    return str(request.param)


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


def run(
    lines: list[bytes | dict[str, Any]], mode: str = "segment"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    raw = [x if isinstance(x, bytes) else orjson.dumps(x) for x in lines]
    data = b"\n".join(raw) + b"\n"
    good, bad = split(decode_chunk(Chunk("s1", 1000, data, mode), _current["opts"], NOW_US))  # type: ignore[arg-type]
    key = lambda r: (r["source_offset"], r["source_index"])  # noqa: E731
    return sorted(good.to_pylist(), key=key), sorted(bad.to_pylist(), key=key)


def one(line: dict[str, Any]) -> dict[str, Any]:
    good, bad = run([line])
    assert bad == [], bad
    assert len(good) == 1
    return good[0]


def fail(line: bytes | dict[str, Any]) -> dict[str, Any]:
    good, bad = run([line])
    assert good == []
    assert len(bad) == 1
    return bad[0]


def test_track_maps_every_core_column() -> None:
    r = one(
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": "m-1",
            "userId": "u1",
            "anonymousId": "a1",
            "timestamp": "2026-11-26T11:00:00.000Z",
            "sentAt": "2026-11-26T11:00:10.000Z",
            "receivedAt": "2026-11-26T11:00:11.000Z",
            "writeKey": "wk_demo",
            "properties": {"revenue": 9.5, "session_id": "s-from-props"},
            "context": {
                "ip": "203.0.113.7",
                "userAgent": "UA/1",
                "library": {"name": "analytics-python", "version": "2.3"},
                "page": {
                    "url": "https://shop.example/cart",
                    "path": "/cart",
                    "title": "Cart",
                    "referrer": "https://google.com/",
                },
            },
        }
    )
    assert r["event_id"] == "m-1"
    assert (r["event_type"], r["event_name"], r["app_id"]) == ("track", "Order Completed", "demo-shop")
    assert (r["user_id"], r["anonymous_id"], r["user_key"]) == ("u1", "a1", "u1")
    assert r["session_id"] == "s-from-props"
    assert r["dvce_created_tstamp"] == ts("2026-11-26T11:00:00Z")
    assert r["dvce_sent_tstamp"] == ts("2026-11-26T11:00:10Z")
    assert r["collector_tstamp"] == ts("2026-11-26T11:00:11Z")
    # collector - (sent - created) = 11:00:11 - 10 s
    assert r["derived_tstamp"] == ts("2026-11-26T11:00:01Z")
    assert (r["page_url"], r["page_path"], r["page_title"], r["page_referrer"]) == (
        "https://shop.example/cart",
        "/cart",
        "Cart",
        "https://google.com/",
    )
    assert (r["user_agent"], r["user_ipaddress"]) == ("UA/1", "203.0.113.7")
    assert (r["library_name"], r["library_version"]) == ("analytics-python", "2.3")
    assert orjson.loads(r["properties"]) == {"revenue": 9.5, "session_id": "s-from-props"}
    # every member of this context is a column's value: it is stored once, in the column
    assert r["context"] == "{}"
    assert (r["source_stream"], r["source_offset"], r["source_index"]) == ("s1", 1000, 0)


def test_page_takes_name_and_properties_over_context_page() -> None:
    r = one(
        {
            "type": "page",
            "name": "Home",
            "anonymousId": "a1",
            "messageId": "p1",
            "properties": {"url": "https://x.example/?utm_source=news", "path": "/", "title": "Home"},
            "context": {"page": {"url": "https://ignored.example/", "referrer": "https://t.co/x"}},
        }
    )
    assert (r["event_type"], r["event_name"]) == ("page", "Home")
    assert r["page_url"] == "https://x.example/?utm_source=news"
    assert r["page_referrer"] == "https://t.co/x"  # falls back to context.page
    # context keeps the URL the column does not hold, not the referrer it does
    assert orjson.loads(r["context"]) == {"page": {"url": "https://ignored.example/"}}
    assert r["user_key"] == "a1" and r["user_id"] is None


@pytest.mark.parametrize(
    ("call", "check"),
    [
        ({"type": "screen", "name": "Checkout", "userId": "u"}, lambda r: r["event_name"] == "Checkout"),
        (
            {"type": "identify", "userId": "u", "traits": {"email": "a@b.c", "nested": {"x": [1, 2]}}},
            lambda r: (
                orjson.loads(r["traits"]) == {"email": "a@b.c", "nested": {"x": [1, 2]}}
                and r["event_name"] is None
            ),
        ),
        (
            {"type": "group", "userId": "u", "groupId": "acme", "traits": {"plan": "pro"}},
            lambda r: r["group_id"] == "acme",
        ),
        ({"type": "alias", "userId": "u", "previousId": "anon-9"}, lambda r: r["previous_id"] == "anon-9"),
    ],
)
def test_other_call_types(call: dict[str, Any], check: Any) -> None:
    r = one({**call, "messageId": "x"})
    assert r["event_type"] == call["type"]
    assert check(r)


def test_numeric_ids_become_strings_and_session_id_from_context() -> None:
    r = one(
        {
            "type": "track",
            "event": "E",
            "userId": 12345,
            "messageId": 987,
            "context": {"sessionId": 1732600000123},
        }
    )
    assert (r["user_id"], r["user_key"], r["event_id"], r["session_id"]) == (
        "12345",
        "12345",
        "987",
        "1732600000123",
    )


def test_unicode_is_kept_exactly() -> None:
    r = one({"type": "track", "event": "Añadido 🛒", "userId": "用户", "properties": {"名前": "Zoë"}})
    assert r["event_name"] == "Añadido 🛒"
    assert r["user_id"] == "用户"
    assert orjson.loads(r["properties"]) == {"名前": "Zoë"}


def test_timestamps_with_offsets_and_epoch_ms() -> None:
    r = one({"type": "track", "event": "E", "userId": "u", "timestamp": "2026-11-26T13:30:00+02:00"})
    assert r["dvce_created_tstamp"] == ts("2026-11-26T11:30:00Z")
    # no sentAt: derived is the device time as given (Segment's rule)
    assert r["derived_tstamp"] == ts("2026-11-26T11:30:00Z")
    r = one(
        {"type": "track", "event": "E", "userId": "u", "timestamp": 1795690800000, "sentAt": 1795690805000}
    )
    assert r["dvce_created_tstamp"] == ts("2026-11-26T11:00:00Z")
    # files without receivedAt: collector time is the read time (NOW); derived = NOW - 5 s
    assert r["collector_tstamp"] == NOW
    assert r["derived_tstamp"] == ts("2026-11-26T11:59:55Z")


def test_missing_optional_fields_and_original_timestamp() -> None:
    r = one({"type": "track", "event": "E", "anonymousId": "a", "originalTimestamp": "2026-11-26T10:00:00Z"})
    assert r["dvce_created_tstamp"] == ts("2026-11-26T10:00:00Z")
    assert r["properties"] is None and r["traits"] is None and r["context"] is None
    assert r["page_url"] is None and r["session_id"] is None
    assert r["app_id"] == "fallback"  # no writeKey: the default app


def test_missing_message_id_gets_a_deterministic_id() -> None:
    call = {"type": "track", "event": "E", "userId": "u"}
    a, b = one(call), one(call)
    assert a["event_id"] == b["event_id"]
    assert a["event_id"].startswith("md5:")
    assert one({**call, "event": "F"})["event_id"] != a["event_id"]


def test_unmapped_top_level_fields_are_kept_in_context() -> None:
    r = one(
        {
            "type": "track",
            "event": "E",
            "userId": "u",
            "integrations": {"All": False},
            "channel": "server",
            "context": {"locale": "fr-FR"},
        }
    )
    ctx = orjson.loads(r["context"])
    assert ctx["locale"] == "fr-FR"
    assert ctx["_unmapped"] == {"integrations": {"All": False}, "channel": "server"}


def test_batch_envelope_explodes_with_batch_context_and_sent_at() -> None:
    good, bad = run(
        [
            {
                "batch": [
                    {
                        "type": "track",
                        "event": "A",
                        "userId": "u",
                        "messageId": "b1",
                        "timestamp": "2026-11-26T11:00:00Z",
                        "context": {"ip": "198.51.100.1"},
                    },
                    {"type": "page", "anonymousId": "a", "messageId": "b2"},
                    {"type": "bogus", "userId": "u", "messageId": "b3"},
                ],
                "sentAt": "2026-11-26T11:00:05Z",
                "receivedAt": "2026-11-26T11:00:07Z",
                "writeKey": "wk_demo",
                "context": {"library": {"name": "analytics-node", "version": "9"}, "ip": "192.0.2.1"},
            }
        ]
    )
    assert [r["event_id"] for r in good] == ["b1", "b2"]
    assert [r["source_index"] for r in good] == [0, 1]
    assert {r["app_id"] for r in good} == {"demo-shop"}
    assert good[0]["user_ipaddress"] == "198.51.100.1"  # the event's own context wins
    assert good[1]["user_ipaddress"] == "192.0.2.1"
    assert good[1]["library_name"] == "analytics-node"
    assert good[0]["derived_tstamp"] == ts("2026-11-26T11:00:02Z")  # 11:00:07 - (11:00:05 - 11:00:00)
    assert [(r["source_index"], r["error_type"]) for r in bad] == [(2, "invalid_type")]
    assert orjson.loads(bad[0]["raw"]) == {"type": "bogus", "userId": "u", "messageId": "b3"}


def test_spool_envelope_supplies_app_time_ip_and_user_agent() -> None:
    line = encode_line(
        orjson.dumps({"type": "track", "event": "E", "anonymousId": "a", "messageId": "s1"}),
        app_id="tenant-a",
        received_ms=1795690800000,
        ip="203.0.113.9",
        user_agent="HeaderUA/2",
    ).rstrip(b"\n")
    good, bad = run([line], mode="spool")
    assert bad == []
    (r,) = good
    assert (r["app_id"], r["user_ipaddress"], r["user_agent"]) == ("tenant-a", "203.0.113.9", "HeaderUA/2")
    assert r["collector_tstamp"] == r["derived_tstamp"] == ts("2026-11-26T11:00:00Z")


def test_blank_lines_are_not_events() -> None:
    good, bad = run([b"", b"   ", {"type": "track", "event": "E", "userId": "u"}])
    assert len(good) == 1 and bad == []


@pytest.mark.parametrize(
    ("line", "stage", "error_type"),
    [
        (b'{"type": "track", "event": ', "decode", "invalid_json"),
        (b"[1, 2, 3]", "decode", "invalid_envelope"),
        (b'{"batch": "oops"}', "decode", "invalid_envelope"),
        (
            {"type": "track", "event": "E", "userId": "u", "properties": {"blob": "x" * 40_000}},
            "decode",
            "event_too_large",
        ),
        ({"event": "E", "userId": "u"}, "validate", "missing_field"),
        ({"type": "track", "event": "E"}, "validate", "missing_field"),
        ({"type": "track", "userId": "u"}, "validate", "missing_field"),
        ({"type": "group", "userId": "u"}, "validate", "missing_field"),
        ({"type": "alias", "userId": "u"}, "validate", "missing_field"),
        ({"type": "bogus", "userId": "u"}, "validate", "invalid_type"),
        ({"type": 7, "userId": "u"}, "validate", "wrong_type"),
        ({"type": "track", "event": "E", "userId": {"id": 1}}, "validate", "wrong_type"),
        ({"type": "track", "event": ["E"], "userId": "u"}, "validate", "wrong_type"),
        ({"type": "track", "event": "E", "userId": "u", "properties": "x=1"}, "validate", "wrong_type"),
        ({"type": "track", "event": "E", "userId": "u", "properties": [1]}, "validate", "wrong_type"),
        ({"type": "track", "event": "E", "userId": "u", "messageId": ""}, "validate", "invalid_message_id"),
        (
            {"type": "track", "event": "E", "userId": "u", "messageId": {"a": 1}},
            "validate",
            "invalid_message_id",
        ),
        (
            {"type": "track", "event": "E", "userId": "u", "timestamp": "not-a-date"},
            "validate",
            "invalid_timestamp",
        ),
        (
            {"type": "track", "event": "E", "userId": "u", "timestamp": "2024-13-45T99:00:00Z"},
            "validate",
            "invalid_timestamp",
        ),
        (
            {"type": "track", "event": "E", "userId": "u", "sentAt": "yesterday"},
            "validate",
            "invalid_timestamp",
        ),
        (
            {"type": "track", "event": "E", "userId": "u", "timestamp": "2023-11-26T12:00:00Z"},
            "validate",
            "timestamp_out_of_range",
        ),
        (
            {"type": "track", "event": "E", "userId": "u", "timestamp": "2026-12-01T12:00:00Z"},
            "validate",
            "timestamp_out_of_range",
        ),
    ],
)
def test_each_failure_lands_with_stage_type_message_and_raw(
    line: bytes | dict[str, Any], stage: str, error_type: str
) -> None:
    r = fail(line)
    assert (r["stage"], r["error_type"]) == (stage, error_type)
    assert r["error_message"]
    raw = line if isinstance(line, bytes) else orjson.dumps(line)
    assert orjson.loads(r["raw"]) == orjson.loads(raw) if error_type != "invalid_json" else r["raw"] == raw
    assert (r["source_stream"], r["source_offset"]) == ("s1", 1000)
    assert r["collector_tstamp"] is not None


def test_oversized_request_is_one_failure() -> None:
    big = {"batch": [{"type": "track", "event": "E", "userId": "u", "properties": {"p": "y" * 30_000}}] * 20}
    r = fail(big)
    assert r["error_type"] == "batch_too_large"
    assert "limit is 512000" in r["error_message"]


def test_invalid_utf8_line_fails_alone() -> None:
    good, bad = run(
        [{"type": "track", "event": "E", "userId": "u"}, b'{"type":"track","event":"\xff\xfe","userId":"u"}']
    )
    assert len(good) == 1
    assert [r["error_type"] for r in bad] == ["invalid_utf8"]
    assert bad[0]["raw"] == b'{"type":"track","event":"\xff\xfe","userId":"u"}\n'


def test_source_offsets_are_byte_offsets_of_lines() -> None:
    a = orjson.dumps({"type": "track", "event": "A", "userId": "u"})
    b = orjson.dumps({"type": "track", "event": "B", "userId": "u"})
    good, _ = run([a, b])
    assert [r["source_offset"] for r in good] == [1000, 1000 + len(a) + 1]


def test_unmapped_batch_level_fields_are_kept_with_each_event() -> None:
    good, bad = run(
        [{"batch": [{"type": "track", "event": "A", "userId": "u"}], "integrations": {"X": True}}]
    )
    assert bad == []
    assert orjson.loads(good[0]["context"])["_unmapped"] == {"_batch": {"integrations": {"X": True}}}


def test_the_fast_path_decodes_typical_lines_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    _current["opts"] = dataclasses.replace(OPTS, fast_path=True)
    monkeypatch.setattr(decode_module, "_SQL", {})  # the exact path would raise KeyError
    good, bad = run(
        [
            {"type": "track", "event": "A", "userId": "u", "messageId": "1", "context": {"ip": "1.2.3.4"}},
            {
                "batch": [{"type": "page", "anonymousId": "a", "messageId": "2"}],
                "sentAt": "2026-11-26T11:00:00Z",
            },
        ]
    )
    assert [r["event_id"] for r in good] == ["1", "2"] and bad == []


SDK_LINES: list[dict[str, Any]] = [
    {
        "type": "page",
        "anonymousId": "a",
        "messageId": "s1",
        "integrations": {},
        "_metadata": {"bundled": ["Segment.io"]},
        "context": {"page": {"path": "/"}},
    },
    {"type": "track", "event": "E", "userId": "u", "messageId": "s2", "integrations": {"All": True}},
    {
        "batch": [
            {"type": "track", "event": "F", "userId": "u", "messageId": "s3", "integrations": {"X": False}}
        ],
        "sentAt": "2026-11-26T11:00:00Z",
    },
    {"type": "track", "event": "G", "userId": "u", "messageId": "s4", "integrations": None},
]


def test_sdk_extras_are_kept_under_unmapped() -> None:
    good, bad = run(SDK_LINES)
    assert bad == []
    unmapped = [orjson.loads(r["context"] or "{}").get("_unmapped") for r in good]
    assert unmapped == [
        {"integrations": {}, "_metadata": {"bundled": ["Segment.io"]}},
        {"integrations": {"All": True}},
        {"integrations": {"X": False}},
        None,  # a null carries nothing
    ]


def test_both_paths_give_the_same_bytes_for_sdk_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dedup fingerprint hashes the context text: a resend decoded by the other path must match."""
    _current["opts"] = dataclasses.replace(OPTS, fast_path=True)
    fast_good, _ = run(SDK_LINES)
    _current["opts"] = dataclasses.replace(OPTS, fast_path=False)
    exact_good, _ = run(SDK_LINES)
    assert [r["context"] for r in fast_good] == [r["context"] for r in exact_good]
    # and the fast path really took them
    _current["opts"] = dataclasses.replace(OPTS, fast_path=True)
    monkeypatch.setattr(decode_module, "_SQL", {})
    assert len(run(SDK_LINES)[0]) == 4


def test_the_exact_path_in_slices_gives_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Big batch lines are decoded exactly in slices (bounded memory): the rows do not change."""
    lines: list[bytes | dict[str, Any]] = [
        {
            "batch": [
                {"type": "track", "event": f"E{i}", "userId": f"u{i}", "messageId": f"m{i}-{j}"}
                for j in range(5)
            ]
            + [{"type": "bogus", "userId": "u", "messageId": f"bad{i}"}],
            "sentAt": "2026-11-26T11:00:00Z",
        }
        for i in range(12)
    ]
    lines.insert(5, b"{not json")
    whole = run(lines)
    calls: list[int] = []
    inner = decode_module._run

    def counting(sql: str, batch: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(batch.num_rows)
        return inner(sql, batch, *args, **kwargs)

    monkeypatch.setattr(decode_module, "_EXACT_SLICE_BYTES", 1500)
    monkeypatch.setattr(decode_module, "_run", counting)
    sliced = run(lines)
    assert sliced == whole
    assert len(whole[0]) == 60 and len(whole[1]) == 13
    exact_calls = calls[1:] if _current["opts"].fast_path else calls
    assert len(exact_calls) > 3 and sum(exact_calls) == 13


def test_a_500_kb_batch_of_hundreds_of_events_decodes_within_the_memory_limit() -> None:
    """Each element row used to carry its whole request along: 500 events ran DuckDB out of memory."""
    events = [
        {"type": "track", "event": "E", "userId": "u", "messageId": f"m{j}", "properties": {"pad": "x" * 900}}
        for j in range(500)
    ]
    body = orjson.dumps({"batch": events, "sentAt": "2026-11-26T11:00:00Z"})
    assert 400_000 < len(body) < OPTS.max_request_bytes
    line = encode_line(body, app_id="demo-shop", received_ms=NOW_US // 1000)
    good, bad = run([line.rstrip(b"\n")], mode="spool")
    assert bad == []
    assert [r["event_id"] for r in good] == [f"m{j}" for j in range(500)]


_NO_COPIES = dict.fromkeys((name for name, _ in decode_module.CONTEXT_COPIES), None)


@pytest.mark.parametrize(
    ("context", "columns", "expected"),
    [
        # every copy goes, the rest stays in its order
        (
            '{"locale":"en","userAgent":"UA/1","ip":"192.0.2.1","page":{"url":"u","search":"?q"},'
            '"library":{"name":"js","version":"2"},"sessionId":"s1"}',
            {
                "user_agent": "UA/1",
                "user_ipaddress": "192.0.2.1",
                "page_url": "u",
                "library_name": "js",
                "library_version": "2",
                "session_id": "s1",
            },
            '{"locale":"en","page":{"search":"?q"}}',
        ),
        # a value that differs from its column, or is not a string, is not a copy
        (
            '{"ip":"192.0.2.1","sessionId":123}',
            {"user_ipaddress": "192.0.2.9", "session_id": "123"},
            '{"ip":"192.0.2.1","sessionId":123}',
        ),
        # an escape in the JSON text: kept (its text is not the column's bytes)
        ('{"userAgent":"a\\"b"}', {"user_agent": 'a"b'}, '{"userAgent":"a\\"b"}'),
        # a page emptied by the strip goes; one sent empty stays
        ('{"page":{"url":"u"},"library":{}}', {"page_url": "u"}, '{"library":{}}'),
        # only the members the columns come from: not the same name elsewhere
        (
            '{"device":{"userAgent":"UA"},"traits":{"ip":"192.0.2.1"}}',
            {"user_agent": "UA", "user_ipaddress": "192.0.2.1"},
            '{"device":{"userAgent":"UA"},"traits":{"ip":"192.0.2.1"}}',
        ),
        # a duplicate key is dropped when it is a copy too
        ('{"ip":"192.0.2.1","x":1,"ip":"192.0.2.1"}', {"user_ipaddress": "192.0.2.1"}, '{"x":1}'),
        # unmapped fields are never columns
        (
            '{"userAgent":"UA","_unmapped":{"integrations":{}}}',
            {"user_agent": "UA"},
            '{"_unmapped":{"integrations":{}}}',
        ),
        # all of it copies: an empty object (a context was sent)
        ('{"userAgent":"UA"}', {"user_agent": "UA"}, "{}"),
        # not what the decoders write: left as it is
        ('{"userAgent":"UA",}', {"user_agent": "UA"}, '{"userAgent":"UA",}'),
        (None, {"user_agent": "UA"}, None),
    ],
)
def test_context_keeps_what_no_column_holds(
    context: str | None, columns: dict[str, str], expected: str | None, path: str
) -> None:
    """The compiled kernel (path "compiled") and the Python reference (the other paths) drop
    exactly the members a column holds."""
    values = {**_NO_COPIES, **columns}
    table = pa.table(
        {"context": pa.array([context, '{"a":1}'], pa.large_string())}
        | {name: pa.array([value, None], pa.large_string()) for name, value in values.items()}
    )
    out = decode_module.strip_context(table).column("context").to_pylist()
    assert out == [expected, '{"a":1}']
