"""The synthetic clickstream generator: determinism, exact manifest, defects, formats.

The manifest is checked against an independent reading of the written lines: a small reference
implementation of the decode and validation rules below classifies every row, and each
malformed event must trip exactly one rule (the one it is labelled with).
"""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from clicklake.sources.generator import (
    DECODE_ERRORS,
    MAX_EVENT_BYTES,
    MAX_LINE_BYTES,
    VALIDATE_ERRORS,
    Manifest,
    generate,
)

END = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)
CALL_TYPES = ("track", "page", "screen", "identify", "group", "alias")
MS_DAY = 86_400_000


# ---------------------------------------------------------------------------------------------
# Reference reading of the output


def _parse_ts(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return int(dt.timestamp() * 1000)


def _validate(ev: dict[str, Any], rt: int, batch_sent_at: Any) -> list[str]:
    """Every validation rule ``ev`` trips (a well-formed event trips none)."""
    hits: list[str] = []
    typ = ev.get("type")
    uid, aid = ev.get("userId"), ev.get("anonymousId")
    if (
        (uid is None and aid is None)
        or (typ == "track" and "event" not in ev)
        or (typ == "group" and "groupId" not in ev)
        or (typ == "alias" and ("previousId" not in ev or uid is None))
    ):
        hits.append("missing_field")
    if typ not in CALL_TYPES:
        hits.append("invalid_type")
    if (
        any(k in ev and not isinstance(ev[k], dict) for k in ("properties", "traits", "context"))
        or (uid is not None and (isinstance(uid, bool) or not isinstance(uid, str | int)))
        or (aid is not None and not isinstance(aid, str))
        or ("event" in ev and not isinstance(ev["event"], str))
    ):
        hits.append("wrong_type")
    mid = ev.get("messageId")
    if not isinstance(mid, str) or not mid:
        hits.append("invalid_message_id")
    ts = _parse_ts(ev.get("timestamp"))
    if ts is None:
        hits.append("invalid_timestamp")
    else:
        sent = _parse_ts(ev.get("sentAt", batch_sent_at))
        derived = rt - (sent - ts) if sent is not None else ts
        if not rt - 365 * MS_DAY <= derived <= rt + MS_DAY:
            hits.append("timestamp_out_of_range")
    return hits


@dataclass
class Reading:
    lines: int = 0
    rows: int = 0
    valid: list[dict[str, Any]] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    receive_ms: list[int] = field(default_factory=list)
    line_counts: Counter[bytes] = field(default_factory=Counter)


def _read_payload(r: Reading, raw: bytes, rt: int | None, spool: bool) -> None:
    if len(raw) > MAX_LINE_BYTES:
        r.rows += 1
        r.failed["batch_too_large"] += 1
        return
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        r.rows += 1
        r.failed["invalid_json"] += 1
        return
    if not isinstance(obj, dict) or ("batch" in obj and not isinstance(obj["batch"], list)):
        r.rows += 1
        r.failed["invalid_envelope"] += 1
        return
    if not spool:
        assert obj["writeKey"] == "wk_demo"
    events = obj.get("batch", [obj])
    for ev in events:
        r.rows += 1
        if len(orjson.dumps(ev)) > MAX_EVENT_BYTES:
            r.failed["event_too_large"] += 1
            continue
        ev_rt = rt if rt is not None else _parse_ts(ev["receivedAt"])
        assert ev_rt is not None
        r.receive_ms.append(ev_rt)
        hits = _validate(ev, ev_rt, obj.get("sentAt"))
        assert len(hits) <= 1, (hits, ev)
        if hits:
            r.failed[hits[0]] += 1
        else:
            r.valid.append(ev)


def read_ndjson(paths: list[Path]) -> Reading:
    r = Reading()
    for path in paths:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for line in data.splitlines():
            r.lines += 1
            r.line_counts[line] += 1
            _read_payload(r, line, None, spool=False)
    return r


def read_spool(paths: list[Path], app_id: str) -> tuple[Reading, int]:
    r = Reading()
    garbage = 0
    for path in paths:
        for line in path.read_bytes().splitlines():
            r.lines += 1
            try:
                env = orjson.loads(line)
            except orjson.JSONDecodeError:
                garbage += 1  # corruption written straight into the spool
                r.rows += 1
                r.failed["invalid_json"] += 1
                continue
            assert set(env) >= {"v", "rt", "app", "ip", "p"}
            assert env["v"] == 1 and env["app"] == app_id and isinstance(env["rt"], int)
            payload = line[line.index(b',"p":') + 5 : -1]
            _read_payload(r, payload, env["rt"], spool=True)
    return r, garbage


def check_manifest(m: Manifest, r: Reading) -> None:
    assert m.lines == r.lines
    assert m.events_total == r.rows
    assert m.expected_events_rows + m.expected_failed_rows == m.events_total
    assert m.expected_failed_rows == sum(m.malformed.values())
    assert {k: v for k, v in m.malformed.items() if v} == dict(r.failed)
    assert m.expected_events_rows == len(r.valid)
    ids = Counter(ev["messageId"] for ev in r.valid)
    assert m.valid_unique == len(ids)
    assert m.retried == len(r.valid) - len(ids)
    assert {k: v for k, v in m.by_type.items() if v} == dict(Counter(ev["type"] for ev in r.valid))
    assert sum(m.by_type.values()) == m.expected_events_rows
    identified = {str(ev["userId"]) for ev in r.valid if ev["type"] == "identify"}
    assert m.identified_users == len(identified)


# ---------------------------------------------------------------------------------------------
# Tests


def _ndjson_paths(m: Manifest) -> list[Path]:
    return [Path(p) for p in m.files]


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", events=3_000, seed=7, end=END, files=2)
    b = generate(tmp_path / "b", events=3_000, seed=7, end=END, files=2)
    c = generate(tmp_path / "c", events=3_000, seed=8, end=END, files=2)
    assert [Path(p).name for p in a.files] == ["events-0001.ndjson", "events-0002.ndjson"]
    for pa, pb in zip(a.files, b.files, strict=True):
        assert Path(pa).read_bytes() == Path(pb).read_bytes()
    assert Path(a.files[0]).read_bytes() != Path(c.files[0]).read_bytes()
    assert {**a.to_dict(), "files": []} == {**b.to_dict(), "files": []}


def test_manifest_matches_an_independent_reading(tmp_path: Path) -> None:
    m = generate(tmp_path, events=6_000, end=END, files=3)
    r = read_ndjson(_ndjson_paths(m))
    check_manifest(m, r)
    assert m.events_total == 6_000
    assert m.retried > 0 and m.late > 0 and m.bots > 0 and m.identified_users > 0
    # Retries are exact byte copies of an earlier line.
    assert sum(n - 1 for n in r.line_counts.values() if n > 1) > 0
    # Receive times stay within the window; the manifest is valid JSON.
    start_ms, end_ms = int((END - timedelta(days=7)).timestamp() * 1000), int(END.timestamp() * 1000)
    assert start_ms <= min(r.receive_ms) and max(r.receive_ms) <= end_ms
    assert orjson.loads(m.to_json())["events_total"] == 6_000
    m.write(tmp_path / "out" / "manifest.json")
    assert orjson.loads((tmp_path / "out" / "manifest.json").read_bytes()) == m.to_dict()


def test_every_defect_is_present_and_labelled(tmp_path: Path) -> None:
    m = generate(tmp_path, events=4_000, end=END, malformed_share=0.3, seed=3)
    r = read_ndjson(_ndjson_paths(m))
    check_manifest(m, r)
    for kind in (*DECODE_ERRORS, *VALIDATE_ERRORS):
        assert m.malformed[kind] > 0, kind


def test_no_defects_when_shares_are_zero(tmp_path: Path) -> None:
    m = generate(tmp_path, events=2_000, end=END, malformed_share=0, retry_share=0, late_share=0)
    r = read_ndjson(_ndjson_paths(m))
    check_manifest(m, r)
    assert m.expected_failed_rows == 0 and m.retried == 0 and m.late == 0
    assert m.valid_unique == m.expected_events_rows == 2_000


def test_rich_traffic(tmp_path: Path) -> None:
    m = generate(tmp_path, events=8_000, end=END, seed=11)
    r = read_ndjson(_ndjson_paths(m))
    for typ in CALL_TYPES:
        assert m.by_type[typ] > 0, typ
    names = Counter(ev.get("event") for ev in r.valid if ev["type"] == "track")
    for name in (
        "Page Ping",
        "Link Clicked",
        "Product Viewed",
        "Product Added",
        "Checkout Started",
        "Order Completed",
        "Products Searched",
    ):
        assert names[name] > 0, name
    assert (
        names["Product Viewed"]
        > names["Product Added"]
        > names["Checkout Started"]
        >= names["Order Completed"]
    )
    pings = [ev for ev in r.valid if ev.get("event") == "Page Ping"]
    assert all(ev["properties"] == {"heartbeat": 10} for ev in pings)
    orders = [ev["properties"] for ev in r.valid if ev.get("event") == "Order Completed"]
    assert all({"order_id", "revenue", "currency", "products"} <= set(o) for o in orders)
    pages = [ev for ev in r.valid if ev["type"] == "page"]
    assert all(ev["properties"]["url"] == ev["context"]["page"]["url"] for ev in pages)
    urls = " ".join(ev["properties"]["url"] for ev in pages)
    for param in ("utm_source=", "utm_medium=", "utm_campaign=", "gclid=", "fbclid="):
        assert param in urls, param
    assert any("campaign" in ev["context"] for ev in pages)
    assert any(isinstance(ev["context"].get("sessionId"), int) for ev in r.valid)
    assert any(isinstance(ev.get("userId"), int) for ev in r.valid)
    assert any(isinstance(ev["timestamp"], int) for ev in r.valid)
    assert any(isinstance(ev["timestamp"], str) and ev["timestamp"][-6] in "+-" for ev in r.valid)
    assert any(":" in ev["context"]["ip"] for ev in r.valid)  # some IPv6
    uas = " ".join({ev["context"]["userAgent"] for ev in r.valid})
    for marker in ("Googlebot", "iPhone", "Android", "Windows NT", "Macintosh"):
        assert marker in uas, marker
    # Receive order is not timestamp order.
    ts = [
        ev["timestamp"]
        for ev in r.valid
        if isinstance(ev["timestamp"], str) and ev["timestamp"].endswith("Z")
    ]
    assert ts != sorted(ts)


def test_gzip_round_trip(tmp_path: Path) -> None:
    plain = generate(tmp_path / "plain", events=2_000, end=END)
    packed = generate(tmp_path / "gz", events=2_000, end=END, gzip=True)
    assert packed.files[0].endswith("events-0001.ndjson.gz")
    assert gzip.decompress(Path(packed.files[0]).read_bytes()) == Path(plain.files[0]).read_bytes()
    check_manifest(packed, read_ndjson(_ndjson_paths(packed)))


def test_progress_is_reported(tmp_path: Path) -> None:
    seen: list[int] = []
    generate(tmp_path, events=12_000, end=END, progress=seen.append)
    assert seen == sorted(seen) and len(seen) >= 3 and seen[-1] == 12_000


def test_spool_mode(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    m = generate(
        spool,
        events=5_000,
        end=END,
        fmt="spool",
        app_id="shop-x",
        segment_max_bytes=400_000,
        malformed_share=0.1,
    )
    assert len(m.files) > 1 and all(Path(p).parent == spool for p in m.files)
    r, garbage = read_spool([Path(p) for p in m.files], app_id="shop-x")
    check_manifest(m, r)
    assert garbage == m.malformed["invalid_json"] > 0
    again = generate(
        tmp_path / "again",
        events=5_000,
        end=END,
        fmt="spool",
        app_id="shop-x",
        segment_max_bytes=400_000,
        malformed_share=0.1,
    )
    assert [Path(p).read_bytes() for p in m.files] == [Path(p).read_bytes() for p in again.files]


@pytest.mark.parametrize("kwargs", [{"events": -1}, {"days": 0}, {"files": 0}, {"malformed_share": 1.5}])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, **{"events": 10, **kwargs})
