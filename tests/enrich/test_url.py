"""Golden tests of the ``url`` step."""

from __future__ import annotations

import pyarrow as pa

from clicklake.config import Settings
from clicklake.enrich import url
from clicklake.events.schema import EVENTS_ARROW
from tests.enrich.batches import make_batch, new_columns


def test_splits_page_and_referrer(settings: Settings) -> None:
    step = url.build(settings)
    batch = make_batch(
        [
            {
                "page_url": "HTTPS://Shop.Example.com/p/1?utm_source=x&a=b#reviews",
                "page_referrer": "http://www.google.com:8080/search?q=shoes",
            },
            {"page_url": "https://shop.example.com", "page_referrer": None},
        ]
    )
    out = step(batch)
    assert out.schema.names[len(EVENTS_ARROW) :] == [c.name for c in step.columns]
    assert out.schema.field("page_urlport").type == pa.int32()
    first, second = new_columns(out)
    assert first == {
        "page_urlscheme": "https",
        "page_urlhost": "shop.example.com",
        "page_urlport": 443,
        "page_urlpath": "/p/1",
        "page_urlquery": "utm_source=x&a=b",
        "page_urlfragment": "reviews",
        "refr_urlscheme": "http",
        "refr_urlhost": "www.google.com",
        "refr_urlport": 8080,
        "refr_urlpath": "/search",
        "refr_urlquery": "q=shoes",
        "refr_urlfragment": None,
    }
    assert second["page_urlpath"] == "/"
    assert second["page_urlport"] == 443
    assert all(
        second[f"refr_url{p}"] is None for p in ("scheme", "host", "port", "path", "query", "fragment")
    )


def test_malformed_and_hostless_urls_never_raise() -> None:
    assert url.split_url("http://example.com:99999/") == (None,) * 6  # port out of range
    assert url.split_url("http://[::1/") == (None,) * 6  # broken IPv6 literal
    # No host: no default port, no '/' path.
    assert url.split_url("mailto:someone@example.com") == (
        "mailto",
        None,
        None,
        "someone@example.com",
        None,
        None,
    )
    assert url.split_url("") == (None,) * 6
    assert url.split_url("ftp://files.example.com/a")[2] is None  # no default port for ftp
