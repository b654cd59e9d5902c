"""The ``campaign`` step: marketing attribution and GA4's default channel group.

Columns (Snowplow's ``mkt_*`` names plus ``default_channel_group``):

- ``mkt_source``, ``mkt_medium``, ``mkt_campaign``, ``mkt_term``, ``mkt_content``: from the page
  URL's ``utm_*`` parameters when it has any; otherwise from Segment's ``context.campaign``
  (``source``, ``medium``, ``name``, ``term``, ``content``). The JSON context is only parsed for
  rows whose URL has no ``utm_*`` and whose context mentions ``"campaign"`` at all.
- ``mkt_clickid``, ``mkt_network``: the first ad click id of the page URL, in the order
  gclid, gbraid, wbraid (Google), msclkid (Microsoft), dclid (DoubleClick), ttclid (TikTok),
  fbclid (Facebook).
- ``default_channel_group``: GA4's default channel grouping, evaluated on a source and medium
  derived from the campaign, the click id and the ``referrer`` step's columns (this step runs
  after it). The exact rules are in ``docs/channels.md``; :func:`channel_group` implements them.

Each distinct page URL is parsed once (LRU cache across batches), and the channel group is
computed once per distinct combination of its inputs.
"""

from __future__ import annotations

import json
import re
from functools import cache, lru_cache
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.config import Settings
from clicklake.enrich import kernels
from clicklake.enrich.base import Encoded, Step, append_columns, contains_literal, encode, spread, unique_map
from clicklake.enrich.referrer import RefererIndex, default_index
from clicklake.enrich.url import split_url
from clicklake.events.schema import Column

CACHE_SIZE = 100_000

COLUMNS: tuple[Column, ...] = (
    Column("mkt_source", "string", "utm_source, else context.campaign.source"),
    Column("mkt_medium", "string", "utm_medium, else context.campaign.medium"),
    Column("mkt_campaign", "string", "utm_campaign, else context.campaign.name"),
    Column("mkt_term", "string", "utm_term, else context.campaign.term"),
    Column("mkt_content", "string", "utm_content, else context.campaign.content"),
    Column(
        "mkt_clickid", "string", "ad click id from the page URL (gclid, msclkid, dclid, ttclid, fbclid, ...)"
    ),
    Column(
        "mkt_network", "string", "ad network of mkt_clickid: Google, Microsoft, DoubleClick, TikTok, Facebook"
    ),
    Column("default_channel_group", "string", "GA4 default channel group (docs/channels.md)"),
)

UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
CONTEXT_KEYS = ("source", "medium", "name", "term", "content")

# click id -> (network, implied source, implied medium); an implied medium makes the click paid.
# fbclid is added by Facebook to organic links too, so it implies nothing.
CLICK_IDS: dict[str, tuple[str, str | None, str | None]] = {
    "gclid": ("Google", "google", "cpc"),
    "gbraid": ("Google", "google", "cpc"),
    "wbraid": ("Google", "google", "cpc"),
    "msclkid": ("Microsoft", "bing", "cpc"),
    "dclid": ("DoubleClick", "dv360", "cpm"),
    "ttclid": ("TikTok", "tiktok", "cpc"),
    "fbclid": ("Facebook", None, None),
}

CHANNEL_GROUPS = (
    "Direct",
    "Cross-network",
    "Paid Shopping",
    "Paid Search",
    "Paid Social",
    "Paid Video",
    "Display",
    "Paid Other",
    "Organic Shopping",
    "Organic Social",
    "Organic Video",
    "Organic Search",
    "Email",
    "Affiliates",
    "Referral",
    "Audio",
    "SMS",
    "Mobile Push Notifications",
    "Unassigned",
)

PAID_MEDIUM = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$")
SHOPPING_CAMPAIGN = re.compile(r"^(.*(([^a-df-z]|^)shop|shopping).*)$")
DISPLAY_MEDIUMS = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
SOCIAL_MEDIUMS = frozenset(
    {"social", "social-network", "social-media", "sm", "social network", "social media"}
)
EMAIL_NAMES = frozenset({"email", "e-mail", "e_mail", "e mail"})
REFERRAL_MEDIUMS = frozenset({"referral", "app", "link"})

