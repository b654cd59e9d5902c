"""Differential tests of the compiled decoder: whatever the input, ``decode`` with the C module
gives exactly the table the DuckDB paths alone give (schema, values, row order, failures)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import clicklake.events.decode as decode_module
from clicklake.events.decode import CALL_TYPES, DecodeOptions, decode, lines_of
from clicklake.events.envelope import encode_line
from clicklake.sources.base import Chunk
from clicklake.sources.generator import generate

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)
OPTS = DecodeOptions(write_keys={"wk_demo": "demo-shop", "wk_other": "other-app"}, default_app_id="fallback")


def both(
    data: bytes, mode: str, monkeypatch: pytest.MonkeyPatch, options: DecodeOptions = OPTS
) -> tuple[pa.Table, pa.Table, int]:
    """The decoded table with the C module and without it, and how many lines the C module left
    to DuckDB."""
    lines, _ = lines_of(Chunk("s1", 1000, data, mode))  # type: ignore[arg-type]
    compiled = decode(lines, mode, options, NOW_US)  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(decode_module, "_cdecode", None)
        m.setattr(decode_module, "_CDECODE_MISSING", None)
        duckdb_only = decode(lines, mode, options, NOW_US)  # type: ignore[arg-type]
    fallback = 0
    if lines.num_rows:
        flags = decode_module.compiled_scan(lines, mode, options, NOW_US)[0]  # type: ignore[arg-type]
        fallback = int(np.frombuffer(flags, dtype=np.uint8).sum())
    return compiled, duckdb_only, fallback


def assert_same(compiled: pa.Table, duckdb_only: pa.Table) -> None:
    assert compiled.schema == duckdb_only.schema
    assert compiled.num_rows == duckdb_only.num_rows
    for name in compiled.column_names:
        x, y = compiled.column(name), duckdb_only.column(name)
        if x.equals(y):
            continue
        if pa.types.is_timestamp(x.type):  # some are past what datetime holds
            x, y = x.cast(pa.int64()), y.cast(pa.int64())
        a, b = x.to_pylist(), y.to_pylist()
        diffs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        assert not diffs, f"{name}: {len(diffs)} rows differ, first {diffs[:3]}"
    assert compiled.equals(duckdb_only)


# --- generated clickstreams -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ndjson", "spool"])
def test_generated_clickstream_decodes_the_same(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Malformed events, retries, batches and late events, in files and in spool envelopes."""
    generate(
        tmp_path,
        events=4000,
        seed=7,
        fmt=fmt,  # type: ignore[arg-type]
        malformed_share=0.05,
        retry_share=0.03,
        batch_share=0.3,
        late_share=0.05,
        end=NOW,
    )
    files = sorted(p for p in tmp_path.rglob("*.ndjson"))
    assert files
    mode = "spool" if fmt == "spool" else "segment"
    total_lines = total_fallback = 0
    for path in files:
        data = path.read_bytes()
        # in chunks of whole lines, as the sources cut them
        start = 0
        while start < len(data):
            end = data.find(b"\n", start + 256 * 1024)
            end = len(data) if end < 0 else end + 1
            compiled, duckdb_only, fallback = both(data[start:end], mode, monkeypatch)
            assert_same(compiled, duckdb_only)
            total_lines += data.count(b"\n", start, end)
            total_fallback += fallback
            start = end
    # the compiled path really decoded the typical lines (malformed ones and a few odd ones fall back)
    assert total_fallback < 0.15 * total_lines


