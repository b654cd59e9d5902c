"""The privacy steps: ``ip_anonymization`` and ``pii``, with golden values worked out by hand."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from clicklake.config import Settings, load_settings
from clicklake.enrich import ip_anonymization, pii
from clicklake.events.schema import EVENTS_ARROW
from clicklake.exceptions import ConfigError

SALT = "pepper-for-tests"


def _events(**columns: list[Any]) -> pa.RecordBatch:
    n = len(next(iter(columns.values())))
    data: dict[str, list[Any]] = {name: [None] * n for name in EVENTS_ARROW.names}
    data["event_id"] = [f"e{i}" for i in range(n)]
    data.update(columns)
    return pa.RecordBatch.from_pydict(data, schema=EVENTS_ARROW)


def _settings(tmp_path: Path, environ: dict[str, str] | None = None, **enrich: Any) -> Settings:
    return load_settings(environ=environ or {}, storage={"data_dir": str(tmp_path)}, enrich=enrich)


def _h(value: str, salt: str = SALT) -> str:
    """The expected hash, computed independently of the step."""
    return hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()


# --- ip_anonymization ------------------------------------------------------------------------

IPS = [
    "203.0.113.77",
    "198.51.100.255",
    "2001:db8:85a3::8a2e:370:7334",
    "2001:0DB8:85A3:08D3:1319:8A2E:0370:7344",
    "::ffff:203.0.113.77",
    "::1",
    "not-an-ip",
    "300.1.2.3",
    "",
    None,
]


@pytest.mark.parametrize(
    ("ipv4_octets", "ipv6_segments", "expected"),
    [
        (
            3,
            3,
            [
                "203.0.113.0",
                "198.51.100.0",
                "2001:db8:85a3::",
                "2001:db8:85a3::",
                "::ffff:203.0.113.0",
                "::",
                None,
                None,
                None,
                None,
            ],
        ),
        (
            2,
            4,
            [
                "203.0.0.0",
                "198.51.0.0",
                "2001:db8:85a3::",
                "2001:db8:85a3:8d3::",
                "::ffff:203.0.0.0",
                "::",
                None,
                None,
                None,
                None,
            ],
        ),
        (
            0,
            1,
            ["0.0.0.0", "0.0.0.0", "2001::", "2001::", "::ffff:0.0.0.0", "::", None, None, None, None],
        ),
        # Nothing truncated: valid addresses exactly as sent; invalid ones still become null.
        (4, 8, [*IPS[:6], None, None, None, None]),
    ],
)
def test_ip_anonymization(
    tmp_path: Path, ipv4_octets: int, ipv6_segments: int, expected: list[str | None]
) -> None:
    settings = _settings(
        tmp_path, ip_anonymization={"ipv4_octets": ipv4_octets, "ipv6_segments": ipv6_segments}
    )
    step = ip_anonymization.build(settings)
    out = step(_events(user_ipaddress=IPS))

    assert step.name == "ip_anonymization"
    assert step.columns == ()
    assert out.schema == EVENTS_ARROW
    assert out.column("user_ipaddress").to_pylist() == expected
    assert out.column("event_id").to_pylist() == [f"e{i}" for i in range(len(IPS))]


def test_ip_anonymization_defaults_and_cache(tmp_path: Path) -> None:
    step = ip_anonymization.build(_settings(tmp_path))  # 3 octets, 3 segments
    batch = _events(user_ipaddress=["192.0.2.1", "192.0.2.200", "192.0.2.1"])
    for _ in range(2):  # the second batch is answered from the cache
        assert step(batch).column("user_ipaddress").to_pylist() == ["192.0.2.0"] * 3


# --- pii -------------------------------------------------------------------------------------


def test_pii_hashes_columns_and_recomputes_user_key(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        environ={"CLICKLAKE_ENRICH__PII__SALT": SALT},
        pii={"enabled": True, "fields": ["user_id", "anonymous_id", "user_ipaddress"]},
    )
    step = pii.build(settings)
    batch = _events(
        user_id=["alice", None, "alice", "42"],
        anonymous_id=["anon-1", "anon-2", None, None],
        user_key=["alice", "anon-2", "alice", "42"],
        user_ipaddress=["203.0.113.0", "203.0.113.0", None, "2001:db8::"],
        page_url=["https://shop.example/a", None, None, None],
    )
    out = step(batch)

    assert step.name == "pii"
    assert step.columns == ()
    assert out.schema == EVENTS_ARROW
    assert out.column("user_id").to_pylist() == [_h("alice"), None, _h("alice"), _h("42")]
    assert out.column("anonymous_id").to_pylist() == [_h("anon-1"), _h("anon-2"), None, None]
    # user_key = coalesce(user_id, anonymous_id) of the hashed values.
    assert out.column("user_key").to_pylist() == [_h("alice"), _h("anon-2"), _h("alice"), _h("42")]
    assert out.column("user_ipaddress").to_pylist() == [
        _h("203.0.113.0"),
        _h("203.0.113.0"),
        None,
        _h("2001:db8::"),
    ]
    assert out.column("page_url").to_pylist() == batch.column("page_url").to_pylist()
    assert _h("alice") == "{:064x}".format(int(_h("alice"), 16))  # 64 lowercase hex digits


def test_pii_only_anonymous_id_hashed(tmp_path: Path) -> None:
    step = pii.build(_settings(tmp_path, pii={"enabled": True, "salt": SALT, "fields": ["anonymous_id"]}))
    out = step(_events(user_id=["bob", None], anonymous_id=["a1", "a2"], user_key=["bob", "a2"]))
    assert out.column("user_id").to_pylist() == ["bob", None]
    assert out.column("user_key").to_pylist() == ["bob", _h("a2")]


def test_pii_json_paths(tmp_path: Path) -> None:
    fields = ["traits.email", "traits.address.street", "context.traits.phone", "properties.email"]
    step = pii.build(_settings(tmp_path, pii={"enabled": True, "salt": SALT, "fields": fields}))
    traits = [
        '{"email":"ann@example.com","name":"Ann","address":{"street":"1 Main St","city":"Springfield"}}',
        '{"name":"No Email"}',  # missing paths: untouched
        '{"email":null,"address":"flat string"}',  # null value, and a path through a non-object
        None,
        "not json {",
    ]
    context = [
        '{"traits":{"phone":5551234},"ip":"203.0.113.0"}',  # a number is hashed on its JSON text
        '{"traits":{}}',
        '{"library":{"name":"analytics.js"}}',
        '{"traits":{"phone":"+1 555 0100"}}',
        None,
    ]
    properties = ['{"email":"ann@example.com"}', "{}", None, '{"email":"zoë@example.com"}', "[1, 2]"]
    out = step(_events(traits=traits, context=context, properties=properties)).to_pydict()

    t0 = json.loads(out["traits"][0])
    assert t0 == {
        "email": _h("ann@example.com"),
        "name": "Ann",
        "address": {"street": _h("1 Main St"), "city": "Springfield"},
    }
    assert out["traits"][1:] == traits[1:]
    assert json.loads(out["context"][0]) == {"traits": {"phone": _h("5551234")}, "ip": "203.0.113.0"}
    assert out["context"][1:3] == context[1:3]
    assert json.loads(out["context"][3]) == {"traits": {"phone": _h("+1 555 0100")}}
    assert out["context"][4] is None
    assert json.loads(out["properties"][0]) == {"email": _h("ann@example.com")}
    assert json.loads(out["properties"][3]) == {"email": _h("zoë@example.com")}
    assert [out["properties"][i] for i in (1, 2, 4)] == [properties[i] for i in (1, 2, 4)]
    assert out["event_id"] == [f"e{i}" for i in range(5)]


def test_pii_enabled_without_salt_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CLICKLAKE_ENRICH__PII__SALT"):
        pii.build(_settings(tmp_path, pii={"enabled": True, "fields": ["user_id"]}))


def test_pii_disabled_is_a_no_op(tmp_path: Path) -> None:
    batch = _events(user_id=["carol"])
    assert pii.build(_settings(tmp_path))(batch).equals(batch)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("page_url.host", "not a JSON column"),
        ("traits..email", "not a column name"),
        ('traits."email"', "not a column name"),
        ("source_offset", "not a string column"),
    ],
)
def test_pii_bad_fields(tmp_path: Path, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pii.build(_settings(tmp_path, pii={"enabled": True, "salt": SALT, "fields": [field]}))


def test_pii_never_shows_the_salt(tmp_path: Path) -> None:
    step = pii.build(_settings(tmp_path, pii={"enabled": True, "salt": SALT, "fields": ["user_id"]}))
    assert SALT not in repr(step)
    assert SALT not in repr(step.fn)


def test_anonymization_also_scrubs_the_address_inside_context() -> None:
    import orjson
    import pyarrow as pa

    from clicklake.config import load_settings
    from clicklake.enrich.ip_anonymization import build as build_anon
    from clicklake.events.schema import EVENTS_ARROW

    n = 3
    cols = {f.name: pa.nulls(n, f.type) for f in EVENTS_ARROW}
    cols["user_ipaddress"] = pa.array(["203.0.113.77", "198.51.100.9", None], pa.large_string())
    cols["context"] = pa.array(
        ['{"ip":"203.0.113.77","locale":"en"}', '{"locale":"fr"}', '{"ip":"10.0.0.1"}'], pa.large_string()
    )
    batch = pa.RecordBatch.from_pydict(cols, schema=EVENTS_ARROW)
    out = build_anon(load_settings(environ={})).fn(batch)
    assert out.column("user_ipaddress").to_pylist() == ["203.0.113.0", "198.51.100.0", None]
    ctx = [orjson.loads(c) for c in out.column("context").to_pylist()]
    # the full address is gone from the JSON; other fields and rows are untouched
    assert ctx == [{"ip": "203.0.113.0", "locale": "en"}, {"locale": "fr"}, {"ip": "10.0.0.1"}]


def test_pii_repeated_documents_and_a_small_cache_give_the_same_hashes() -> None:
    """Values and documents are hashed once per distinct one, the hashes kept in a bounded cache
    across batches: a cache far smaller than the values, forgetting all the time, answers the same."""
    small = pii.PiiHasher(SALT.encode(), pii.parse_fields(["user_id", "traits.email"]), cache_size=2)
    users = [f"u{i % 5}" if i % 4 else None for i in range(40)]
    traits = [None if i % 3 else f'{{"email":"{u}@example.com","plan":"pro"}}' for i, u in enumerate(users)]
    for start in range(0, 40, 10):
        batch = _events(user_id=users[start : start + 10], traits=traits[start : start + 10])
        out = small(batch).to_pydict()
        assert out["user_id"] == [_h(u) if u else None for u in users[start : start + 10]]
        for doc, got in zip(traits[start : start + 10], out["traits"], strict=True):
            if doc is None:
                assert got is None
            else:
                expected = json.loads(doc)
                expected["email"] = _h(expected["email"])
                assert json.loads(got) == expected
        assert len(small._cache) <= 2