# Source names (lower case) beyond the hosts and names of data/referers.json.
SEARCH_ALIASES = frozenset(
    {"google", "bing", "yahoo", "duckduckgo", "baidu", "yandex", "ecosia", "naver", "brave"}
)
SOCIAL_ALIASES = frozenset(
    {"facebook", "fb", "meta", "instagram", "ig", "twitter", "x", "linkedin", "pinterest", "reddit", "tiktok"}
    | {
        "snapchat",
        "threads",
        "whatsapp",
        "telegram",
        "discord",
        "quora",
        "vk",
        "weibo",
        "mastodon",
        "bluesky",
    }
)
VIDEO_SITES = frozenset(
    {"youtube", "youtube.com", "m.youtube.com", "youtu.be", "vimeo", "vimeo.com", "twitch", "twitch.tv"}
    | {"dailymotion", "dailymotion.com", "wistia", "wistia.com", "netflix", "netflix.com", "disneyplus"}
)
SHOPPING_SITES = frozenset(
    {"amazon", "amazon.com", "ebay", "ebay.com", "etsy", "etsy.com", "walmart", "walmart.com", "shopify"}
    | {"shopping.google.com", "google shopping", "aliexpress", "aliexpress.com", "alibaba", "alibaba.com"}
    | {"target", "target.com", "mercadolibre", "mercadolibre.com", "igshopping", "shopzilla", "zalando"}
)

_STR = pa.large_string()


@lru_cache(maxsize=CACHE_SIZE)
def url_campaign(url: str) -> tuple[bool | str | None, ...]:
    """Campaign parameters and click id of one page URL.

    Args:
        url: The page URL.

    Returns:
        ``(has_utm, utm_source, utm_medium, utm_campaign, utm_term, utm_content, clickid,
        network, implied_source, implied_medium)``.
    """
    query = split_url(url)[4]
    params: dict[str, str] = {}
    if query:
        for key, value in parse_qsl(query):
            value = value.strip()
            if value:
                params.setdefault(key.lower(), value)
    utm = tuple(params.get(k) for k in UTM_KEYS)
    click: tuple[str | None, ...] = (None, None, None, None)
    for key, (network, source, medium) in CLICK_IDS.items():
        if key in params:
            click = (params[key], network, source, medium)
            break
    return (any(v is not None for v in utm), *utm, *click)


def context_campaign(context: str) -> tuple[str | None, ...]:
    """``context.campaign`` of one Segment context JSON; nulls when absent or malformed.

    Args:
        context: The ``context`` column's JSON text.

    Returns:
        ``(source, medium, name, term, content)``.
    """
    try:
        campaign = orjson.loads(context).get("campaign")
    except (orjson.JSONDecodeError, AttributeError):
        return (None,) * 5
    if not isinstance(campaign, dict):
        return (None,) * 5
    out: list[str | None] = []
    for key in CONTEXT_KEYS:
        value = campaign.get(key)
        if value is None or isinstance(value, dict | list):
            out.append(None)
        else:
            text = (value if isinstance(value, str) else json.dumps(value)).strip()
            out.append(text or None)
    return tuple(out)


def _matches(source: str, names: frozenset[str], index: RefererIndex, medium: str) -> bool:
    """Whether ``source`` is a known site: by name, or as a host in the referrer list."""
    if source in names:
        return True
    if "." not in source:
        return False
    host = source.removeprefix("www.")
    if host in names:
        return True
    found = index.lookup(host)
    return found is not None and found.medium == medium


@cache
def _list_names(medium: str) -> frozenset[str]:
    index = default_index()
    names = {r.source.lower() for r in (*index.exact.values(), *index.brands.values()) if r.medium == medium}
    return frozenset(names)


def channel_group(source: str, medium: str, campaign: str, index: RefererIndex | None = None) -> str:
    """GA4's default channel group for one (source, medium, campaign), all lower case.

    Args:
        source: e.g. ``google``, ``facebook.com``, ``(direct)``.
        medium: e.g. ``cpc``, ``organic``, ``referral``, ``(none)``.
        campaign: campaign name, or empty.
        index: The referrer list used to recognise hosts; the bundled one by default.

    Returns:
        One of :data:`CHANNEL_GROUPS`.
    """
    index = index or default_index()
    is_video = source in VIDEO_SITES or source.removeprefix("www.") in VIDEO_SITES
    is_search = _matches(source, SEARCH_ALIASES | _list_names("search"), index, "search")
    is_social = not is_video and _matches(source, SOCIAL_ALIASES | _list_names("social"), index, "social")
    is_shopping = source in SHOPPING_SITES or source.removeprefix("www.") in SHOPPING_SITES
    shopping_campaign = bool(SHOPPING_CAMPAIGN.match(campaign))
    paid = bool(PAID_MEDIUM.match(medium))

    if source == "(direct)" and medium in ("(none)", "(not set)"):
        return "Direct"
    if "cross-network" in campaign:
        return "Cross-network"
    if paid:
        if is_shopping or shopping_campaign:
            return "Paid Shopping"
        if is_search:
            return "Paid Search"
        if is_social:
            return "Paid Social"
        if is_video:
            return "Paid Video"
    if medium in DISPLAY_MEDIUMS:
        return "Display"
    if paid:
        return "Paid Other"
    if is_shopping or shopping_campaign:
        return "Organic Shopping"
    if is_social or medium in SOCIAL_MEDIUMS:
        return "Organic Social"
    if is_video or "video" in medium:
        return "Organic Video"
    if is_search or medium == "organic":
        return "Organic Search"
    if source in EMAIL_NAMES or medium in EMAIL_NAMES:
        return "Email"
    if medium == "affiliate":
        return "Affiliates"
    if medium in REFERRAL_MEDIUMS:
        return "Referral"
    if medium == "audio":
        return "Audio"
    if source == "sms" or medium == "sms":
        return "SMS"
    if medium.endswith("push") or "mobile" in medium or "notification" in medium or source == "firebase":
        return "Mobile Push Notifications"
    return "Unassigned"


