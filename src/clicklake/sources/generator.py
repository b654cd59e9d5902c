"""A synthetic, realistic clickstream in the Segment Tracking API format, for demos and tests.

The generator simulates visitors of a small web shop (and its mobile apps) over ``days`` days:
sessions of page views separated by more than 30 minutes, page pings, link clicks, product
search, the Segment e-commerce funnel with drop-off, identify/alias/group calls, campaigns and
referrers, bots, device clock skew, late (offline) events, batches, client retries and a labelled
share of malformed input. Lines are written in receive order (which is not timestamp order),
streamed to disk through a small heap of pending lines, so memory stays flat whatever ``events``.

The returned :class:`Manifest` holds exact counts of what was written, so a pipeline run over the
output can be checked row for row: ``expected_events_rows`` land in ``events``,
``expected_failed_rows`` in ``failed_events`` with the ``error_type`` counted in ``malformed``.

Field conventions a consumer can rely on:

* page pings: ``track`` with ``event: "Page Ping"`` and ``properties: {"heartbeat": 10}``;
* session ids: ``context.sessionId`` (an integer, the session start in epoch ms) on ~30% of
  sessions;
* e-commerce: ``Product Viewed``/``Product Added`` carry ``product_id, sku, name, category, price,
  currency`` (+ ``quantity, cart_id`` when added); ``Checkout Started``/``Order Completed`` carry
  ``order_id, value|total, revenue, shipping, tax, currency, products`` (a list of products with
  ``quantity``) and, sometimes, ``coupon``/``discount``;
* ndjson lines (and every event in them) carry ``writeKey``; every event carries ``receivedAt``.
"""

from __future__ import annotations

import gzip as _gzip
import heapq
import random
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import orjson

from clicklake.events.envelope import encode_line

__all__ = ["DECODE_ERRORS", "MAX_EVENT_BYTES", "MAX_LINE_BYTES", "VALIDATE_ERRORS", "Manifest", "generate"]

MAX_LINE_BYTES = 512_000
"""Lines (request bodies) above this size fail decoding as ``batch_too_large``."""
MAX_EVENT_BYTES = 32_768
"""Events whose JSON is above this size fail decoding as ``event_too_large``."""

DECODE_ERRORS = ("invalid_json", "invalid_envelope", "batch_too_large", "event_too_large")
VALIDATE_ERRORS = (
    "missing_field",
    "invalid_type",
    "wrong_type",
    "invalid_message_id",
    "invalid_timestamp",
    "timestamp_out_of_range",
)
CALL_TYPES = ("track", "page", "screen", "identify", "group", "alias")

# Relative frequency of each defect. The two oversized kinds are rare because each costs 40-550 KB.
_ERROR_WEIGHTS: dict[str, float] = {
    "invalid_json": 0.14,
    "invalid_envelope": 0.09,
    "batch_too_large": 0.01,
    "event_too_large": 0.03,
    "missing_field": 0.15,
    "invalid_type": 0.10,
    "wrong_type": 0.13,
    "invalid_message_id": 0.10,
    "invalid_timestamp": 0.12,
    "timestamp_out_of_range": 0.13,
}
# Defects that replace the event by a line of their own (whole-line failures, or no sentAt).
_SOLO_ERRORS = frozenset({*DECODE_ERRORS, "timestamp_out_of_range"})

_MS_MIN = 60_000
_MS_HOUR = 3_600_000
_MS_DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SESSION_GAP_MS = 31 * _MS_MIN
_END_MARGIN_MS = 60_000  # events happen at least this long before `end`, so receive <= end
_PROGRESS_EVERY = 5_000
_SPOOL_CHUNK = 4_096
_WRITE_CHUNK = 2_048

SITE = "https://shop.example.com"

# ---------------------------------------------------------------------------------------------
# Pools

_DESKTOP_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:129.0) Gecko/20100101 Firefox/129.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36 Edg/125.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.0.0 Safari/537.36 Edg/127.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 OPR/112.0.0.0",
)
_MOBILE_UAS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_7_8 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/471.0.0.35.109;FBBV/614516785;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.5.1;FBSS/3;FBCR/;FBID/phone;FBLC/en_US;FBOP/5]",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 339.0.3.12.91 (iPhone14,5; iOS 17_6; en_US; en; scale=3.00; 1170x2532; 618023787)",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.6533.103 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.165 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 12; moto g(60)) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.179 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; 2201117TG) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.71 Mobile Safari/537.36",
    "Mozilla/5.0 (Android 14; Mobile; rv:128.0) Gecko/128.0 Firefox/128.0",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
)
_IOS_APP_UAS = (
    "DemoShop/3.4.1 (iPhone; iOS 17.5.1; Scale/3.00)",
    "DemoShop/3.4.0 (iPhone; iOS 17.4; Scale/3.00)",
    "DemoShop/3.3.2 (iPhone; iOS 16.7.8; Scale/2.00)",
    "DemoShop/3.4.1 (iPad; iOS 17.5; Scale/2.00)",
)
_ANDROID_APP_UAS = (
    "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/AP2A.240805.005)",
    "Dalvik/2.1.0 (Linux; U; Android 13; SM-S911B Build/TP1A.220624.014)",
    "Dalvik/2.1.0 (Linux; U; Android 12; moto g(60) Build/S2RIS32.32-20-8)",
    "Dalvik/2.1.0 (Linux; U; Android 14; SM-A546B Build/UP1A.231005.007)",
)
# (user agent, library name, library version, ip prefixes)
_BOTS = (
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "analytics.js",
        "next-1.70.0",
        ("66.249.66.", "66.249.79."),
    ),
    (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/127.0.6533.119 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "analytics.js",
        "next-1.70.0",
        ("66.249.66.", "66.249.68."),
    ),
    (
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "analytics.js",
        "next-1.70.0",
        ("157.55.39.", "40.77.167."),
    ),
    (
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "analytics.js",
        "next-1.70.0",
        ("54.36.148.", "51.222.253."),
    ),
    (
        "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
        "analytics.js",
        "next-1.70.0",
        ("85.208.96.", "185.191.171."),
    ),
    (
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        "analytics.js",
        "next-1.70.0",
        ("5.255.231.", "213.180.203."),
    ),
    ("python-requests/2.31.0", "analytics-python", "2.3.2", ("34.125.", "35.203.")),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.6478.126 Safari/537.36",
        "analytics.js",
        "next-1.70.0",
        ("3.84.", "52.91."),
    ),
    ("curl/8.5.0", "analytics-python", "2.3.2", ("18.206.", "44.201.")),
)
_LOCALES = (
    ("en-US", "America/New_York", -240, 18),
    ("en-US", "America/Chicago", -300, 7),
    ("en-US", "America/Los_Angeles", -420, 9),
    ("en-GB", "Europe/London", 60, 12),
    ("de-DE", "Europe/Berlin", 120, 12),
    ("fr-FR", "Europe/Paris", 120, 8),
    ("es-ES", "Europe/Madrid", 120, 5),
    ("nl-NL", "Europe/Amsterdam", 120, 4),
    ("it-IT", "Europe/Rome", 120, 4),
    ("pl-PL", "Europe/Warsaw", 120, 3),
    ("sv-SE", "Europe/Stockholm", 120, 2),
    ("pt-BR", "America/Sao_Paulo", -180, 5),
    ("ja-JP", "Asia/Tokyo", 540, 4),
    ("en-IN", "Asia/Kolkata", 330, 4),
    ("en-AU", "Australia/Sydney", 600, 3),
)
# First octets of public, routable IPv4 space (no private, CGNAT, loopback, test or multicast).
_IPV4_FIRST = (
    2,
    5,
    23,
    24,
    31,
    37,
    45,
    46,
    47,
    50,
    62,
    67,
    68,
    71,
    73,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    83,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
    91,
    92,
    93,
    94,
    95,
    96,
    98,
    99,
    104,
    108,
    109,
    151,
    173,
    174,
    176,
    178,
    185,
    188,
    189,
    201,
    212,
    213,
    217,
)
_IPV6_PREFIXES = ("2a02:810d", "2a01:cb08", "2001:4ca0", "2600:1700", "2601:646", "2a00:23c7", "2406:3003")
# Hourly traffic profile (UTC), highest in the European and American afternoons and evenings.
_HOURLY = (
    0.35,
    0.28,
    0.24,
    0.22,
    0.24,
    0.3,
    0.42,
    0.55,
    0.68,
    0.78,
    0.84,
    0.88,
    0.9,
    0.92,
    0.95,
    0.98,
    1.0,
    0.98,
    0.96,
    0.95,
    0.9,
    0.78,
    0.6,
    0.45,
)
_WEEKDAY = (1.0, 1.0, 0.98, 0.97, 0.92, 0.78, 0.82)  # Monday first

