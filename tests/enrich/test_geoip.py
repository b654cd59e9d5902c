"""The ``geoip`` step: country from the shipped registry table, the rest from a MaxMind file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from clicklake.config import Settings, load_settings
from clicklake.enrich.geoip import COLUMNS, GeoLookup, build
from clicklake.events.schema import EVENTS_ARROW
from clicklake.exceptions import ConfigError

GEO_NAMES = [c.name for c in COLUMNS]
CITY_ONLY = GEO_NAMES[1:]

LONDON: dict[str, Any] = {
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom", "de": "Vereinigtes Königreich"}},
    "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
    "city": {"names": {"de": "London (DE)", "en": "London"}},
    "postal": {"code": "EC2V"},
    "location": {"latitude": 51.5142, "longitude": -0.0931, "time_zone": "Europe/London"},
}
BERLIN: dict[str, Any] = {
    "country": {"iso_code": "DE", "names": {"en": "Germany"}},
    "subdivisions": [{"iso_code": "BE", "names": {"de": "Berlin"}}],
    "city": {"names": {"en": "Berlin"}},
    "postal": {"code": "10115"},
    "location": {"latitude": 52.5, "longitude": 13.375, "time_zone": "Europe/Berlin"},
}


def _events(ips: list[str | None]) -> pa.RecordBatch:
    data = {name: [None] * len(ips) for name in EVENTS_ARROW.names}
    data["user_ipaddress"] = ips
    data["event_id"] = [f"e{i}" for i in range(len(ips))]
    return pa.RecordBatch.from_pydict(data, schema=EVENTS_ARROW)


def _settings(tmp_path: Path, mmdb: str = "") -> Settings:
    return load_settings(environ={}, storage={"data_dir": str(tmp_path)}, enrich={"geoip": {"mmdb": mmdb}})


@pytest.fixture
def city_mmdb(tmp_path: Path) -> Path:
    """A tiny City database: one IPv4 network in London, one IPv6 network in Berlin."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    writer.insert_network(IPSet(["81.2.69.0/24"]), LONDON)
    writer.insert_network(IPSet(["2a02:8100::/32"]), BERLIN)
    path = tmp_path / "city.mmdb"
    writer.to_db_file(str(path))
    return path


def test_country_from_shipped_database(tmp_path: Path) -> None:
    ips = [
        "8.8.8.8",  # Google Public DNS, ARIN, US
        "2001:4860:4860::8888",  # Google Public DNS over IPv6, US
        "193.0.14.129",  # k.root-servers.net, RIPE NCC, NL
        "1.0.16.1",  # APNIC block delegated to Japan
        "8.8.8.8",
        None,
        "10.1.2.3",  # private: no country
        "not an ip",
    ]
    step = build(_settings(tmp_path))
    out = step(_events(ips))

    assert step.name == "geoip"
    assert out.schema.names == [*EVENTS_ARROW.names, *GEO_NAMES]
    assert out.column("event_id").to_pylist() == [f"e{i}" for i in range(len(ips))]
    assert out.column("user_ipaddress").to_pylist() == ips
    assert out.column("geo_country").to_pylist() == ["US", "US", "NL", "JP", "US", None, None, None]
    for name in CITY_ONLY:
        assert out.column(name).null_count == len(ips), name
    assert out.schema.field("geo_latitude").type == pa.float64()
    assert out.schema.field("geo_country").type == pa.large_string()


def test_declared_columns_match_output(tmp_path: Path) -> None:
    step = build(_settings(tmp_path))
    assert [(c.name, c.kind) for c in step.columns] == [
        ("geo_country", "string"),
        ("geo_region", "string"),
        ("geo_region_name", "string"),
        ("geo_city", "string"),
        ("geo_zipcode", "string"),
        ("geo_latitude", "double"),
        ("geo_longitude", "double"),
        ("geo_timezone", "string"),
    ]
    empty = step(_events([]))
    assert empty.num_rows == 0
    assert empty.schema.names[-len(GEO_NAMES) :] == GEO_NAMES


def test_city_columns_from_mmdb(tmp_path: Path, city_mmdb: Path) -> None:
    ips = ["81.2.69.160", "8.8.8.8", "2a02:8100:1::1", "81.2.69.1", "bogus", None]
    out = build(_settings(tmp_path, str(city_mmdb)))(_events(ips)).to_pydict()

    assert out["geo_country"] == ["GB", "US", "DE", "GB", None, None]
    assert out["geo_region"] == ["ENG", None, "BE", "ENG", None, None]
    # English name when there is one, else the first name given.
    assert out["geo_region_name"] == ["England", None, "Berlin", "England", None, None]
    assert out["geo_city"] == ["London", None, "Berlin", "London", None, None]
    assert out["geo_zipcode"] == ["EC2V", None, "10115", "EC2V", None, None]
    assert out["geo_latitude"] == [51.5142, None, 52.5, 51.5142, None, None]
    assert out["geo_longitude"] == [-0.0931, None, 13.375, -0.0931, None, None]
    assert out["geo_timezone"] == ["Europe/London", None, "Europe/Berlin", "Europe/London", None, None]


def test_mmdb_that_cannot_be_opened(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a maxmind database")
    with pytest.raises(ConfigError, match="MaxMind"):
        build(_settings(tmp_path, str(bad)))
    with pytest.raises(ConfigError, match="MaxMind"):
        build(_settings(tmp_path, str(tmp_path / "missing.mmdb")))


def test_bounded_cache_keeps_answers_right() -> None:
    lookup = GeoLookup(cache_size=2)
    first = lookup.lookup(["8.8.8.8", "193.0.14.129", "1.0.16.1"])
    again = lookup.lookup(["1.0.16.1", "8.8.8.8", "193.0.14.129"])
    assert [r[0] for r in first] == ["US", "NL", "JP"]
    assert [r[0] for r in again] == ["JP", "US", "NL"]
    assert len(lookup._cache) <= 2
