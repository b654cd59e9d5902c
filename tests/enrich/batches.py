"""Build small event batches for the enrichment tests."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from clicklake.events.schema import EVENTS_ARROW

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
PYTHON_REQUESTS = "python-requests/2.31.0"
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36"
)


def make_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """An ``EVENTS_ARROW`` batch; columns a row does not set are null."""
    columns = {f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in EVENTS_ARROW}
    return pa.RecordBatch.from_pydict(columns, schema=EVENTS_ARROW)


def new_columns(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The rows of ``batch`` restricted to the columns appended after ``EVENTS_ARROW``."""
    return batch.select(batch.schema.names[len(EVENTS_ARROW) :]).to_pylist()