_CATEGORIES = ("shoes", "jackets", "shirts", "bags", "accessories", "outdoor", "kids", "sale")
_ADJ = ("Classic", "Urban", "Trail", "Merino", "Everyday", "Summit", "Coastal", "Vintage", "Light", "Storm")
_NOUN = {
    "shoes": ("Runner", "Sneaker", "Hiking Boot", "Loafer"),
    "jackets": ("Rain Jacket", "Down Parka", "Softshell", "Denim Jacket"),
    "shirts": ("Oxford Shirt", "Tee", "Flannel Shirt", "Polo"),
    "bags": ("Backpack", "Tote", "Duffel", "Sling Bag"),
    "accessories": ("Beanie", "Scarf", "Belt", "Wool Socks"),
    "outdoor": ("Tent", "Sleeping Bag", "Headlamp", "Water Bottle"),
    "kids": ("Kids Rain Boot", "Kids Hoodie", "Kids Backpack", "Kids Cap"),
    "sale": ("Outlet Fleece", "Outlet Chino", "Outlet Cap", "Outlet Gloves"),
}
_SEARCH_TERMS = (
    "rain jacket",
    "running shoes",
    "backpack",
    "merino socks",
    "tent 2 person",
    "gift card",
    "winter boots",
    "linen shirt",
    "sale",
    "kids raincoat",
    "waterproof",
    "duffel bag",
)
_BLOG = (
    "how-to-choose-hiking-boots",
    "layering-guide",
    "packing-list-weekend-trip",
    "caring-for-merino",
    "best-trails-in-europe",
    "sustainable-materials",
    "rain-gear-101",
    "gift-ideas",
)
_CAMPAIGNS = (
    "spring_sale",
    "summer_launch",
    "back_to_school",
    "black_friday",
    "brand_awareness",
    "retargeting_q3",
    "newsletter_weekly",
    "new_arrivals",
)
_FIRST = (
    "anna",
    "ben",
    "carla",
    "david",
    "emma",
    "felix",
    "greta",
    "hugo",
    "ines",
    "jonas",
    "kim",
    "lena",
    "max",
    "nora",
    "oscar",
    "paula",
    "rafael",
    "sofia",
    "tom",
    "yuki",
    "li",
    "amara",
)
_LAST = (
    "schmidt",
    "martin",
    "garcia",
    "rossi",
    "smith",
    "nowak",
    "jansen",
    "silva",
    "tanaka",
    "kumar",
    "dubois",
    "muller",
    "brown",
    "lopez",
    "berg",
    "kowalski",
)
_PLANS = ("free", "free", "free", "plus", "pro", "enterprise")
_INDUSTRIES = ("retail", "software", "education", "health", "hospitality", "logistics")
_LINK_TEXTS = (
    "Shop now",
    "See details",
    "Add to wishlist",
    "Size guide",
    "Read more",
    "View all",
    "Free shipping",
    "Contact us",
)


def _cum(weights: Iterable[float]) -> list[float]:
    out: list[float] = []
    total = 0.0
    for w in weights:
        total += float(w)
        out.append(total)
    return out


def _pick_weighted(rng: random.Random, items: Sequence[Any], cum: Sequence[float]) -> Any:
    # bisect on cumulative weights: several times faster than random.choices for one pick
    return items[bisect_right(cum, rng.random() * cum[-1])]


_PAGE_KINDS = ("home", "product", "category", "blog", "search")
_LANDING_CUM = _cum((35, 25, 20, 12, 8))
_NEXT_CUM = _cum((8, 50, 25, 7, 10))
_SEARCH_ENGINES = (
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
    "https://search.yahoo.com/",
    "https://www.ecosia.org/",
)
_SEARCH_CUM = _cum((70, 12, 9, 4, 5))
_SOCIAL = ("facebook", "twitter", "linkedin", "instagram", "reddit")
_SOCIAL_CUM = _cum((45, 20, 15, 12, 8))


# ---------------------------------------------------------------------------------------------
# Manifest


