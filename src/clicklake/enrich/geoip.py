"""Geolocation of ``user_ipaddress``: country always, region/city/coordinates with a MaxMind file.

``geo_country`` comes from the IP-to-country table that ships inside the ``iptocc`` wheel (the
delegated statistics of the five Regional Internet Registries, refreshed with each release of
the package): offline, IPv4 and IPv6, no file to download or configure. It is the country a
block is *registered* to, which agrees with commercial databases for the large majority of
addresses.

When ``enrich.geoip.mmdb`` names a MaxMind-format database (GeoLite2-City, GeoIP2-City, DB-IP
City Lite, ...), it is read with ``maxminddb`` and also fills the region, city, postcode,
coordinates and time zone; its country wins over the registry one when it has one, so country
and city never disagree. Without the file those columns are null.

Lookups run once per distinct address of a batch, in bulk, and the answers are kept in a
bounded cache that survives across batches (the same visitors come back batch after batch).
Invalid or private addresses get nulls; they never fail the event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.enrich.base import BoundedCache, Step, append_columns, encode
from clicklake.events.schema import Column
from clicklake.exceptions import ConfigError

log = logging.getLogger("clicklake.enrich.geoip")

IP_COLUMN = "user_ipaddress"

COLUMNS: tuple[Column, ...] = (
    Column("geo_country", "string", "ISO 3166-1 alpha-2 country of user_ipaddress"),
    Column("geo_region", "string", "ISO 3166-2 subdivision code, without the country prefix (mmdb only)"),
    Column("geo_region_name", "string", "subdivision name, English (mmdb only)"),
    Column("geo_city", "string", "city name, English (mmdb only)"),
    Column("geo_zipcode", "string", "postal code (mmdb only)"),
    Column("geo_latitude", "double", "approximate latitude, WGS84 (mmdb only)"),
    Column("geo_longitude", "double", "approximate longitude, WGS84 (mmdb only)"),
    Column("geo_timezone", "string", "IANA time zone of the location (mmdb only)"),
)
_TYPES: tuple[pa.DataType, ...] = tuple(
    pa.float64() if c.kind == "double" else pa.large_string() for c in COLUMNS
)

CACHE_SIZE = 100_000
"""Distinct addresses remembered across batches (about 100 MB at most)."""

GeoRow = tuple[Any, ...]
_NO_GEO: GeoRow = (None,) * len(COLUMNS)


def _country_lookup() -> Callable[[list[str]], list[str | None]]:
    try:
        import iptocc
    except ImportError as exc:  # pragma: no cover - iptocc is a core dependency
        raise ConfigError("the geoip step needs the 'iptocc' package: pip install iptocc") from exc

    def lookup(ips: list[str]) -> list[str | None]:
        return list(iptocc.country_code(ips))

    return lookup


def _name(record: Any) -> str | None:
    """The English name of a GeoIP2 record (``{"names": {"en": ...}}``), else any name."""
    if not isinstance(record, dict):
        return None
    names = record.get("names")
    if not isinstance(names, dict) or not names:
        return None
    name = names.get("en", next(iter(names.values())))
    return name if isinstance(name, str) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mmdb_row(record: Any) -> GeoRow | None:
    """Map a GeoIP2/GeoLite2 City record to the ``geo_*`` columns (country first)."""
    if not isinstance(record, dict):
        return None
    country = record.get("country") or record.get("registered_country") or {}
    subdivisions = record.get("subdivisions") or [{}]
    region = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else {}
    city = record.get("city") or {}
    postal = record.get("postal") or {}
    location = record.get("location") or {}
    if not isinstance(location, dict):
        location = {}
    return (
        _str(country.get("iso_code")) if isinstance(country, dict) else None,
        _str(region.get("iso_code")) if isinstance(region, dict) else None,
        _name(region),
        _name(city),
        _str(postal.get("code")) if isinstance(postal, dict) else None,
        _float(location.get("latitude")),
        _float(location.get("longitude")),
        _str(location.get("time_zone")),
    )


class GeoLookup:
    """Bulk geolocation with a bounded cache; the state behind the ``geoip`` step.

    Args:
        mmdb: Path of a MaxMind-format database, or empty for country only.
        cache_size: How many distinct addresses to remember.

    Raises:
        ConfigError: ``mmdb`` is set but cannot be opened as a MaxMind database.
    """

    def __init__(self, mmdb: str = "", cache_size: int = CACHE_SIZE) -> None:
        self._country = _country_lookup()
        self._cache: BoundedCache[GeoRow] = BoundedCache(cache_size)
        self._reader: Any = None
        if mmdb:
            path = Path(mmdb).expanduser()
            try:
                import maxminddb

                self._reader = maxminddb.open_database(str(path))
            except ImportError as exc:  # pragma: no cover - maxminddb is a core dependency
                raise ConfigError(
                    "enrich.geoip.mmdb needs the 'maxminddb' package: pip install maxminddb"
                ) from exc
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                raise ConfigError(
                    f"enrich.geoip.mmdb: cannot open {path} as a MaxMind database ({exc}); "
                    "point CLICKLAKE_ENRICH__GEOIP__MMDB at a .mmdb file or leave it empty"
                ) from exc
            log.info("geoip mmdb=%s database_type=%s", path, self._reader.metadata().database_type)

    @property
    def has_mmdb(self) -> bool:
        """Whether a MaxMind file fills the region/city columns."""
        return self._reader is not None

    def _compute(self, ips: list[str]) -> list[GeoRow]:
        countries = self._country(ips)
        if self._reader is None:
            return [(c, *_NO_GEO[1:]) if c else _NO_GEO for c in countries]
        rows: list[GeoRow] = []
        get = self._reader.get
        for ip, country in zip(ips, countries, strict=True):
            try:
                row = _mmdb_row(get(ip))
            except ValueError:  # not an address, or IPv6 in an IPv4-only file
                row = None
            if row is None:
                rows.append((country, *_NO_GEO[1:]) if country else _NO_GEO)
            else:
                rows.append((row[0] or country, *row[1:]))
        return rows

    def lookup(self, ips: Sequence[str]) -> list[GeoRow]:
        """Geolocate distinct addresses, from the cache or in one bulk call for the rest.

        Args:
            ips: Distinct address strings.

        Returns:
            One ``geo_*`` tuple per address, in order (all ``None`` for an unknown address).
        """
        return self._cache.get_many(ips, lambda missing: self._compute([ip.strip() for ip in missing]))

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Append the ``geo_*`` columns to ``batch``."""
        if batch.num_rows == 0 or IP_COLUMN not in batch.schema.names:
            arrays = [pa.nulls(batch.num_rows, type=t) for t in _TYPES]
        else:
            encoded = encode(batch.column(IP_COLUMN))
            rows = self.lookup(encoded.values())
            # Without a MaxMind file only the country can be set: skip the all-null columns.
            width = len(_TYPES) if self._reader is not None else 1
            arrays = [
                pc.take(pa.array([r[i] for r in rows], type=t), encoded.indices)
                for i, t in enumerate(_TYPES[:width])
            ]
            arrays += [pa.nulls(batch.num_rows, type=t) for t in _TYPES[width:]]
        return append_columns(batch, {c.name: a for c, a in zip(COLUMNS, arrays, strict=True)})


def build(settings: Settings) -> Step:
    """The ``geoip`` step: ``geo_*`` columns from ``user_ipaddress``.

    Args:
        settings: ``enrich.geoip.mmdb`` optionally names a MaxMind City database.

    Returns:
        The step; it appends :data:`COLUMNS` (region to time zone null without ``mmdb``).

    Raises:
        ConfigError: ``mmdb`` is set and cannot be opened.
    """
    return Step("geoip", GeoLookup(settings.enrich.geoip.mmdb), COLUMNS)