def test_columns_and_rows_past_what_the_chunk_size_reserves_decode_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decoder sizes its output from the chunk (a row per line, a share of the bytes per
    column) and grows past that: batch lines of 150 events each, every event given its batch's
    context, make more rows than lines and more context bytes than the chunk holds."""
    context = {"library": {"name": "analytics.js", "version": "4.1.0"}, "locale": "en-GB", "pad": "x" * 300}
    lines = []
    for b in range(10):
        events = [
            {
                "type": "track",
                "event": "e",
                "messageId": f"m{b}-{i}",
                "anonymousId": "a",
                "timestamp": "2026-11-26T11:00:00Z",
            }
            for i in range(150)
        ]
        lines.append(json.dumps({"batch": events, "context": context, "writeKey": "wk_demo"}).encode())
    assert max(len(line) for line in lines) < OPTS.max_event_bytes  # longer lines go to DuckDB
    data = b"\n".join(lines) + b"\n"
    compiled, duckdb_only, fallback = both(data, "segment", monkeypatch)
    assert fallback == 0  # every line through the compiled path
    assert compiled.num_rows == 1500 > 1024  # past the rows reserved (1,024 at least)
    assert sum(len(c) for c in compiled.column("context").to_pylist()) > len(data)
    assert_same(compiled, duckdb_only)


# --- hypothesis: odd lines --------------------------------------------------------------------

_ODD_TEXT = st.sampled_from(
    [
        "",
        "a/b",
        'quote " back \\ slash',
        "tab\tnew\nline\r",
        "\x00nul",
        "\x01\x1f\x7f",
        "\u2028\u2029",
        "é",
        "日本語",
        "😀 emoji",
        "\ufeffbom",
        "123",
        "1.5",
        "null",
        "true",
        "x" * 40_000,
    ]
)
_TEXT = st.one_of(st.text(max_size=12), _ODD_TEXT)
_NUMBER = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 1.0, 100.0, 1e15, 1e16, 1e21, 1e-7, 0.000001, -0.0, 19.99, 316.93, 2**53 + 1]),
)
_SCALAR = st.one_of(st.none(), st.booleans(), _NUMBER, _TEXT)
_KEYS = st.one_of(
    st.sampled_from(
        [
            "url",
            "path",
            "title",
            "referrer",
            "session_id",
            "page",
            "library",
            "name",
            "version",
            "ip",
            "userAgent",
            "sessionId",
            "_unmapped",
            "a",
            "x/y",
            "é",
            'k"q',
        ]
    ),
    st.text(max_size=4),
)
_JSON = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


def _iso(draw: st.DrawFn) -> str:
    moment = NOW + timedelta(
        seconds=draw(st.integers(-3 * 86_400, 2 * 86_400)), microseconds=draw(st.integers(0, 999_999))
    )
    offset_min = draw(st.sampled_from([0, 0, 60, -240, 330, -570, 840, 900]))
    local = moment + timedelta(minutes=offset_min)
    digits = draw(st.sampled_from([0, 1, 3, 6, 7, 9]))
    frac = f"{local.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    sep = draw(st.sampled_from(["T", "T", " ", "t"]))
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + (f".{frac}" if digits else "")
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    zone = draw(
        st.sampled_from(
            [
                "Z" if offset_min == 0 else f"{sign}{hh:02d}:{mm:02d}",
                f"{sign}{hh:02d}{mm:02d}",
                f"{sign}{hh:02d}",
                "",
                "z",
            ]
        )
    )
    return text + zone


@st.composite
def timestamps(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        return _iso(draw)
    if kind == 6:
        return int(NOW.timestamp() * 1000) + draw(st.integers(-(10**9), 10**9))
    if kind == 7:
        return draw(
            st.sampled_from(
                ["2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "yesterday", "", "1795157371036"]
            )
        )
    if kind == 8:
        return draw(st.floats(1.7e12, 1.8e12))
    return draw(_SCALAR)


@st.composite
def context_objects(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(_JSON)
    ctx: dict[str, Any] = {}
    if draw(st.booleans()):
        ctx["ip"] = draw(st.one_of(st.just("203.0.113.9"), _SCALAR))
    if draw(st.booleans()):
        ctx["userAgent"] = draw(st.one_of(st.just("Mozilla/5.0 (X11)"), _SCALAR))
    if draw(st.booleans()):
        ctx["sessionId"] = draw(st.one_of(st.integers(0, 2**62), _SCALAR))
    if draw(st.booleans()):
        ctx["library"] = draw(
            st.one_of(
                st.fixed_dictionaries({"name": _SCALAR, "version": _SCALAR}),
                st.just({"name": "analytics.js"}),
                _JSON,
            )
        )
    if draw(st.booleans()):
        ctx["page"] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {"url": _SCALAR, "path": _SCALAR},
                    optional={"title": _SCALAR, "referrer": _SCALAR, "search": _SCALAR},
                ),
                _JSON,
            )
        )
    ctx.update(draw(st.dictionaries(_KEYS, _JSON, max_size=2)))
    return ctx


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "type": st.one_of(st.sampled_from(CALL_TYPES), _SCALAR),
        "messageId": st.one_of(st.uuids().map(str), st.integers(-5, 10**20), _SCALAR),
        "userId": st.one_of(st.just("user_1"), st.integers(-(10**20), 10**20), _SCALAR, _JSON),
        "anonymousId": st.one_of(st.uuids().map(str), _SCALAR),
        "event": st.one_of(st.just("Order Completed"), _JSON),
        "name": st.one_of(st.just("Home"), _JSON),
        "category": _JSON,
        "groupId": st.one_of(st.just("g1"), _SCALAR),
        "previousId": st.one_of(st.just("p1"), _SCALAR),
        "timestamp": timestamps(),
        "originalTimestamp": timestamps(),
        "sentAt": timestamps(),
        "receivedAt": timestamps(),
        "writeKey": st.one_of(st.sampled_from(["wk_demo", "wk_other", "wk_unknown"]), _SCALAR),
        "properties": st.one_of(
            st.dictionaries(
                st.sampled_from(
                    ["url", "path", "title", "referrer", "session_id", "revenue", "price", "products"]
                ),
                _JSON,
                max_size=5,
            ),
            _JSON,
        ),
        "traits": _JSON,
        "context": context_objects(),
        "integrations": st.one_of(st.just({}), st.just({"All": True}), _JSON),
        "_metadata": _JSON,
    }
    # the usual fields most of the time, any of them sometimes
    usual = {"type", "messageId", "anonymousId", "timestamp", "sentAt", "context"}
    ev: dict[str, Any] = {}
    for key, strategy in fields.items():
        if draw(st.integers(0, 9)) < (8 if key in usual else 3):
            ev[key] = draw(strategy)
    if draw(st.integers(0, 19)) == 0:
        ev[draw(st.text(min_size=1, max_size=6))] = draw(_JSON)
    return dict(draw(st.permutations(list(ev.items()))))


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 3)) > 0:
        return draw(events())
    line: dict[str, Any] = {"batch": draw(st.lists(events(), max_size=4))}
    for key, strategy in (
        ("sentAt", timestamps()),
        ("context", context_objects()),
        ("writeKey", st.sampled_from(["wk_demo", "wk_other"])),
        ("receivedAt", timestamps()),
    ):
        if draw(st.booleans()):
            line[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        line["extra"] = draw(_JSON)
    return line


@st.composite
def texts(draw: st.DrawFn) -> bytes:
    """One line's JSON text, written in odd ways: spaced, \\u escapes, escaped slashes,
    duplicate keys, nesting deeper than anyone sends, or not JSON at all."""
    kind = draw(st.integers(0, 39))
    if kind == 0:
        return draw(
            st.sampled_from(
                [b"{not json", b"[1,2]", b'"x"', b"{}", b'{"type":"track"} {"type":"page"}', b"null"]
            )
        )
    if kind == 1:
        deep: Any = {"type": "track", "event": "E", "userId": "u", "messageId": "m"}
        nest: Any = 1
        for _ in range(draw(st.integers(60, 70))):
            nest = [nest]
        deep["properties"] = {"deep": nest}
        return json.dumps(deep).encode()
    obj = draw(payloads())
    text = json.dumps(
        obj,
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (",", ":")])),
    )
    if draw(st.integers(0, 4)) == 0:
        text = text.replace("/", "\\/")  # "/" only ever occurs inside strings
    if draw(st.integers(0, 14)) == 0 and text.startswith('{"'):
        text = '{"type": "page", ' + text[1:] if draw(st.booleans()) else text[:-1] + ', "messageId": "dup"}'
    return text.encode("utf-8", "surrogatepass")


@st.composite
def chunks(draw: st.DrawFn) -> tuple[bytes, str]:
    mode = draw(st.sampled_from(["segment", "spool"]))
    lines = []
    for body in draw(st.lists(texts(), min_size=1, max_size=6)):
        if mode == "spool":
            if draw(st.integers(0, 14)) == 0:
                lines.append(b'{"v":1,"rt":"1795157371036","app":"demo-shop","p":' + body + b"}")
            else:
                ua = draw(st.sampled_from(["", "curl/8", "Mozilla/5.0 \u00e9"]))
                lines.append(
                    encode_line(
                        body,
                        app_id=draw(st.sampled_from(["demo-shop", "", "é"])),
                        received_ms=NOW_US // 1000 + draw(st.integers(-(10**7), 10**7)),
                        ip=draw(st.sampled_from(["", "198.51.100.4"])),
                        user_agent=ua,
                    ).rstrip(b"\n")
                )
        else:
            lines.append(body)
    return b"\n".join(lines) + b"\n", mode


@settings(
    max_examples=60,
    deadline=None,
    # DuckDB runs twice per example: shrinking a failure would take many minutes
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(chunk=chunks())
def test_odd_lines_decode_the_same(chunk: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    data, mode = chunk
    compiled, duckdb_only, _ = both(data, mode, monkeypatch)
    assert_same(compiled, duckdb_only)


def test_escapes_unicode_and_numbers_are_written_as_duckdb_writes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cases picked by hand, each checked to be decoded by the C module, not left to DuckDB."""
    lines = [
        rb'{"type":"track","event":"a\/b \u00e9\ud83d\ude00","userId":"u\"1","messageId":"m1",'
        rb'"properties":{"s":"\b\f\n\r\t\u0001\u001f\u007f\\ \u2028","url":"https:\/\/x.example\/"},'
        rb'"context":{"page":{"url":"u","title":"T"},"sessionId":1795158360471,"library":{"name":"n","version":"1"}}}',
        b'{ "type" : "page" , "anonymousId" : "a" , "messageId" : 42 , "properties" : { "a" : 1.0 , '
        b'"b" : 19.99 , "c" : -0.0 , "d" : [1, null, {"e": null}], "f": 0.000001 } }',
        b'{"type":"identify","userId":12345,"messageId":"m3","traits":{"email":"x@example.com","n":null},'
        b'"integrations":{"All":true,"X":null,"Y":{"z":null}},"_metadata":{"bundled":["Segment.io"]},'
        b'"timestamp":"2026-11-26T07:00:00.123456-04:00","sentAt":1795690805000}',
        b'{"batch":[{"type":"track","event":"E","userId":"u","messageId":"b1","context":{"library":{"version":"2"},'
        b'"ip":"1.2.3.4","page":{"url":"p","path":null}}}],"context":{"library":{"name":"lib","version":"1"},'
        b'"page":{"path":"/","title":"T"},"locale":"en"},"writeKey":"wk_other","sentAt":"2026-11-26T11:00:00Z"}',
    ]
    compiled, duckdb_only, fallback = both(b"\n".join(lines) + b"\n", "segment", monkeypatch)
    assert fallback == 0
    assert_same(compiled, duckdb_only)
    assert compiled.column("error_type").null_count == compiled.num_rows == 4