# How a referrer (no campaign, no paid click id) becomes a GA4 medium.
_REFERRER_MEDIUM = {
    "search": "organic",
    "social": "referral",
    "email": "email",
    "paid": "cpc",
    "unknown": "referral",
}
_SEP = "\x1f"


def source_medium(
    mkt_source: str,
    mkt_medium: str,
    mkt_campaign: str,
    implied_source: str,
    implied_medium: str,
    refr_medium: str,
    refr_source: str,
    refr_host: str,
) -> tuple[str, str, str]:
    """The (source, medium, campaign) that the channel rules see, lower case; ``""`` is missing.

    Precedence: campaign parameters (utm or ``context.campaign``), then a paid click id
    (gclid -> google / cpc), then the referrer, else ``(direct)`` / ``(none)``. An internal
    referrer counts as direct.
    """
    if mkt_source or mkt_medium or mkt_campaign:
        return (mkt_source.lower(), mkt_medium.lower(), mkt_campaign.lower())
    if implied_medium:
        return (implied_source, implied_medium, "")
    if refr_medium and refr_medium != "internal":
        source = (refr_source if refr_medium != "unknown" else refr_host) or refr_host
        return (source.lower(), _REFERRER_MEDIUM.get(refr_medium, "referral"), "")
    return ("(direct)", "(none)", "")


@lru_cache(maxsize=CACHE_SIZE)
def _channel_for_key(key: str) -> tuple[str]:
    fields = key.split(_SEP)
    return (channel_group(*source_medium(*fields)),)


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    if name in batch.schema.names:
        return batch.column(name)
    return pa.nulls(batch.num_rows, _STR)


def _indices(encoded: Encoded) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Each row's index into ``encoded.dictionary``; -1 where the value is null."""
    return np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _mkt_columns(
    url_rows: np.ndarray[Any, np.dtype[np.int64]],
    url_parts: list[tuple[bool | str | None, ...]],
    context: pa.Array,
) -> tuple[list[pa.Array], np.ndarray[Any, np.dtype[np.int64]]]:
    """``mkt_source`` .. ``mkt_content``: the URL's ``utm_*`` where it has any, else
    ``context.campaign`` where the context mentions ``"campaign"``, else null.

    Both kinds of values go into one table of distinct 5-tuples (one per URL, then one per
    context parsed) and each row picks its tuple, so each column is built with a single take.
    The JSON context is only parsed for the rows that need it, once per distinct context.

    Returns:
        The five columns, and each row's index into their table of distinct 5-tuples (-1: all
        null).
    """
    has_utm = np.fromiter((bool(p[0]) for p in url_parts), dtype=bool, count=len(url_parts))
    row_utm = np.zeros(len(url_rows), dtype=bool)
    valid = url_rows >= 0
    row_utm[valid] = has_utm[url_rows[valid]]
    code = np.where(row_utm, url_rows, -1)
    table: list[tuple[str | None, ...]] = [p[1:6] for p in url_parts]  # type: ignore[misc]
    if not row_utm.all():
        # One pass over the rows' JSON in the compiled kernel, when it is built; otherwise
        # over the distinct contexts (the column's dictionary).
        mentions = kernels.contains(context, '"campaign"')
        if mentions is not None:
            need = ~row_utm & mentions
            if need.any():
                picked = np.flatnonzero(need)
                _parse_contexts(pc.dictionary_encode(context.take(pa.array(picked))), picked, code, table)
        else:
            _parse_contexts(encode(context), np.arange(len(code)), code, table, ~row_utm)
    rows = pa.array(code, mask=code < 0)
    return [pc.take(pa.array(col, type=_STR), rows) for col in _transpose(table, 5)], code


