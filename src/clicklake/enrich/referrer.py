"""The ``referrer`` step: where the visitor came from.

Adds ``refr_medium``, ``refr_source`` and ``refr_term`` (Snowplow's names). The known referrers
are in ``data/referers.json``, curated for clicklake in the shape of Snowplow's referer-parser
list (see its ``_about``). Rules, in order:

1. no referrer (null or empty): all three null;
2. ``internal`` when the referrer host equals the page host (a leading ``www.`` ignored on
   both), or is one of ``[enrich.referrer] internal_domains`` or a subdomain of one; source and
   term are then null;
3. ``search``, ``social``, ``email`` or ``paid`` (ad servers such as googleadservices.com) when
   the host is in the list; the longest matching host wins, so ``mail.google.com`` is Gmail
   (email) while ``www.google.de`` is Google (search); ``refr_term`` is the first non-empty
   search parameter of the engine (``q`` for Google) in the referrer's query, search only;
4. ``unknown`` otherwise (source and term null).

Paid traffic coming from a *campaign* (``utm_medium=cpc``, ``gclid``, ...) is the ``campaign``
step's business: ``refr_medium`` only describes the referring site.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.enrich.base import Step, append_columns, encode, spread, unique_map
from clicklake.enrich.url import split_url
from clicklake.events.schema import Column

CACHE_SIZE = 100_000
MEDIUMS = ("search", "social", "email", "internal", "paid", "unknown")

COLUMNS: tuple[Column, ...] = (
    Column(
        "refr_medium", "string", "search | social | email | internal | paid | unknown; null without referrer"
    ),
    Column("refr_source", "string", "the referring site's name, e.g. Google, Facebook"),
    Column("refr_term", "string", "search term found in the referrer URL, search engines only"),
)


@dataclass(frozen=True)
class Referer:
    """One known referring site.

    Attributes:
        medium: ``search``, ``social``, ``email`` or ``paid``.
        source: Its display name.
        parameters: Query keys holding the search term, in order of preference.
    """

    medium: str
    source: str
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefererIndex:
    """Host lookup over the known referrers.

    Attributes:
        exact: Host name to referrer.
        brands: ``brand`` (from ``brand.*`` entries) to referrer, for any short top-level domain.
    """

    exact: Mapping[str, Referer]
    brands: Mapping[str, Referer]

    def lookup(self, host: str) -> Referer | None:
        """The referrer for ``host``: the longest suffix of it that is known, or None.

        Args:
            host: A lower-case host name.

        Returns:
            The known referrer, or None.
        """
        labels = host.split(".")
        for start in range(len(labels)):
            sub = labels[start:]
            found = self.exact.get(".".join(sub))
            if found is not None:
                return found
            for tld_labels in (1, 2):
                tail = sub[-tld_labels:]
                if len(sub) > tld_labels and all(0 < len(label) <= 3 for label in tail):
                    found = self.brands.get(".".join(sub[:-tld_labels]))
                    if found is not None:
                        return found
        return None


def load_index(data: Mapping[str, Any]) -> RefererIndex:
    """Build the lookup from data shaped like ``referers.json``.

    Args:
        data: ``medium -> source -> {"domains": [...], "parameters": [...]}``; keys starting
            with ``_`` are comments.

    Returns:
        The index; a later entry for the same host replaces an earlier one.
    """
    exact: dict[str, Referer] = {}
    brands: dict[str, Referer] = {}
    for medium, sources in data.items():
        if medium.startswith("_"):
            continue
        for source, entry in sources.items():
            ref = Referer(medium, source, tuple(entry.get("parameters", ())))
            for domain in entry["domains"]:
                domain = domain.lower()
                if domain.endswith(".*"):
                    brands[domain[:-2]] = ref
                else:
                    exact[domain] = ref
    return RefererIndex(exact, brands)


@cache
def default_index() -> RefererIndex:
    """The index of the bundled ``data/referers.json``."""
    text = resources.files("clicklake.enrich").joinpath("data/referers.json").read_text(encoding="utf-8")
    return load_index(json.loads(text))


def _strip_www(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


@lru_cache(maxsize=CACHE_SIZE)
def _page_host(url: str) -> tuple[str | None]:
    host = split_url(url)[1]
    return (_strip_www(host) if host else None,)


def search_term(query: str | None, parameters: tuple[str, ...]) -> str | None:
    """The first non-empty value of ``parameters`` in ``query``.

    Args:
        query: A URL query string (without ``?``), or None.
        parameters: Keys to try, in order.

    Returns:
        The decoded, stripped term, or None.
    """
    if not query or not parameters:
        return None
    values = parse_qs(query)
    for key in parameters:
        for value in values.get(key, ()):
            if value.strip():
                return value.strip()
    return None


RefrParts = tuple[str | None, bool, str, str | None, str | None]


def make_classifier(index: RefererIndex, internal_domains: tuple[str, ...]) -> Callable[[str], RefrParts]:
    """A cached function classifying one referrer URL.

    Args:
        index: The known referrers.
        internal_domains: Lower-case domains whose hosts (and subdomains) are internal.

    Returns:
        ``url -> (host without www., is_internal_domain, medium, source, term)``.
    """

    @lru_cache(maxsize=CACHE_SIZE)
    def classify(url: str) -> RefrParts:
        _, host, _, _, query, _ = split_url(url)
        if host is None:
            return (None, False, "unknown", None, None)
        if any(host == d or host.endswith("." + d) for d in internal_domains):
            return (_strip_www(host), True, "internal", None, None)
        ref = index.lookup(host)
        if ref is None:
            return (_strip_www(host), False, "unknown", None, None)
        term = search_term(query, ref.parameters) if ref.medium == "search" else None
        return (_strip_www(host), False, ref.medium, ref.source, term)

    return classify


_TYPES = (pa.large_string(), pa.bool_(), pa.large_string(), pa.large_string(), pa.large_string())
_NO_REFERRER: RefrParts = (None, None, None, None, None)  # type: ignore[assignment]  # as a null row


def _transpose(rows: list[RefrParts]) -> list[tuple[object, ...]]:
    return list(zip(*rows, strict=True)) if rows else [() for _ in _TYPES]


def make_enrich(classify: Callable[[str], RefrParts]) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    """The step function around ``classify``.

    Args:
        classify: From :func:`make_classifier`.

    Returns:
        ``batch -> batch`` appending ``refr_medium``, ``refr_source``, ``refr_term``.
    """

    def enrich(batch: pa.RecordBatch) -> pa.RecordBatch:
        referrer = encode(batch.column("page_referrer"))
        # An empty referrer is no referrer (decided per distinct value, with Arrow's trim).
        empty = pc.equal(pc.utf8_trim_whitespace(referrer.dictionary), "").to_pylist()
        parts = [_NO_REFERRER if e else classify(v) for v, e in zip(referrer.values(), empty, strict=True)]
        host, internal_domain, medium, source, term = (
            spread(pa.array(col, type=t), referrer) for col, t in zip(_transpose(parts), _TYPES, strict=True)
        )
        (page_host,) = unique_map(batch.column("page_url"), _page_host, (pa.large_string(),))
        same_host = pc.fill_null(pc.equal(host, page_host), False)
        internal = pc.or_(pc.fill_null(internal_domain, False), same_host)
        null = pa.scalar(None, pa.large_string())
        medium = pc.if_else(internal, pa.scalar("internal", pa.large_string()), medium)
        return append_columns(
            batch,
            {
                "refr_medium": medium,
                "refr_source": pc.if_else(internal, null, source),
                "refr_term": pc.if_else(internal, null, term),
            },
        )

    return enrich


def build(settings: Settings) -> Step:
    """The ``referrer`` step, with the bundled list and the configured internal domains.

    Args:
        settings: The clicklake settings (``enrich.referrer.internal_domains``).

    Returns:
        The step.
    """
    internal = tuple(
        _strip_www(d.strip().lower().strip("."))
        for d in settings.enrich.referrer.internal_domains
        if d.strip()
    )
    classify = make_classifier(default_index(), internal)
    return Step("referrer", make_enrich(classify), COLUMNS)