_BROKEN = [
    b'{"type":"track","event":"E","userId":"u","messageId":"m","context":{"a" 1}}',
    b'{"batch":[{"type":"track","event":"E","userId":"u","messageId":"m","context":{"a":1}}],"context":{"b" 2}}',
    b'{"batch":[{"type":"track","event":"E","userId":"u","messageId":"m","context":{"a":1,}}],"context":{"b":2}}',
    b'{"batch":[{"type":"track","event":"E","userId":"u","messageId":"m"},],"context":{"b":2}}',
    b'{"type":"track","event":"E","userId":"u","messageId":"m","properties":{"a":[1,2}}',
    b'{"type":"track","event":"E","userId":"u","messageId":"m","properties":{"a":"\\x"}}',
    b'{"type":"track","event":"E","userId":"u","messageId":"m","properties":{"a":"\\ud800"}}',
    b'{"type":"track","event":"E","userId":"u","messageId":"m","properties":{"a":"tab\there"}}',
    b'{"type":"track","event":"E","userId":"u","messageId":"m","traits":{"a":01}}',
    b'{"type":"track","event":"E","userId":"u","messageId":"m","integrations":{"a":tru}}',
    b'{"type":"track","event":"E","userId":"u","messageId":"m"}}',
    b'{"type":"track","event":"E","userId":"u","messageId":"m"',
    b'{"v":1,"rt":1795780800000,"app":"demo-shop","p":{"type":"track","event":"E","userId":"u","messageId":"m",}}',
    # not broken, but the two DuckDB paths disagree on it (read_json casts the string to BIGINT)
    b'{"v":1,"rt":"1795780800000","app":"demo-shop","p":{"type":"track","event":"E","userId":"u","messageId":"m"}}',
]


