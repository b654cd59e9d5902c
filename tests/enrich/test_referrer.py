"""Golden tests of the ``referrer`` step."""

from __future__ import annotations

import pytest

from clicklake.config import Settings, load_settings
from clicklake.enrich import referrer
from tests.enrich.batches import make_batch

PAGE = "https://www.shop.example/landing"

# (referrer, refr_medium, refr_source, refr_term)
CASES = [
    ("https://www.google.com/search?q=red+shoes&hl=en", "search", "Google", "red shoes"),
    ("https://www.google.co.uk/", "search", "Google", None),
    ("https://www.bing.com/search?q=caf%C3%A9+paris", "search", "Bing", "café paris"),
    ("https://duckduckgo.com/?q=privacy", "search", "DuckDuckGo", "privacy"),
    ("https://yandex.ru/search/?text=shoes", "search", "Yandex", "shoes"),
    ("https://l.facebook.com/l.php?u=x", "social", "Facebook", None),
    ("https://t.co/abc123", "social", "Twitter", None),
    ("https://www.linkedin.com/feed/", "social", "LinkedIn", None),
    ("https://mail.google.com/mail/u/0/", "email", "Gmail", None),
    ("https://outlook.live.com/mail/0/inbox", "email", "Outlook.com", None),
    ("https://www.googleadservices.com/pagead/aclk?sa=L", "paid", "Google", None),
    ("https://shop.example/cart", "internal", None, None),  # same host, www. ignored
    ("https://blog.partner.example/post?q=x", "unknown", None, None),
    ("not a url", "unknown", None, None),
    (None, None, None, None),
    ("", None, None, None),
]


def test_known_referrers(settings: Settings) -> None:
    step = referrer.build(settings)
    out = step(make_batch([{"page_url": PAGE, "page_referrer": r} for r, *_ in CASES]))
    got = list(
        zip(*(out.column(n).to_pylist() for n in ("refr_medium", "refr_source", "refr_term")), strict=True)
    )
    assert got == [tuple(c[1:]) for c in CASES]


@pytest.mark.parametrize(
    ("ref", "medium"),
    [
        ("https://help.shop.example/faq", "internal"),  # subdomain of an internal domain
        ("https://checkout.paybox.example/", "internal"),
        ("https://paybox.example.evil.com/", "unknown"),  # not a subdomain
    ],
)
def test_internal_domains(ref: str, medium: str) -> None:
    s = load_settings(
        environ={}, enrich={"referrer": {"internal_domains": ["shop.example", "www.paybox.example"]}}
    )
    out = referrer.build(s)(make_batch([{"page_url": "https://other.example/", "page_referrer": ref}]))
    assert out.column("refr_medium").to_pylist() == [medium]


def test_lookup_prefers_the_longest_host() -> None:
    index = referrer.default_index()
    assert index.lookup("mail.google.com") == referrer.Referer("email", "Gmail")
    found = index.lookup("images.google.com.br")
    assert found is not None and found.source == "Google"
    assert index.lookup("googleusercontent.example") is None
