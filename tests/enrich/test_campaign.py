"""Golden tests of the ``campaign`` step and GA4's default channel group."""

from __future__ import annotations

import pytest

from clicklake.config import Settings
from clicklake.enrich import campaign, kernels, referrer, url
from tests.enrich.batches import make_batch

SITE = "https://shop.example/p"


def _enrich(settings: Settings, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    batch = make_batch(rows)
    for module in (url, referrer, campaign):
        batch = module.build(settings)(batch)
    return batch.select([c.name for c in campaign.COLUMNS]).to_pylist()


def test_utm_parameters_win_over_context(settings: Settings) -> None:
    ctx = '{"campaign": {"source": "ctx", "medium": "ctx", "name": "ctx"}}'
    rows = _enrich(
        settings,
        [
            {
                "page_url": SITE + "?utm_source=Newsletter&utm_medium=email&utm_campaign=spring"
                "&utm_term=shoes&utm_content=hero&gclid=G1",
                "context": ctx,
            },
            {"page_url": SITE + "?a=1", "context": ctx.replace('"ctx"}', '"ctx", "term": 7}')},
            {"page_url": SITE, "context": '{"campaign": "oops"}'},
            {"page_url": SITE, "context": "{not json"},
        ],
    )
    assert rows[0] == {
        "mkt_source": "Newsletter",
        "mkt_medium": "email",
        "mkt_campaign": "spring",
        "mkt_term": "shoes",
        "mkt_content": "hero",
        "mkt_clickid": "G1",
        "mkt_network": "Google",
        "default_channel_group": "Email",
    }
    assert (rows[1]["mkt_source"], rows[1]["mkt_campaign"], rows[1]["mkt_term"]) == ("ctx", "ctx", "7")
    assert rows[2]["mkt_source"] is None and rows[3]["mkt_source"] is None


@pytest.mark.parametrize(
    ("param", "network"),
    [
        ("gclid", "Google"),
        ("msclkid", "Microsoft"),
        ("fbclid", "Facebook"),
        ("dclid", "DoubleClick"),
        ("ttclid", "TikTok"),
    ],
)
def test_click_ids(settings: Settings, param: str, network: str) -> None:
    (row,) = _enrich(settings, [{"page_url": f"{SITE}?{param}=ID42"}])
    assert (row["mkt_clickid"], row["mkt_network"]) == ("ID42", network)


# (query string on the page URL, referrer, expected channel group)
CHANNELS = [
    ("", None, "Direct"),
    ("", "https://shop.example/other", "Direct"),  # internal referrer
    ("?utm_source=google&utm_medium=cpc&utm_campaign=Cross-Network%20pmax", None, "Cross-network"),
    ("?utm_source=google&utm_medium=cpc&utm_campaign=shopping_q3", None, "Paid Shopping"),
    ("?utm_source=amazon&utm_medium=ppc", None, "Paid Shopping"),
    ("?utm_source=google&utm_medium=cpc", None, "Paid Search"),
    ("?gclid=abc", None, "Paid Search"),  # auto-tagging: google / cpc
    ("?msclkid=abc", "https://www.bing.com/", "Paid Search"),
    ("?utm_source=facebook&utm_medium=cpc", "https://l.facebook.com/", "Paid Social"),
    ("?ttclid=abc", None, "Paid Social"),
    ("?utm_source=youtube&utm_medium=paid_video", None, "Paid Video"),
    ("?utm_source=partner&utm_medium=banner", None, "Display"),
    ("?dclid=abc", None, "Display"),
    ("?utm_source=newsite&utm_medium=cpc", None, "Paid Other"),
    ("?utm_source=etsy&utm_medium=referral", None, "Organic Shopping"),
    ("", "https://t.co/xyz", "Organic Social"),
    ("?fbclid=abc", "https://l.facebook.com/", "Organic Social"),  # fbclid alone is not paid
    ("?utm_source=newsletter&utm_medium=social", None, "Organic Social"),
    ("", "https://www.youtube.com/watch?v=1", "Organic Video"),
    ("", "https://www.google.com/", "Organic Search"),
    ("?utm_source=whatever&utm_medium=organic", None, "Organic Search"),
    ("", "https://mail.google.com/", "Email"),
    ("?utm_source=newsletter&utm_medium=email", None, "Email"),
    ("?utm_source=partner&utm_medium=affiliate", None, "Affiliates"),
    ("", "https://blog.example.org/post", "Referral"),
    ("?utm_source=spotify&utm_medium=audio", None, "Audio"),
    ("?utm_source=sms&utm_medium=text", None, "SMS"),
    ("?utm_source=app&utm_medium=web_push", None, "Mobile Push Notifications"),
    ("?utm_source=firebase", None, "Mobile Push Notifications"),
    ("?utm_campaign=spring", None, "Unassigned"),  # campaign only: no source, no medium
]


def test_channel_groups(settings: Settings) -> None:
    rows = _enrich(settings, [{"page_url": SITE + q, "page_referrer": r} for q, r, _ in CHANNELS])
    got = [(q, r, row["default_channel_group"]) for (q, r, _), row in zip(CHANNELS, rows, strict=True)]
    assert got == CHANNELS
    assert {c for *_, c in CHANNELS} == set(campaign.CHANNEL_GROUPS)


def test_runs_without_referrer_columns(settings: Settings) -> None:
    batch = make_batch([{"page_url": SITE, "page_referrer": "https://www.google.com/"}])
    out = campaign.build(settings)(batch)
    # Without the referrer step, the referrer is unknown to the campaign step.
    assert out.column("default_channel_group").to_pylist() == ["Direct"]


def test_the_same_with_and_without_the_compiled_kernel(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    contexts = [
        '{"campaign": {"source": "ctx", "medium": "email", "name": "c1"}}',
        '{"campaign": {"source": "Ctx", "medium": "cpc"}}',
        '{"page": {"title": "no campaign here"}}',
        '{"x": "campaign"}',  # the word, not the key
        "{not json",
        None,
    ]
    queries = ["", "?utm_source=news&utm_medium=email", "?gclid=G1", "?fbclid=F1", "?a=1"]
    referrers = [None, "https://www.google.com/search?q=x", "https://shop.example/other", "https://t.co/x"]
    rows = [
        {
            "page_url": None if i % 9 == 0 else SITE + queries[i % len(queries)],
            "page_referrer": referrers[i % len(referrers)],
            "context": contexts[i % len(contexts)],
        }
        for i in range(180)
    ]
    with_kernel = _enrich(settings, rows)
    monkeypatch.setattr(kernels, "_ckernels", None)
    assert _enrich(settings, rows) == with_kernel
    assert {r["mkt_source"] for r in with_kernel} >= {"ctx", "Ctx", "news", None}