def _parse_contexts(
    ctx: Encoded,
    rows: np.ndarray[Any, np.dtype[np.int64]],
    code: np.ndarray[Any, np.dtype[np.int64]],
    table: list[tuple[str | None, ...]],
    wanted: np.ndarray[Any, np.dtype[np.bool_]] | None = None,
) -> None:
    """Point ``code[rows[i]]`` at the ``context.campaign`` of the i-th encoded context (among
    the ``wanted`` ones, when given, that mention ``"campaign"``), each distinct document parsed
    once and appended to ``table``."""
    if wanted is not None:
        mentions = contains_literal(ctx.dictionary, '"campaign"')
        if not mentions.any():
            return
    ctx_rows = _indices(ctx)
    need = ctx_rows >= 0
    if wanted is not None:
        need &= wanted
        need[need] = mentions[ctx_rows[need]]
    if not need.any():
        return
    distinct = np.unique(ctx_rows[need])
    docs = ctx.dictionary.take(pa.array(distinct)).to_pylist()
    where = np.full(len(ctx.dictionary), -1, dtype=np.int64)
    where[distinct] = np.arange(len(table), len(table) + len(distinct))
    table += [context_campaign(doc) for doc in docs]
    code[rows[need]] = where[ctx_rows[need]]


def _channel_column(
    mkt: list[pa.Array],
    code: np.ndarray[Any, np.dtype[np.int64]],
    url_rows: np.ndarray[Any, np.dtype[np.int64]],
    url_parts: list[tuple[bool | str | None, ...]],
    referrer: list[pa.Array],
) -> pa.Array:
    """``default_channel_group``: :func:`_channel_for_key` once per distinct combination of
    its eight inputs (campaign source, medium and name, the click id's implied source and
    medium, the referrer's medium, source and host), joined into one key string.

    The rows are first told apart by integers (the campaign values are the row's ``code``,
    the implied ones its URL's, the referrer columns are encoded), so that the key strings
    are built for one row of each combination, not for every row.
    """
    n = len(code)
    parts = [(code, int(code.max(initial=-1)) + 1), (url_rows, len(url_parts))]
    for column in referrer:
        encoded = pc.dictionary_encode(column)
        parts.append(
            (_indices(Encoded(column, encoded.dictionary, encoded.indices)), len(encoded.dictionary))
        )
    # Mixed radix, renumbered after each part so that it never grows past the row count.
    combo = np.zeros(n, dtype=np.int64)
    for idx, size in parts:
        encoded = pc.dictionary_encode(pa.array(combo * (size + 1) + (idx + 1)))
        combo = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    sample = np.empty(int(combo.max(initial=-1)) + 1, dtype=np.int64)
    sample[combo] = np.arange(n)  # any row of a combination: they all have the same inputs
    at = pa.array(sample)
    implied_rows = url_rows[sample]
    implied_at = pa.array(implied_rows, mask=implied_rows < 0)
    implied = [pc.take(pa.array(col, type=_STR), implied_at) for col in _transpose(url_parts, 10)[8:10]]
    inputs = [*(c.take(at) for c in mkt[:3]), *implied, *(c.take(at) for c in referrer)]
    key = pc.binary_join_element_wise(
        *(a.cast(_STR) for a in inputs), pa.scalar(_SEP, _STR), null_handling="replace", null_replacement=""
    )
    (channel,) = unique_map(key, _channel_for_key, (_STR,), keep=False)
    return pc.take(channel, pa.array(combo))


def _transpose(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]


def enrich(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Append the ``mkt_*`` columns and ``default_channel_group`` to ``batch``.

    Args:
        batch: Events with ``page_url`` and ``context``, after the ``referrer`` step
            (``refr_medium``, ``refr_source``, ``refr_urlhost``; missing ones count as null).

    Returns:
        The same rows with the eight columns appended.
    """
    url = encode(batch.column("page_url"))
    url_rows = _indices(url)
    url_parts = [url_campaign(u) for u in url.values()]
    mkt, code = _mkt_columns(url_rows, url_parts, batch.column("context"))
    clickid, network = (spread(pa.array(col, type=_STR), url) for col in _transpose(url_parts, 10)[6:8])
    referrer = [_column(batch, name) for name in ("refr_medium", "refr_source", "refr_urlhost")]
    channel = _channel_column(mkt, code, url_rows, url_parts, referrer)

    names = [c.name for c in COLUMNS]
    return append_columns(batch, dict(zip(names, [*mkt, clickid, network, channel], strict=True)))


def build(settings: Settings) -> Step:
    """The ``campaign`` step.

    Args:
        settings: The clicklake settings.

    Returns:
        The step.
    """
    del settings
    default_index()
    return Step("campaign", enrich, COLUMNS)
