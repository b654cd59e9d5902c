"""The compiled kernels give what their DuckDB definitions give, byte for byte: the persisted
``event_fingerprint`` and the scrubbed ``context`` must not depend on whether they are built."""

from __future__ import annotations

import json
import random
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from clicklake.enrich import dedup, ip_anonymization, kernels
from clicklake.enrich.base import encode, forget_encodings
from clicklake.events.schema import EVENTS_ARROW


def test_the_kernels_are_built() -> None:
    assert kernels.available(), "run make install"


ALPHABET = 'abcé€😀xyz{}":,\\0123456789 '


def _strings(rng: random.Random, n: int, nulls: bool = True) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        if nulls and rng.random() < 0.1:
            out.append(None)
        else:
            out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 70))))
    return out


def _duckdb_hash(table: pa.Table) -> list[int]:
    con = duckdb.connect()
    con.register("t", table)
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    return [r[0] for r in con.sql(f"SELECT hash({cols}) FROM t").fetchall()]


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_hash_is_duckdbs_for_strings_timestamps_and_nulls(string_type: pa.DataType) -> None:
    rng = random.Random(7)
    n = 500
    ts = [None if rng.random() < 0.1 else rng.randint(-(2**50), 2**50) for _ in range(n)]
    table = pa.table(
        {
            "a": pa.array(_strings(rng, n), string_type),
            "b": pa.array(_strings(rng, n, nulls=False), string_type),
            "t": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "c": pa.array([None] * n, string_type),
            "d": pa.array(_strings(rng, n), string_type),
        }
    )
    expected = _duckdb_hash(table)
    got = kernels.duckdb_hash(list(table.columns))
    assert got is not None
    assert got.tolist() == expected
    # a slice reads its own rows (array offsets into the buffers)
    part = table.slice(13, 101)
    got_part = kernels.duckdb_hash([c.combine_chunks() for c in part.columns])
    assert got_part is not None
    assert got_part.tolist() == expected[13:114]


def test_hash_declines_types_it_does_not_take() -> None:
    assert kernels.duckdb_hash([pa.array([1.5, 2.5])]) is None
    assert kernels.duckdb_hash([pa.array([1], pa.int64()).cast(pa.timestamp("ns"))]) is None


def _events(n: int, rng: random.Random) -> pa.RecordBatch:
    cols: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in EVENTS_ARROW}
    for name in dedup._FINGERPRINT_COLUMNS:
        field = EVENTS_ARROW.field(name)
        if pa.types.is_timestamp(field.type):
            cols[name] = pa.array([rng.randint(0, 2**52) for _ in range(n)], pa.int64()).cast(field.type)
        else:
            cols[name] = pa.array(_strings(rng, n), field.type)
    return pa.RecordBatch.from_pydict(cols, schema=EVENTS_ARROW)


def test_event_fingerprint_is_the_same_with_and_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _events(300, random.Random(3))
    con = duckdb.connect()
    key, fp = dedup.keys(batch, con)
    monkeypatch.setattr(kernels, "_ckernels", None)
    key_ref, fp_ref = dedup.keys(batch, con)
    assert fp.equals(fp_ref)
    assert key.equals(key_ref)


# --- replace_quoted / context scrubbing ------------------------------------------------------


def _reference(context: pa.Array, old: pa.Array, new: pa.Array) -> pa.Array:
    """The DuckDB path of the ip_anonymization step, given each row's old and new value."""
    forget_encodings()
    encoded = encode(old)
    distinct = encoded.dictionary
    anonymized = pa.compute.take(new, pa.compute.index_in(distinct, old))
    return ip_anonymization._scrub_context(context, encoded.indices, distinct, anonymized)


