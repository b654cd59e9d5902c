"""The ``useragent`` step: browser, operating system and device from the User-Agent.

Parsing uses ``ua-parser`` 1.x (uap-core rules, with the ``ua-parser-rs`` native resolver when
installed), once per distinct user agent behind an LRU cache that survives across batches.
Unknown parts are null (ua-parser's ``Other`` is not copied).

``dvce_class`` is one of ``desktop``, ``mobile``, ``tablet``, ``bot``, ``other``:

1. ``bot`` when the ``bots`` step flagged the event (``is_bot``) or ua-parser's device family is
   ``Spider``;
2. ``tablet`` for iPads, Kindle/Silk, user agents saying ``Tablet``, and Android without
   ``Mobile`` (Google's convention for Android tablets);
3. ``mobile`` for iPhone/iPod, Android with ``Mobile``, Windows Phone and other ``Mobi`` agents;
4. ``desktop`` for Windows, macOS, Linux distributions and ChromeOS;
5. ``other`` for the rest (TVs, consoles, HTTP libraries with no OS, an empty user agent).
"""

from __future__ import annotations

from functools import cache, lru_cache

import pyarrow as pa
import pyarrow.compute as pc
import ua_parser

from clicklake.config import Settings
from clicklake.enrich.base import Step, append_columns, unique_map
from clicklake.events.schema import Column

CACHE_SIZE = 100_000
DEVICE_CLASSES = ("desktop", "mobile", "tablet", "bot", "other")

COLUMNS: tuple[Column, ...] = (
    Column("br_family", "string", "browser family, e.g. Chrome, Mobile Safari (ua-parser)"),
    Column("br_version", "string", "browser version, major.minor[.patch]"),
    Column("os_family", "string", "operating system family, e.g. Windows, iOS, Android"),
    Column("os_version", "string", "operating system version, major[.minor[.patch]]"),
    Column("dvce_family", "string", "device family, e.g. iPhone, iPad, Pixel 8, Spider"),
    Column("dvce_class", "string", "desktop | mobile | tablet | bot | other"),
)

_DESKTOP_OS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Mac OS",
        "Linux",
        "Ubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "SUSE",
        "openSUSE",
        "Mint",
        "Arch Linux",
        "CentOS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Chrome OS",
        "ChromeOS",
    }
)
_MOBILE_OS = frozenset({"iOS", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS", "Symbian OS"})
_TYPES = (pa.large_string(),) * 6

UaParts = tuple[str | None, str | None, str | None, str | None, str | None, str]


def _version(*parts: str | None) -> str | None:
    """``major.minor.patch`` of the leading non-null parts, or None without a major."""
    out: list[str] = []
    for p in parts:
        if p is None:
            break
        out.append(p)
    return ".".join(out) or None


def device_class(user_agent: str, os_family: str | None, device_family: str | None) -> str:
    """Class of one device, from the raw user agent and ua-parser's families.

    Args:
        user_agent: The User-Agent string.
        os_family: ua-parser's OS family, or None.
        device_family: ua-parser's device family, or None.

    Returns:
        One of :data:`DEVICE_CLASSES` (``bot`` only for ua-parser's ``Spider``; the ``bots``
        step's flag is applied by :func:`enrich`).
    """
    if device_family == "Spider":
        return "bot"
    lowered = user_agent.lower()
    if (
        (device_family is not None and device_family.startswith("iPad"))
        or "tablet" in lowered
        or "kindle" in lowered
        or "silk/" in lowered
    ):
        return "tablet"
    if os_family == "Android":
        return "mobile" if "mobile" in lowered else "tablet"
    if (
        os_family in _MOBILE_OS
        or (device_family is not None and device_family.startswith(("iPhone", "iPod")))
        or "mobi" in lowered
    ):
        return "mobile"
    if os_family in _DESKTOP_OS:
        return "desktop"
    return "other"


@cache
def _parser() -> ua_parser.Parser:
    """The default ua-parser parser (native resolver when ``ua-parser-rs`` is installed)."""
    parser = ua_parser.parser
    assert isinstance(parser, ua_parser.Parser)
    return parser


@lru_cache(maxsize=CACHE_SIZE)
def parse(user_agent: str) -> UaParts:
    """Browser, OS and device of one user agent.

    Args:
        user_agent: The User-Agent string.

    Returns:
        ``(br_family, br_version, os_family, os_version, dvce_family, dvce_class)``.
    """
    if not user_agent.strip():
        return (None, None, None, None, None, "other")
    r = _parser().parse(user_agent)
    ua, os, dev = r.user_agent, r.os, r.device
    br_family = ua.family if ua is not None and ua.family != "Other" else None
    br_version = _version(ua.major, ua.minor, ua.patch) if ua is not None else None
    os_family = os.family if os is not None and os.family != "Other" else None
    os_version = _version(os.major, os.minor, os.patch) if os is not None else None
    dvce_family = dev.family if dev is not None and dev.family != "Other" else None
    return (
        br_family,
        br_version,
        os_family,
        os_version,
        dvce_family,
        device_class(user_agent, os_family, dvce_family),
    )


def enrich(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Append the browser, OS and device columns to ``batch``.

    Args:
        batch: Events with ``user_agent`` and, when the ``bots`` step ran, ``is_bot``.

    Returns:
        The same rows with the six columns appended; ``dvce_class`` is ``bot`` where ``is_bot``.
    """
    arrays = unique_map(batch.column("user_agent"), parse, _TYPES)
    dvce_class = pc.fill_null(arrays[5], "other")
    if "is_bot" in batch.schema.names:
        flagged = pc.fill_null(batch.column("is_bot"), False)
        dvce_class = pc.if_else(flagged, pa.scalar("bot", pa.large_string()), dvce_class)
    arrays[5] = dvce_class
    return append_columns(batch, {c.name: a for c, a in zip(COLUMNS, arrays, strict=True)})


def build(settings: Settings) -> Step:
    """The ``useragent`` step; loads the ua-parser rules now, not on the first batch.

    Args:
        settings: The clicklake settings.

    Returns:
        The step.
    """
    del settings
    _parser().parse("Mozilla/5.0")
    return Step("useragent", enrich, COLUMNS)