@dataclass
class Manifest:
    """Exact counts of what :func:`generate` wrote.

    Row counts: ``expected_events_rows + expected_failed_rows == events_total`` and
    ``expected_failed_rows == sum(malformed.values())``. ``by_type``, ``bots`` and ``late`` count
    rows expected in ``events`` (retried copies included), so ``sum(by_type.values()) ==
    expected_events_rows``; ``retried`` counts the extra copies, ``valid_unique`` the distinct
    valid message ids (``expected_events_rows - retried``).
    """

    seed: int
    format: str
    lines: int = 0
    events_total: int = 0
    expected_events_rows: int = 0
    expected_failed_rows: int = 0
    valid_unique: int = 0
    retried: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    bots: int = 0
    late: int = 0
    identified_users: int = 0
    sessions: int = 0
    visitors: int = 0
    app_id: str = ""
    write_key: str = ""
    files: list[str] = field(default_factory=list)
    start: str = ""
    end: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a plain dict."""
        return asdict(self)

    def to_json(self) -> str:
        """The manifest as pretty-printed JSON with sorted keys."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()

    def write(self, path: Path) -> None:
        """Write :meth:`to_json` to ``path`` (parent directories are created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Time formatting (hot path: cached per day, no datetime objects per event)


class _Clock:
    """ISO 8601 formatting with the ``YYYY-MM-DDTHH:MM:`` prefix cached per minute."""

    def __init__(self) -> None:
        self._minutes: dict[int, str] = {}

    def _minute(self, minute: int) -> str:
        s = self._minutes.get(minute)
        if s is None:
            s = self._minutes[minute] = (_EPOCH + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:")
        return s

    def iso(self, ms: int) -> str:
        minute, rem = divmod(ms, _MS_MIN)
        prefix = self._minutes.get(minute) or self._minute(minute)
        return f"{prefix}{rem // 1000:02d}.{rem % 1000:03d}Z"

    def iso_offset(self, ms: int, offset_min: int) -> str:
        minute, rem = divmod(ms + offset_min * _MS_MIN, _MS_MIN)
        sec, milli = divmod(rem, 1000)
        sign = "+" if offset_min >= 0 else "-"
        oh, om = divmod(abs(offset_min), 60)
        return f"{self._minute(minute)}{sec:02d}.{milli:03d}{sign}{oh:02d}:{om:02d}"


# ---------------------------------------------------------------------------------------------
# Visitors


class _Visitor:
    __slots__ = (
        "anon",
        "busy_until",
        "ctx",
        "group",
        "identify_at",
        "ip",
        "is_bot",
        "library",
        "n_sessions",
        "offset_min",
        "platform",
        "skew_ms",
        "ts_style",
        "ua",
        "user_id",
    )

    def __init__(self) -> None:
        self.anon = ""
        self.user_id: str | int | None = None
        self.ua = ""
        self.ip = ""
        self.platform = "web"
        self.is_bot = False
        self.library: dict[str, str] = {}
        self.ctx: dict[str, Any] = {}
        self.skew_ms = 0
        self.ts_style = 0  # 0: ISO Z, 1: ISO with offset, 2: epoch ms number
        self.offset_min = 0
        self.identify_at = -1
        self.n_sessions = 0
        self.busy_until = -(1 << 62)
        self.group: str | None = None


class _Sink(Protocol):
    def write(self, rt: int, lines: list[bytes]) -> None: ...

    def close(self) -> list[str]: ...


class _NdjsonSink:
    """``files`` files split evenly by receive time; lines arrive in receive order."""

    def __init__(self, out: Path, files: int, gz: bool, start_ms: int, end_ms: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._paths = [out / f"events-{i + 1:04d}.ndjson{'.gz' if gz else ''}" for i in range(files)]
        self._gz = gz
        self._start = start_ms
        self._span = max(1, end_ms - start_ms)
        self._idx = -1
        self._raw: IO[bytes] | None = None
        self._fh: _gzip.GzipFile | IO[bytes] | None = None

    def _open(self, idx: int) -> None:
        self._close_current()
        while self._idx < idx:
            self._idx += 1
            raw = self._paths[self._idx].open("wb")
            self._raw = raw
            # mtime=0 and no file name in the header keep gzip output byte-identical across runs.
            self._fh = _gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if self._gz else raw
            if self._idx < idx:
                self._close_current()

    def _close_current(self) -> None:
        if self._fh is not None:
            self._fh.close()
            if self._raw is not None and self._raw is not self._fh:
                self._raw.close()
        self._fh = self._raw = None

    def write(self, rt: int, lines: list[bytes]) -> None:
        idx = min(len(self._paths) - 1, max(0, (rt - self._start) * len(self._paths) // self._span))
        if idx > self._idx or self._fh is None:
            self._open(max(idx, self._idx))
        assert self._fh is not None
        self._fh.write(b"".join(lines))

    def close(self) -> list[str]:
        self._open(len(self._paths) - 1)  # creates any file no line fell into
        self._close_current()
        return [str(p) for p in self._paths]


class _SpoolSink:
    def __init__(self, out: Path, segment_max_bytes: int) -> None:
        from clicklake.sources.spool import SpoolWriter, list_segments

        self._list = list_segments
        self._out = out
        self._before = set(list_segments(out))
        # No age-based rotation: segment boundaries must not depend on how fast we run.
        self._writer = SpoolWriter(out, segment_max_bytes, segment_max_age_s=float("inf"))

    def write(self, rt: int, lines: list[bytes]) -> None:
        self._writer.append(lines)

    def close(self) -> list[str]:
        self._writer.close()
        return [str(self._out / n) for n in self._list(self._out) if n not in self._before]


# ---------------------------------------------------------------------------------------------
# The generator


class _Generator:
    def __init__(
        self,
        *,
        sink: _Sink,
        spool: bool,
        events: int,
        seed: int,
        start_ms: int,
        end_ms: int,
        malformed_share: float,
        retry_share: float,
        batch_share: float,
        bot_share: float,
        late_share: float,
        app_id: str,
        write_key: str,
        manifest: Manifest,
        progress: Callable[[int], None] | None,
        segment_max_bytes: int,
    ) -> None:
        self.rng = rng = random.Random(seed)
        self.sink = sink
        self.spool = spool
        self.events = events
        self.remaining = events
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.limit_ms = end_ms - _END_MARGIN_MS
        self.mal_share = malformed_share
        self.retry_share = retry_share
        self.batch_share = batch_share
        self.bot_share = bot_share
        self.late_share = late_share
        self.app_id = app_id
        self.wk = write_key
        self.m = manifest
        self.progress = progress
        self.next_progress = _PROGRESS_EVERY
        self.clock = _Clock()
        self.heap: list[tuple[int, int, bytes]] = []
        self.out_buf: list[bytes] = []
        self.out_rt = 0
        self.out_chunk = _SPOOL_CHUNK if spool else _WRITE_CHUNK
        self.out_bytes = 0
        # Appends are the unit of spool rotation, so keep them well below a segment.
        self.out_chunk_bytes = max(1 << 16, min(8 << 20, segment_max_bytes // 4)) if spool else 1 << 62
        self.seq = 0
        self.visitors: list[_Visitor] = []
        self.n_identified = 0
        self.identified: set[str] = set()
        self.by_type = dict.fromkeys(CALL_TYPES, 0)
        self.malformed = dict.fromkeys((*DECODE_ERRORS, *VALIDATE_ERRORS), 0)
        self.n_malformed = 0
        self.err_kinds = tuple(_ERROR_WEIGHTS)
        self.err_cum = _cum(_ERROR_WEIGHTS.values())

        # Pools.
        self.ipv4 = [
            f"{rng.choice(_IPV4_FIRST)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            for _ in range(3000)
        ]
        self.ipv6 = [
            f"{rng.choice(_IPV6_PREFIXES)}:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
            for _ in range(600)
        ]
        self.locales = _LOCALES
        self.locale_cum = _cum(loc[3] for loc in _LOCALES)
        products: list[dict[str, Any]] = []
        for i, cat in enumerate(_CATEGORIES):
            for j, noun in enumerate(_NOUN[cat]):
                for k in range(2):
                    adj = _ADJ[(i * 7 + j * 3 + k * 5) % len(_ADJ)]
                    name = f"{adj} {noun}"
                    price = round(
                        rng.uniform(9, 60) if cat in ("accessories", "kids") else rng.uniform(25, 320), 2
                    )
                    pid = f"{100 + len(products):04d}"
                    products.append(
                        {
                            "product_id": pid,
                            "sku": f"{cat[:3].upper()}-{pid}",
                            "name": name,
                            "category": cat,
                            "price": price,
                            "slug": name.lower().replace(" ", "-") + f"-{pid}",
                        }
                    )
        self.products = products
        # Channels: (name, weight).
        self.channels = ("direct", "organic", "paid", "social", "email", "referral")
        self.channel_cum = _cum((30, 27, 11, 12, 8, 12))
        self.libs = {
            "web": {"name": "analytics.js", "version": "next-1.70.0"},
            "web_old": {"name": "analytics.js", "version": "4.1.0"},
            "ios": {"name": "analytics-ios", "version": "4.1.8"},
            "android": {"name": "analytics-android", "version": "4.11.3"},
        }
        self.big_text = "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 800

    # -- ids ----------------------------------------------------------------------------------

    def uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def ts_of(self, v: _Visitor) -> Callable[[int], str | int]:
        if v.ts_style == 0:
            return self.clock.iso
        if v.ts_style == 1:
            return lambda ms: self.clock.iso_offset(ms, v.offset_min)
        return lambda ms: ms

    def ts(self, ms: int, v: _Visitor) -> str | int:
        if v.ts_style == 0:
            return self.clock.iso(ms)
        if v.ts_style == 1:
            return self.clock.iso_offset(ms, v.offset_min)
        return ms

    # -- visitors -----------------------------------------------------------------------------

    def new_visitor(self, bot: bool) -> _Visitor:
        rng = self.rng
        v = _Visitor()
        v.anon = self.uuid()
        loc = _pick_weighted(rng, self.locales, self.locale_cum)
        locale, tz, offset = loc[0], loc[1], loc[2]
        if bot:
            ua, lib_name, lib_ver, prefixes = rng.choice(_BOTS)
            v.is_bot = True
            v.ua = ua
            v.ip = (
                f"{rng.choice(prefixes)}{rng.randint(1, 254)}"
                if prefixes[0].count(".") == 3
                else (f"{rng.choice(prefixes)}{rng.randint(0, 255)}.{rng.randint(1, 254)}")
            )
            v.library = {"name": lib_name, "version": lib_ver}
            v.ctx = {"ip": v.ip, "userAgent": ua, "locale": "en-US", "library": v.library}
            return v
        r = rng.random()
        v.ip = rng.choice(self.ipv6) if rng.random() < 0.12 else rng.choice(self.ipv4)
        if r < 0.09:
            v.platform = "ios"
            v.ua = rng.choice(_IOS_APP_UAS)
        elif r < 0.15:
            v.platform = "android"
            v.ua = rng.choice(_ANDROID_APP_UAS)
        elif r < 0.58:
            v.ua = rng.choice(_MOBILE_UAS)
        else:
            v.ua = rng.choice(_DESKTOP_UAS)
        if v.platform == "web":
            v.library = self.libs["web"] if rng.random() < 0.85 else self.libs["web_old"]
            v.ctx = {"ip": v.ip, "userAgent": v.ua, "locale": locale, "timezone": tz, "library": v.library}
        else:
            v.library = self.libs[v.platform]
            ios = v.platform == "ios"
            model = v.ua.split("(")[1].split(";")[0] if ios else v.ua.split("; ")[3].split(" Build")[0]
            os_ver = v.ua.split("iOS ")[1].split(";")[0] if ios else v.ua.split("Android ")[1].split(";")[0]
            app_ver = v.ua.split("/")[1].split(" ")[0] if ios else rng.choice(("3.4.1", "3.4.0", "3.3.2"))
            v.ctx = {
                "ip": v.ip,
                "userAgent": v.ua,
                "locale": locale,
                "timezone": tz,
                "library": v.library,
                "app": {
                    "name": "DemoShop",
                    "version": app_ver,
                    "build": str(300 + rng.randint(0, 40)),
                    "namespace": "com.example.demoshop",
                },
                "device": {
                    "id": self.uuid(),
                    "manufacturer": "Apple" if ios else rng.choice(("Google", "Samsung", "Motorola")),
                    "model": model,
                    "type": v.platform,
                },
                "os": {"name": "iOS" if ios else "Android", "version": os_ver},
                "network": {"wifi": rng.random() < 0.6, "cellular": rng.random() < 0.5},
                "screen": {"width": 390, "height": 844, "density": 3}
                if ios
                else {"width": 412, "height": 915, "density": 2.6},
            }
        if rng.random() < 0.08:  # device clock wrong by minutes to hours
            v.skew_ms = rng.choice((-1, 1)) * rng.randint(2, 180) * _MS_MIN + rng.randint(-30_000, 30_000)
        s = rng.random()
        if s < 0.03:
            v.ts_style = 2
        elif s < 0.13:
            v.ts_style = 1
            v.offset_min = offset
        if rng.random() < 0.35:
            v.identify_at = 0 if rng.random() < 0.8 else rng.randint(1, 2)
        return v

    def pick_visitor(self, t: int) -> _Visitor:
        rng = self.rng
        if rng.random() < self.bot_share:
            v = self.new_visitor(bot=True)
            self.m.visitors += 1
            return v
        if self.visitors and rng.random() < 0.45:
            for _ in range(4):
                v = rng.choice(self.visitors)
                if v.busy_until + _SESSION_GAP_MS < t:
                    if rng.random() < 0.15 and not v.ip.count(":"):
                        v.ip = rng.choice(self.ipv4)  # roamed to another network
                        v.ctx = {**v.ctx, "ip": v.ip}
                    return v
        v = self.new_visitor(bot=False)
        self.visitors.append(v)
        self.m.visitors += 1
        return v

    # -- sessions -----------------------------------------------------------------------------

    def landing(self) -> tuple[str, str, dict[str, str]]:
        """(referrer, query string, campaign context) for a session's first page."""
        rng = self.rng
        ch = _pick_weighted(rng, self.channels, self.channel_cum)
        utm: dict[str, str] = {}
        ref = ""
        if ch == "organic":
            ref = _pick_weighted(rng, _SEARCH_ENGINES, _SEARCH_CUM)
        elif ch == "paid":
            campaign = rng.choice(_CAMPAIGNS)
            term = rng.choice(_SEARCH_TERMS)
            if rng.random() < 0.8:
                ref = "https://www.google.com/"
                utm = {
                    "utm_source": "google",
                    "utm_medium": "cpc",
                    "utm_campaign": campaign,
                    "utm_term": term,
                    "gclid": f"Cj0KCQjw{rng.getrandbits(64):x}",
                }
            else:
                ref = "https://www.bing.com/"
                utm = {
                    "utm_source": "bing",
                    "utm_medium": "cpc",
                    "utm_campaign": campaign,
                    "utm_term": term,
                    "msclkid": f"{rng.getrandbits(128):032x}",
                }
        elif ch == "social":
            site = _pick_weighted(rng, _SOCIAL, _SOCIAL_CUM)
            ref = {
                "facebook": "https://l.facebook.com/",
                "twitter": "https://t.co/",
                "linkedin": "https://www.linkedin.com/",
                "instagram": "https://l.instagram.com/",
                "reddit": "https://www.reddit.com/",
            }[site]
            if site == "twitter":
                ref += f"{rng.getrandbits(40):x}"
            if rng.random() < 0.5:
                medium = rng.choice(("social", "paid_social"))
                utm = {"utm_source": site, "utm_medium": medium, "utm_campaign": rng.choice(_CAMPAIGNS)}
                if rng.random() < 0.5:
                    utm["utm_content"] = rng.choice(("carousel", "video_15s", "story", "post"))
            if site in ("facebook", "instagram") and rng.random() < 0.7:
                utm["fbclid"] = f"IwAR{rng.getrandbits(96):x}"
        elif ch == "email":
            ref = "https://mail.google.com/" if rng.random() < 0.2 else ""
            utm = {
                "utm_source": "newsletter",
                "utm_medium": "email",
                "utm_campaign": rng.choice(_CAMPAIGNS),
                "utm_content": rng.choice(("hero_button", "footer_link", "product_grid")),
            }
        elif ch == "referral":
            ref = rng.choice(
                (
                    "https://blog.example.org/best-outdoor-shops-2024",
                    "https://news.ycombinator.com/",
                    "https://www.outdoorgearlab.example/reviews/rain-jackets",
                    "https://de.wikipedia.org/wiki/Regenjacke",
                    "https://www.pinterest.com/",
                    "https://forum.example.net/t/which-backpack/1234",
                )
            )
            if rng.random() < 0.1:
                utm = {"utm_source": "partner_blog", "utm_medium": "affiliate", "utm_campaign": "affiliates"}
        query = "&".join(f"{k}={val.replace(' ', '+')}" for k, val in utm.items())
        camp: dict[str, str] = {}
        if utm and rng.random() < 0.5:
            for key, ck in (
                ("utm_campaign", "name"),
                ("utm_source", "source"),
                ("utm_medium", "medium"),
                ("utm_term", "term"),
                ("utm_content", "content"),
            ):
                if key in utm:
                    camp[ck] = utm[key]
        return ref, query, camp

    def session(self, v: _Visitor, t0: int) -> list[tuple[int, dict[str, Any]]]:
        """The events of one session in device-time order, as (true epoch ms, event) pairs."""
        rng = self.rng
        uuid = self.uuid
        out: list[tuple[int, dict[str, Any]]] = []
        limit = self.limit_ms
        anon = v.anon
        app = v.platform != "web"
        ctx_base = v.ctx
        if not v.is_bot and rng.random() < 0.3:
            ctx_base = {**ctx_base, "sessionId": t0}

        def base(typ: str) -> dict[str, Any]:
            ev: dict[str, Any] = {"type": typ, "messageId": uuid(), "anonymousId": anon}
            if v.user_id is not None:
                ev["userId"] = v.user_id
            return ev

        def track(t: int, name: str, props: dict[str, Any], ctx: dict[str, Any]) -> None:
            ev = base("track")
            ev["event"] = name
            ev["properties"] = props
            ev["context"] = ctx
            out.append((t, ev))

        if v.is_bot:
            n_pages = rng.randint(1, 15)
        else:
            n_pages = min(15, 1 + int(rng.expovariate(0.33))) if rng.random() > 0.38 else 1
        identify_page = -1
        if v.user_id is None and v.identify_at == v.n_sessions and not v.is_bot:
            identify_page = rng.randint(0, n_pages - 1)
        v.n_sessions += 1

        t = t0
        cart: list[dict[str, Any]] = []
        ref, query, camp = ("", "", {}) if (v.is_bot or app) else self.landing()
        kind = _pick_weighted(rng, _PAGE_KINDS, _LANDING_CUM)
        product: dict[str, Any] = rng.choice(self.products)
        prev_url = ref
        checkout: dict[str, Any] | None = None

        if v.user_id is not None and rng.random() < 0.15:
            ev = base("identify")
            ev["traits"] = {"plan": rng.choice(_PLANS), "logins": v.n_sessions}
            ev["context"] = ctx_base
            out.append((t, ev))
        if v.group is not None and rng.random() < 0.3:
            ev = base("group")
            ev["groupId"] = v.group
            ev["traits"] = {
                "name": f"Org {v.group[4:]}",
                "industry": rng.choice(_INDUSTRIES),
                "employees": rng.choice((5, 12, 40, 150, 900)),
            }
            ev["context"] = ctx_base
            out.append((t + 50, ev))

        for p in range(n_pages):
            if t > limit:
                break
            # Where we are.
            search = ""
            props_extra: dict[str, Any] | None = None
            if kind == "home":
                path, title, name = "/", "Demo Shop - Outdoor clothing and gear", "Home"
            elif kind == "category":
                cat = product["category"]
                path, title, name = f"/c/{cat}", f"{cat.title()} | Demo Shop", "Category"
            elif kind == "product":
                path, title, name = f"/p/{product['slug']}", f"{product['name']} | Demo Shop", "Product"
            elif kind == "search":
                term = rng.choice(_SEARCH_TERMS)
                path, title, name = "/search", f"Search: {term} | Demo Shop", "Search Results"
                search = "?q=" + term.replace(" ", "+")
                props_extra = {"query": term}
            elif kind == "blog":
                slug = rng.choice(_BLOG)
                path, title, name = (
                    f"/blog/{slug}",
                    f"{slug.replace('-', ' ').capitalize()} | Demo Shop Journal",
                    "Blog Post",
                )
            elif kind == "cart":
                path, title, name = "/cart", "Your cart | Demo Shop", "Cart"
            elif kind == "checkout":
                path, title, name = "/checkout", "Checkout | Demo Shop", "Checkout"
            else:  # confirmation
                path, title, name = "/checkout/confirmation", "Thank you | Demo Shop", "Order Confirmation"
            if p == 0 and query:
                search = f"{search}&{query}" if search else f"?{query}"
            url = SITE + path + search

            if app:
                ctx = ctx_base
                ev = base("screen")
                ev["name"] = name
                sprops: dict[str, Any] = {"name": name}
                if kind == "product":
                    sprops["product_id"] = product["product_id"]
                ev["properties"] = sprops
                ev["context"] = ctx
                out.append((t, ev))
            else:
                page = {"path": path, "referrer": prev_url, "search": search, "title": title, "url": url}
                ctx = {**ctx_base, "page": page}
                if p == 0 and camp:
                    ctx["campaign"] = camp
                ev = base("page")
                ev["name"] = name
                ev["properties"] = page
                ev["context"] = ctx
                out.append((t, ev))
            if v.is_bot:
                prev_url = url
                t += rng.randint(300, 6000)
                kind = rng.choice(("home", "product", "category", "blog", "search"))
                product = rng.choice(self.products)
                continue

            dwell = min(600_000, int(rng.lognormvariate(10.2, 1.0)))  # median ~27 s
            te = t + 300 + int(rng.random() * 2200)
            # What happens on the page.
            if kind == "search" and props_extra is not None:
                track(te, "Products Searched", props_extra, ctx)
            elif kind == "product":
                pprops = {k: product[k] for k in ("product_id", "sku", "name", "category", "price")}
                pprops["currency"] = "EUR"
                track(te, "Product Viewed", pprops, ctx)
                if rng.random() < 0.28:
                    qty = 1 if rng.random() < 0.85 else rng.randint(2, 3)
                    added = {**pprops, "quantity": qty, "cart_id": anon[:8]}
                    cart.append(added)
                    track(te + min(dwell, rng.randint(4000, 60000)), "Product Added", added, ctx)
            elif kind == "checkout" and cart:
                products = [
                    {k: c[k] for k in ("product_id", "sku", "name", "category", "price", "quantity")}
                    for c in cart
                ]
                value = round(sum(c["price"] * c["quantity"] for c in cart), 2)
                checkout = {
                    "order_id": f"ord_{rng.getrandbits(40):010x}",
                    "value": value,
                    "revenue": value,
                    "currency": "EUR",
                    "products": products,
                }
                track(te, "Checkout Started", checkout, ctx)
            elif kind == "confirmation" and checkout is not None:
                shipping = 0.0 if checkout["value"] >= 75 else 4.95
                tax = round(checkout["value"] * 0.19 / 1.19, 2)
                order = {
                    "order_id": checkout["order_id"],
                    "checkout_id": checkout["order_id"].replace("ord", "chk"),
                    "total": round(checkout["value"] + shipping, 2),
                    "revenue": checkout["value"],
                    "shipping": shipping,
                    "tax": tax,
                    "currency": "EUR",
                    "products": checkout["products"],
                }
                if rng.random() < 0.2:
                    order["coupon"] = rng.choice(("WELCOME10", "SPRING15", "VIP20"))
                    order["discount"] = round(checkout["value"] * 0.1, 2)
                track(te, "Order Completed", order, ctx)
                cart = []
                checkout = None
            if p == identify_page:
                self.n_identified += 1
                uid: str | int = (
                    (100_000 + self.n_identified)
                    if rng.random() < 0.1
                    else f"user_{10_000 + self.n_identified}"
                )
                first, last = rng.choice(_FIRST), rng.choice(_LAST)
                signup = rng.random() < 0.5
                track(
                    te + 1000,
                    "Signed Up" if signup else "Signed In",
                    {"method": rng.choice(("email", "google", "apple"))},
                    ctx,
                )
                v.user_id = uid
                ev = base("identify")
                ev["traits"] = {
                    "email": f"{first}.{last}{self.n_identified}@example.com",
                    "name": f"{first.title()} {last.title()}",
                    "firstName": first.title(),
                    "lastName": last.title(),
                    "plan": rng.choice(_PLANS),
                }
                if signup:
                    ev["traits"]["createdAt"] = self.clock.iso(te)
                ev["context"] = ctx
                out.append((te + 1500, ev))
                if rng.random() < 0.25:
                    ev = base("alias")
                    ev["previousId"] = anon
                    ev["context"] = ctx
                    out.append((te + 1600, ev))
                if rng.random() < 0.2:
                    v.group = f"org_{rng.randint(100, 999)}"
                    ev = base("group")
                    ev["groupId"] = v.group
                    ev["traits"] = {
                        "name": f"Org {v.group[4:]}",
                        "industry": rng.choice(_INDUSTRIES),
                        "employees": rng.choice((5, 12, 40, 150, 900)),
                    }
                    ev["context"] = ctx
                    out.append((te + 1700, ev))
            if not app:
                n_pings = min(30, dwell // 10_000)
                heartbeat = {"heartbeat": 10}
                user_id = v.user_id
                for i in range(1, n_pings + 1):
                    ev = {"type": "track", "messageId": uuid(), "anonymousId": anon}
                    if user_id is not None:
                        ev["userId"] = user_id
                    ev["event"] = "Page Ping"
                    ev["properties"] = heartbeat
                    ev["context"] = ctx
                    out.append((t + i * 10_000, ev))

            # Where next.
            if cart and kind not in ("cart", "checkout") and rng.random() < 0.4:
                nxt = "cart"
            elif kind == "cart":
                nxt = "checkout" if rng.random() < 0.55 else "product"
            elif kind == "checkout":
                nxt = "confirmation" if (checkout is not None and rng.random() < 0.6) else "cart"
            else:
                nxt = _pick_weighted(rng, _PAGE_KINDS, _NEXT_CUM)
            if nxt == "product":
                product = (
                    rng.choice(self.products)
                    if rng.random() < 0.6
                    else rng.choice([pr for pr in self.products if pr["category"] == product["category"]])
                )
            if not app and p + 1 < n_pages and rng.random() < 0.3:
                track(
                    t + max(500, dwell - 800),
                    "Link Clicked",
                    {
                        "url": SITE
                        + {
                            "cart": "/cart",
                            "checkout": "/checkout",
                            "confirmation": "/checkout/confirmation",
                            "home": "/",
                            "category": f"/c/{product['category']}",
                            "search": "/search",
                            "blog": "/blog",
                            "product": f"/p/{product['slug']}",
                        }[nxt],
                        "text": rng.choice(_LINK_TEXTS),
                        "location": rng.choice(("header", "body", "footer")),
                    },
                    ctx,
                )
            prev_url = url
            kind = nxt
            t += dwell + 400 + int(rng.random() * 3600)

        out.sort(key=itemgetter(0))
        while out and out[-1][0] > limit:
            out.pop()
        v.busy_until = max(v.busy_until, out[-1][0] if out else t0)
        return out

    # -- packing events into lines -------------------------------------------------------------

    def pick_error(self) -> str:
        if self.n_malformed < len(self.err_kinds):  # every kind appears as early as possible
            kind = self.err_kinds[self.n_malformed]
        else:
            kind = _pick_weighted(self.rng, self.err_kinds, self.err_cum)
        self.n_malformed += 1
        return kind

    def push(self, rt: int, line: bytes) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (rt, self.seq, line))
        self.m.lines += 1

    def encode(self, payload: dict[str, Any] | list[Any], rt: int, v: _Visitor) -> bytes:
        if self.spool:
            return encode_line(
                orjson.dumps(payload), app_id=self.app_id, received_ms=rt, ip=v.ip, user_agent=v.ua
            )
        return orjson.dumps(payload) + b"\n"

    def fail(self, kind: str) -> None:
        self.malformed[kind] += 1

    def pack(self, items: list[tuple[int, dict[str, Any]]], v: _Visitor) -> None:
        rng = self.rng
        n = len(items)
        i = 0
        while i < n and self.remaining > 0:
            k = 2 + int(rng.random() * 19) if rng.random() < self.batch_share else 1
            k = min(k, n - i, self.remaining)
            chunk = items[i : i + k]
            i += k
            self.remaining -= k
            line: list[tuple[int, dict[str, Any], str | None]] = []
            for t, ev in chunk:
                if rng.random() < self.mal_share:
                    kind = self.pick_error()
                    if kind in _SOLO_ERRORS:
                        self.solo_defect(kind, t, ev, v)
                        continue
                    self.corrupt(kind, ev)
                    line.append((t, ev, kind))
                else:
                    line.append((t, ev, None))
            if line:
                self.emit(line, v)
            if self.remaining <= self.events - self.next_progress:
                if self.progress is not None:
                    self.progress(self.events - self.remaining)
                self.next_progress += _PROGRESS_EVERY

    def corrupt(self, kind: str, ev: dict[str, Any]) -> None:
        """Give ``ev`` exactly one validation defect (top-level keys only: nested objects are shared)."""
        rng = self.rng
        self.fail(kind)
        if kind == "missing_field":
            if ev["type"] == "track" and rng.random() < 0.5:
                del ev["event"]
            else:
                ev.pop("userId", None)
                ev.pop("anonymousId", None)
        elif kind == "invalid_type":
            ev["type"] = "bogus"
        elif kind == "wrong_type":
            if "properties" in ev and rng.random() < 0.7:
                ev["properties"] = rng.choice(("oops", ["not", "an", "object"]))
            else:
                ev["userId"] = {"id": ev.get("userId", "user_1")}
        elif kind == "invalid_message_id":
            ev["messageId"] = ""
        # invalid_timestamp is applied in emit(), which sets the timestamps.

    def times(self, t_last: int, batch: bool) -> tuple[int, int]:
        """(true send time, receive time) for a line whose last event happened at ``t_last``."""
        rnd = self.rng.random
        send = t_last + int(rnd() * (10_000 if batch else 250))
        latency = 30 + int(rnd() * 870) if rnd() < 0.97 else 900 + int(rnd() * 14_100)
        return send, min(send + latency, self.end_ms)

    def emit(self, line: list[tuple[int, dict[str, Any], str | None]], v: _Visitor) -> None:
        rng = self.rng
        clock = self.clock
        is_batch = len(line) > 1 or (rng.random() < 0.05 and v.platform != "web")
        send, rt = self.times(line[-1][0], is_batch)
        late = False
        if rng.random() < self.late_share and self.end_ms - rt > 2 * _MS_HOUR + 10_000:
            delay = rng.randint(_MS_HOUR, min(36 * _MS_HOUR, self.end_ms - rt - 10_000))
            send += delay
            rt += delay
            late = True
        skew = v.skew_ms
        sent_at = clock.iso(send + skew)
        received_at = None if self.spool else clock.iso(rt)
        n_ok = 0
        types: list[str] = []
        fmt_ts = clock.iso if v.ts_style == 0 else self.ts_of(v)
        for t, ev, kind in line:
            if kind == "invalid_timestamp":
                ev["timestamp"] = rng.choice(
                    ("not-a-date", "2024-13-45T99:00:00Z", "yesterday", "31/12/2024 10:00")
                )
            else:
                ev["timestamp"] = fmt_ts(t + skew)
            ev["sentAt"] = sent_at
            if received_at is not None:
                ev["receivedAt"] = received_at
                ev["writeKey"] = self.wk
            if kind is None:
                n_ok += 1
                types.append(ev["type"])
                if ev["type"] == "identify":
                    self.identified.add(str(ev["userId"]))
        if is_batch:
            payload: dict[str, Any] = {
                "batch": [x[1] for x in line],
                "sentAt": sent_at,
                "context": {"library": v.library},
            }
            if not self.spool:
                payload["writeKey"] = self.wk
            data = self.encode(payload, rt, v)
        else:
            data = self.encode(line[0][1], rt, v)
        self.push(rt, data)
        copies = 1
        if (
            n_ok == len(line)
            and rng.random() < self.retry_share
            and self.remaining >= n_ok
            and rt + 125_000 <= self.end_ms
        ):
            rt2 = rt + rng.randint(1_000, 120_000)
            if self.spool:
                body = data[data.index(b',"p":') + 5 : -2]
                data2 = encode_line(body, app_id=self.app_id, received_ms=rt2, ip=v.ip, user_agent=v.ua)
            else:
                data2 = data
            self.push(rt2, data2)
            self.remaining -= n_ok
            self.m.retried += n_ok
            copies = 2
        if n_ok:
            m = self.m
            m.valid_unique += n_ok
            m.expected_events_rows += n_ok * copies
            for typ in types:
                self.by_type[typ] += copies
            if v.is_bot:
                m.bots += n_ok * copies
            if late:
                m.late += n_ok * copies

    def solo_defect(self, kind: str, t: int, ev: dict[str, Any], v: _Visitor) -> None:
        """A line of its own holding ``ev`` with a whole-line (or sentAt-less) defect: one failed row."""
        rng = self.rng
        clock = self.clock
        self.fail(kind)
        send, rt = self.times(t, False)
        skew = v.skew_ms
        ev["timestamp"] = self.ts(t + skew, v)
        ev["sentAt"] = clock.iso(send + skew)
        if not self.spool:
            ev["receivedAt"] = clock.iso(rt)
            ev["writeKey"] = self.wk
        if kind == "invalid_json":
            full = self.encode(ev, rt, v)
            cut = rng.randint(len(full) // 3, len(full) - 3)
            # Mostly truncated (a cut connection), sometimes garbled in the middle.
            data = full[:cut] if rng.random() < 0.7 else full[:cut] + b',,"\x00garbled' + full[cut:-1]
            self.seq += 1
            heapq.heappush(self.heap, (rt, self.seq, data.rstrip(b"\n") + b"\n"))
            self.m.lines += 1
            return
        if kind == "invalid_envelope":
            payload: Any
            if rng.random() < 0.5:
                payload = [ev]
            else:
                payload = {"batch": "oops", "sentAt": ev["sentAt"]}
                if not self.spool:
                    payload["writeKey"] = self.wk
            self.push(rt, self.encode(payload, rt, v))
            return
        if kind == "event_too_large":
            props = ev.get("properties")
            ev["properties"] = {
                **(props if isinstance(props, dict) else {}),
                "html_snapshot": self.big_text[: 36_000 + rng.randint(0, 20_000)],
            }
            self.push(rt, self.encode(ev, rt, v))
            return
        if kind == "batch_too_large":
            events = []
            n_big = 24
            for j in range(n_big):
                e = {k: val for k, val in ev.items() if k not in ("messageId", "properties")}
                e["messageId"] = self.uuid()
                e["properties"] = {"note": self.big_text[: 22_000 + j]}
                events.append(e)
            payload = {"batch": events, "sentAt": ev["sentAt"], "context": {"library": v.library}}
            if not self.spool:
                payload["writeKey"] = self.wk
            self.push(rt, self.encode(payload, rt, v))
            return
        # timestamp_out_of_range: no sentAt, so no skew correction can bring it back.
        del ev["sentAt"]
        if rng.random() < 0.5:
            ev["timestamp"] = clock.iso(rt - (3 * 365 + 7) * _MS_DAY)
        else:
            ev["timestamp"] = clock.iso(rt + 5 * _MS_DAY)
        self.push(rt, self.encode(ev, rt, v))

    # -- main loop ----------------------------------------------------------------------------

    def weight(self, t: int) -> float:
        day, rem = divmod(t, _MS_DAY)
        return _HOURLY[rem // _MS_HOUR] * _WEEKDAY[(day + 3) % 7]  # 1970-01-01 was a Thursday

    def flush(self, upto: int | None) -> None:
        """Hand every pending line received up to ``upto`` (all when None) to the sink, in order.

        Spool appends fsync, so lines are held back until a few thousand are ready.
        """
        heap = self.heap
        pop = heapq.heappop
        buf = self.out_buf
        while heap and (upto is None or heap[0][0] <= upto):
            rt, _, line = pop(heap)
            if not buf:
                self.out_rt = rt
            buf.append(line)
            self.out_bytes += len(line)
            if len(buf) >= self.out_chunk or self.out_bytes >= self.out_chunk_bytes:
                self.sink.write(self.out_rt, buf)
                buf.clear()
                self.out_bytes = 0
        if buf and (upto is None or not self.spool):
            self.sink.write(self.out_rt, buf)
            buf.clear()
            self.out_bytes = 0

    def run(self) -> None:
        rng = self.rng
        mean_w = sum(_HOURLY) / 24 * sum(_WEEKDAY) / 7
        last_start = max(self.start_ms, self.end_ms - 30 * _MS_MIN)
        t = float(self.start_ms)
        per_session = 14.0
        produced = 0
        sessions = 0
        while self.remaining > 0:
            # Thinned Poisson arrivals, with the rate re-aimed so the event budget ends near `end`.
            while True:
                left = max(last_start - t, 60_000.0)
                rate = self.remaining / (per_session * left * mean_w)
                t += rng.expovariate(rate)
                if t >= last_start or rng.random() < self.weight(int(t)):
                    break
            t = min(t, float(last_start))
            start = int(t)
            self.flush(start)
            v = self.pick_visitor(start)
            before = self.remaining
            self.pack(self.session(v, start), v)
            sessions += 1
            produced += before - self.remaining
            per_session = max(1.0, produced / sessions)
        self.flush(None)
        self.m.sessions = sessions


def generate(
    out: Path,
    *,
    events: int,
    days: int = 7,
    seed: int = 42,
    fmt: Literal["spool", "ndjson"] = "ndjson",
    gzip: bool = False,
    malformed_share: float = 0.02,
    retry_share: float = 0.01,
    batch_share: float = 0.2,
    bot_share: float = 0.03,
    late_share: float = 0.02,
    app_id: str = "demo-shop",
    write_key: str = "wk_demo",
    end: datetime | None = None,
    files: int = 1,
    segment_max_bytes: int = 64 * 1024 * 1024,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Write a synthetic Segment clickstream and return exact counts of what was written.

    Output is streamed in receive order and is byte-identical for the same arguments (``end``
    included; it defaults to now, rounded down to the second).

    Args:
        out: Output directory: NDJSON files ``events-0001.ndjson[.gz]`` or, with ``fmt="spool"``,
            the spool directory whose segments receive collector envelopes.
        events: Events to produce, counting malformed ones and retried copies (a whole-line
            decode failure counts as one).
        days: Days of traffic ending at ``end``.
        seed: Seed of the random generator.
        fmt: ``"ndjson"`` (Segment calls and batches, with ``writeKey`` and ``receivedAt``) or
            ``"spool"`` (collector envelopes, see :mod:`clicklake.events.envelope`).
        gzip: Gzip the NDJSON files (ignored for the spool).
        malformed_share: Share of events with exactly one defect.
        retry_share: Share of lines sent twice by the client (same bytes, same messageIds).
        batch_share: Share of lines that are ``{"batch": [...]}`` envelopes of 2-20 events.
        bot_share: Share of sessions from crawlers and scripts.
        late_share: Share of lines delivered hours after their events happened (offline devices).
        app_id: App id written into spool envelopes.
        write_key: Write key carried by NDJSON lines.
        end: End of the traffic window (UTC; naive datetimes are taken as UTC).
        files: Number of NDJSON files, split evenly by receive time.
        segment_max_bytes: Spool segment size before rotation.
        progress: Called with the number of events produced so far, every few thousand events.

    Returns:
        The manifest of exact counts.

    Raises:
        ValueError: An argument is out of range.
    """
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    if days <= 0:
        raise ValueError(f"days must be > 0, got {days}")
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    if fmt not in ("ndjson", "spool"):
        raise ValueError(f"fmt must be 'ndjson' or 'spool', got {fmt!r}")
    for name, share in (
        ("malformed_share", malformed_share),
        ("retry_share", retry_share),
        ("batch_share", batch_share),
        ("bot_share", bot_share),
        ("late_share", late_share),
    ):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {share}")
    if end is None:
        end = datetime.now(UTC).replace(microsecond=0)
    elif end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    end_ms = int(end.timestamp() * 1000)
    start_ms = end_ms - days * _MS_DAY
    spool = fmt == "spool"
    sink: _Sink = (
        _SpoolSink(out, segment_max_bytes) if spool else _NdjsonSink(out, files, gzip, start_ms, end_ms)
    )
    manifest = Manifest(seed=seed, format=fmt, app_id=app_id, write_key=write_key)
    gen = _Generator(
        sink=sink,
        spool=spool,
        events=events,
        seed=seed,
        start_ms=start_ms,
        end_ms=end_ms,
        malformed_share=malformed_share,
        retry_share=retry_share,
        batch_share=batch_share,
        bot_share=bot_share,
        late_share=late_share,
        app_id=app_id,
        write_key=write_key,
        manifest=manifest,
        progress=progress,
        segment_max_bytes=segment_max_bytes,
    )
    try:
        gen.run()
    finally:
        manifest.files = sink.close()
    manifest.events_total = events - gen.remaining
    manifest.malformed = gen.malformed
    manifest.expected_failed_rows = sum(gen.malformed.values())
    manifest.by_type = gen.by_type
    manifest.identified_users = len(gen.identified)
    manifest.start = gen.clock.iso(start_ms)
    manifest.end = gen.clock.iso(end_ms)
    if progress is not None:
        progress(manifest.events_total)
    return manifest