CASES = [
    # (context, old, new)
    ('{"ip":"203.0.113.77","page":{"url":"https://x/"}}', "203.0.113.77", "203.0.113.0"),
    ('{"ip":"2001:db8:85a3::8a2e:370:7334"}', "2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3::"),
    ('{"ip":"::ffff:203.0.113.77"}', "::ffff:203.0.113.77", "::ffff:203.0.113.0"),
    ('{"userAgent":"curl/8"}', "203.0.113.77", "203.0.113.0"),  # context without ip
    (None, "203.0.113.77", "203.0.113.0"),  # null context
    ('{"ip":"203.0.113.77"}', None, None),  # no address
    ('{"ip":"not-an-ip"}', "not-an-ip", None),  # not an address: null in the JSON
    ('{"ip":"198.51.100.9"}', "198.51.100.9", "198.51.100.9"),  # kept as sent
    # twice, once as another key's value, and escaped text around it
    (
        '{"ip":"198.51.100.7","x":"a\\"b","y":["198.51.100.7"],"z":"\\"198.51.100.7\\""}',
        "198.51.100.7",
        "198.51.100.0",
    ),
    ('{"x":"1.2.3.4"1.2.3.4"}', "1.2.3.4", "1.2.3.0"),  # overlapping matches: left to right
    ('{"ip":"","q":""}', "", None),  # an empty value is not an address either
    ('{"ip":"é😀"}', "é😀", None),
    ("", "1.2.3.4", "1.2.3.0"),
]


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_replace_quoted_is_the_duckdb_scrub(string_type: pa.DataType) -> None:
    context = pa.array([c for c, _, _ in CASES], string_type)
    old = pa.array([o for _, o, _ in CASES], pa.large_string())
    new = pa.array([a for _, _, a in CASES], pa.large_string())
    got = kernels.replace_quoted(context, old, new)
    assert got is not None
    assert got.type == string_type
    assert got.to_pylist() == _reference(context, old, new).to_pylist()
    assert got.to_pylist()[0] == '{"ip":"203.0.113.0","page":{"url":"https://x/"}}'
    assert got.to_pylist()[6] == '{"ip":null}'
    # slices
    for start, length in ((3, 7), (8, 5), (0, 1)):
        part = kernels.replace_quoted(
            context.slice(start, length), old.slice(start, length), new.slice(start, length)
        )
        assert part is not None
        assert part.to_pylist() == got.to_pylist()[start : start + length]


def test_replace_quoted_returns_the_input_when_nothing_changes() -> None:
    context = pa.array(['{"ip":"1.2.3.4"}', None], pa.large_string())
    same = pa.array(["1.2.3.4", "5.6.7.8"], pa.large_string())
    assert kernels.replace_quoted(context, same, same) is context


def test_replace_quoted_random_documents_match_duckdb() -> None:
    rng = random.Random(11)
    ips = ["10.0.0.1", "10.0.0.12", "2001:db8::1", "x", "", 'a"b', "\\", "é"]
    contexts, olds, news = [], [], []
    for _ in range(2000):
        ip = rng.choice([*ips, None])
        doc: dict[str, Any] = {"ip": ip} if rng.random() < 0.8 else {}
        doc["other"] = rng.choice([*ips, "zz"])
        doc["list"] = [rng.choice(ips) for _ in range(rng.randint(0, 3))]
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, separators=(",", ":"))
        contexts.append(None if rng.random() < 0.05 else text)
        olds.append(ip)
        news.append(None if ip is None or rng.random() < 0.3 else rng.choice(ips))
    context = pa.array(contexts, pa.large_string())
    old = pa.array(olds, pa.large_string())
    # the scrub maps each old value to one new value: keep the first seen
    first: dict[str | None, str | None] = {}
    for o, a in zip(olds, news, strict=True):
        first.setdefault(o, a)
    new = pa.array([first[o] for o in olds], pa.large_string())
    got = kernels.replace_quoted(context, old, new)
    assert got is not None
    assert got.to_pylist() == _reference(context, old, new).to_pylist()