@pytest.mark.parametrize("line", _BROKEN)
def test_broken_json_anywhere_is_left_to_duckdb(line: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    mode = "spool" if line.startswith(b'{"v"') else "segment"
    compiled, duckdb_only, fallback = both(line + b"\n", mode, monkeypatch)
    assert fallback == 1  # the C module never decides on broken JSON (DuckDB takes trailing commas)
    assert_same(compiled, duckdb_only)


# --- without the module ------------------------------------------------------------------------


def test_without_the_module_decoding_takes_the_duckdb_paths_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = b'{"type":"track","event":"E","userId":"u","messageId":"m1"}\n{"type":"page","anonymousId":"a","messageId":"m2"}\n'
    lines, _ = lines_of(Chunk("s1", 0, data, "segment"))
    with_module = decode(lines, "segment", OPTS, NOW_US)

    def unreachable(*args: Any) -> Any:
        raise AssertionError("the compiled path ran")

    monkeypatch.setattr(decode_module, "_cdecode", None)
    monkeypatch.setattr(decode_module, "_decode_compiled", unreachable)
    monkeypatch.setattr(decode_module, "_CDECODE_MISSING", "No module named 'clicklake.events._cdecode'")
    with caplog.at_level(logging.WARNING, logger="clicklake.events"):
        first = decode(lines, "segment", OPTS, NOW_US)
        second = decode(lines, "segment", OPTS, NOW_US)
    assert first.equals(with_module) and second.equals(with_module)
    notes = [r for r in caplog.records if "decoder_compiled_path_missing" in r.getMessage()]
    assert len(notes) == 1


def test_the_module_is_built() -> None:
    """``make install`` compiles it; without a compiler decoding still works, only slower."""
    assert decode_module._cdecode is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=200).map(lambda b: b.replace(b"\x00", b"\n")))
def test_lines_are_split_the_same_with_and_without_the_module(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = Chunk("s1", 7, data, "segment")
    lines, bad = lines_of(chunk)
    with monkeypatch.context() as m:
        m.setattr(decode_module, "_cdecode", None)
        lines_np, bad_np = lines_of(chunk)
    assert lines.equals(lines_np)
    assert (bad is None and bad_np is None) or (bad is not None and bad_np is not None and bad.equals(bad_np))
