"""The ``url`` step: split ``page_url`` and ``page_referrer`` into their parts.

Column names follow Snowplow's canonical event (``page_urlhost``, ``refr_urlpath``, ...).
Each distinct URL is split once with :func:`urllib.parse.urlsplit`, behind an LRU cache that
survives across batches. Rules:

- the host is lower-cased; an empty part is null;
- the path is ``/`` when the URL has a host and no path (``https://a.com`` and
  ``https://a.com/`` are the same page);
- the port is the explicit one, else the scheme's default (http 80, https 443) but only when the
  URL has a host;
- a URL that cannot be split (bad port, bad IPv6 literal, ...) gives nulls in every column and
  never raises.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

import pyarrow as pa

from clicklake.config import Settings
from clicklake.enrich.base import Step, append_columns, unique_map
from clicklake.events.schema import Column

CACHE_SIZE = 100_000
DEFAULT_PORTS = {"http": 80, "https": 443}

UrlParts = tuple[str | None, str | None, int | None, str | None, str | None, str | None]
_NULL_PARTS: UrlParts = (None, None, None, None, None, None)
_PART_TYPES = (
    pa.large_string(),
    pa.large_string(),
    pa.int32(),
    pa.large_string(),
    pa.large_string(),
    pa.large_string(),
)
_PARTS = ("scheme", "host", "port", "path", "query", "fragment")


def _columns(prefix: str, source: str) -> tuple[Column, ...]:
    return (
        Column(f"{prefix}_urlscheme", "string", f"scheme of {source}, lower case"),
        Column(f"{prefix}_urlhost", "string", f"host of {source}, lower case"),
        Column(f"{prefix}_urlport", "int", f"port of {source}; the scheme's default when not explicit"),
        Column(f"{prefix}_urlpath", "string", f"path of {source}; '/' when it has a host and no path"),
        Column(f"{prefix}_urlquery", "string", f"query string of {source}, without '?'"),
        Column(f"{prefix}_urlfragment", "string", f"fragment of {source}, without '#'"),
    )


COLUMNS: tuple[Column, ...] = _columns("page", "page_url") + _columns("refr", "page_referrer")


@lru_cache(maxsize=CACHE_SIZE)
def split_url(url: str) -> UrlParts:
    """Split one URL into (scheme, host, port, path, query, fragment).

    Args:
        url: The URL as sent.

    Returns:
        The six parts; empty parts are None, and all six are None when the URL is malformed.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or None
        port = parts.port
    except ValueError:
        return _NULL_PARTS
    scheme = parts.scheme.lower() or None
    if port is None and host is not None and scheme is not None:
        port = DEFAULT_PORTS.get(scheme)
    path = parts.path or ("/" if host is not None else None)
    return (scheme, host, port, path, parts.query or None, parts.fragment or None)


def split_column(values: pa.Array, prefix: str) -> dict[str, pa.Array]:
    """Split a column of URLs into the six ``<prefix>_url*`` columns.

    Args:
        values: A string column of URLs (nulls allowed).
        prefix: ``page`` or ``refr``.

    Returns:
        Column name to array, aligned with ``values``.
    """
    arrays = unique_map(values, split_url, _PART_TYPES)
    return {f"{prefix}_url{part}": arr for part, arr in zip(_PARTS, arrays, strict=True)}


def enrich(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Append the page and referrer URL parts to ``batch``.

    Args:
        batch: Events with ``page_url`` and ``page_referrer``.

    Returns:
        The same rows with the twelve URL-part columns appended.
    """
    new = split_column(batch.column("page_url"), "page")
    new.update(split_column(batch.column("page_referrer"), "refr"))
    return append_columns(batch, new)


def build(settings: Settings) -> Step:
    """The ``url`` step (it has no settings besides ``enabled``).

    Args:
        settings: The clicklake settings.

    Returns:
        The step.
    """
    del settings
    return Step("url", enrich, COLUMNS)