def test_ip_anonymization_step_is_the_same_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    ips = ["203.0.113.77", "2001:db8:85a3::8a2e:370:7334", "::ffff:203.0.113.77", "not-an-ip", "", None]
    rows = [rng.choice(ips) for _ in range(400)]
    contexts = [
        None if i % 17 == 0 else json.dumps({"ip": ip, "n": i} if i % 5 else {"n": i}, separators=(",", ":"))
        for i, ip in enumerate(rows)
    ]
    n = len(rows)
    cols: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in EVENTS_ARROW}
    cols["user_ipaddress"] = pa.array(rows, pa.large_string())
    cols["context"] = pa.array(contexts, pa.large_string())
    batch = pa.RecordBatch.from_pydict(cols, schema=EVENTS_ARROW)
    step = ip_anonymization.IpAnonymizer(3, 3)
    forget_encodings()
    with_kernel = step(batch)
    monkeypatch.setattr(kernels, "_ckernels", None)
    forget_encodings()
    without = ip_anonymization.IpAnonymizer(3, 3)(batch)
    assert with_kernel.equals(without)
    assert np.any(np.array(with_kernel.column("context").to_pylist()) != np.array(contexts))


def test_contains_per_row() -> None:
    text = pa.array(['{"campaign":1}', None, "", 'x"campaign"', '"campaig"'], pa.large_string())
    got = kernels.contains(text, '"campaign"')
    assert got is not None
    assert got.tolist() == [True, False, False, True, False]
    part = kernels.contains(text.slice(3, 2), '"campaign"')
    assert part is not None
    assert part.tolist() == [True, False]


def test_empty_columns() -> None:
    empty = pa.array([], pa.large_string())
    got = kernels.duckdb_hash([empty])
    assert got is not None
    assert len(got) == 0
    assert kernels.replace_quoted(empty, empty, empty) is empty
    found = kernels.contains(empty, "x")
    assert found is not None
    assert len(found) == 0


def test_hex16_is_the_numpy_formatting(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.array([0, 1, 0xDEADBEEF, 2**63, 2**64 - 1, 0x0123456789ABCDEF], dtype=np.uint64)
    got = dedup._hex16(values)
    assert got.to_pylist() == [f"{int(v):016x}" for v in values]
    assert len(dedup._hex16(np.zeros(0, dtype=np.uint64))) == 0
    monkeypatch.setattr(kernels, "_ckernels", None)
    assert dedup._hex16(values).equals(got)


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_bucket_is_pyicebergs(string_type: pa.DataType) -> None:
    from pyiceberg.transforms import BucketTransform
    from pyiceberg.types import StringType

    rng = random.Random(11)
    # every tail length of murmur3's 4-byte blocks, multi-byte UTF-8, empty strings and nulls
    values = pa.array(["", "a", "ab", "abc", "abcd", "abcde", None, *_strings(rng, 2000)], string_type)
    for buckets in (1, 7, 16, 1000, 2**31 - 1):
        expected = BucketTransform(buckets).pyarrow_transform(StringType())(values)
        got = kernels.iceberg_bucket(values, buckets)
        assert got is not None
        assert got.equals(expected), buckets
        part = kernels.iceberg_bucket(values.slice(5, 300), buckets)
        assert part is not None
        assert part.equals(expected.slice(5, 300))
    # Iceberg's spec value: bucket[N]("iceberg") = (murmur3_32("iceberg") & MAX_INT) % N,
    # with murmur3_32("iceberg") = 1210000089 (the spec's appendix).
    one = kernels.iceberg_bucket(pa.array(["iceberg"], string_type), 2**31 - 1)
    assert one is not None
    assert one.to_pylist() == [1210000089]
    assert kernels.iceberg_bucket(pa.array([1, 2]), 16) is None


def test_writer_partitions_strings_as_pyiceberg_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyiceberg.transforms import BucketTransform, DayTransform
    from pyiceberg.types import StringType, TimestamptzType

    from clicklake.lakehouse import write

    rng = random.Random(3)
    values = pa.array(_strings(rng, 500), pa.large_string())
    fast = write._transform(BucketTransform(16), StringType(), values)
    monkeypatch.setattr(kernels, "_ckernels", None)
    slow = write._transform(BucketTransform(16), StringType(), values)
    assert fast.equals(slow)
    assert fast.equals(BucketTransform(16).pyarrow_transform(StringType())(values))
    ts = pa.array([0, 86_400_000_000, None], pa.timestamp("us", tz="UTC"))
    assert write._transform(DayTransform(), TimestamptzType(), ts).to_pylist() == [0, 1, None]
