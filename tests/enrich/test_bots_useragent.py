"""Golden tests of the ``bots`` and ``useragent`` steps, on well-known user agents."""

from __future__ import annotations

import pyarrow as pa
import pytest

from clicklake.config import Settings
from clicklake.enrich import bots, useragent
from tests.enrich.batches import (
    ANDROID_PHONE,
    ANDROID_TABLET,
    BINGBOT,
    CHROME_WINDOWS,
    GOOGLEBOT,
    HEADLESS_CHROME,
    IPAD,
    IPHONE_SAFARI,
    MAC_SAFARI,
    PYTHON_REQUESTS,
    make_batch,
)

# (user agent, is_bot, bot_reason, br_family, br_version, os_family, os_version, dvce_family, dvce_class)
CASES = [
    (CHROME_WINDOWS, False, None, "Chrome", "124.0.0", "Windows", "10", None, "desktop"),
    (MAC_SAFARI, False, None, "Safari", "17.4", "Mac OS X", "10.15.7", "Mac", "desktop"),
    (IPHONE_SAFARI, False, None, "Mobile Safari", "17.4", "iOS", "17.4", "iPhone", "mobile"),
    (IPAD, False, None, "Mobile Safari", "17.4", "iOS", "17.4", "iPad", "tablet"),
    (ANDROID_PHONE, False, None, "Chrome Mobile", "124.0.0", "Android", "14", "Pixel 8", "mobile"),
    (ANDROID_TABLET, False, None, "Chrome", "124.0.0", "Android", "13", "SM-X700", "tablet"),
    (GOOGLEBOT, True, "ua_list:googlebot", "Googlebot", "2.1", None, None, "Spider", "bot"),
    (BINGBOT, True, "ua_list:bingbot", "bingbot", "2.0", None, None, "Spider", "bot"),
    (PYTHON_REQUESTS, True, "ua_list:python-requests", "Python Requests", "2.31", None, None, None, "bot"),
    (
        HEADLESS_CHROME,
        True,
        "ua_list:headlesschrome",
        "HeadlessChrome",
        "120.0.0",
        "Linux",
        None,
        None,
        "bot",
    ),
]


@pytest.fixture
def enriched(settings: Settings) -> list[dict[str, object]]:
    batch = make_batch([{"user_agent": c[0]} for c in CASES] + [{"user_agent": None}, {"user_agent": "  "}])
    out = useragent.build(settings)(bots.build(settings)(batch))
    assert out.schema.field("is_bot").type == pa.bool_()
    names = ["is_bot", "bot_reason", *(c.name for c in useragent.COLUMNS)]
    return out.select(names).to_pylist()


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c[8] + ":" + c[0][:40] for c in CASES])
def test_known_user_agents(enriched: list[dict[str, object]], i: int) -> None:
    expected = CASES[i][1:]
    assert tuple(enriched[i].values()) == expected


def test_missing_or_empty_user_agent_is_not_a_bot(enriched: list[dict[str, object]]) -> None:
    for row in enriched[-2:]:
        assert row["is_bot"] is False
        assert row["bot_reason"] is None
        assert row["dvce_class"] == "other"
        assert row["br_family"] is None


def test_generic_patterns_catch_what_the_list_misses() -> None:
    assert bots.classify("AcmeInternalSpider/1.0") == (True, "ua_pattern:spider")
    assert bots.classify("MyCompanyBot/0.1 (+https://example.com)")[0] is True
    # A phone brand containing "bot" is not a bot.
    assert bots.classify("Mozilla/5.0 (Linux; Android 12; CUBOT X50) AppleWebKit/537.36 Mobile") == (
        False,
        None,
    )


def test_bots_flag_makes_class_bot(settings: Settings) -> None:
    batch = make_batch([{"user_agent": CHROME_WINDOWS}])
    flagged = batch.append_column("is_bot", pa.array([True]))
    out = useragent.build(settings)(flagged)
    assert out.column("dvce_class").to_pylist() == ["bot"]


def test_crawler_list_prefilter_agrees_with_every_regex() -> None:
    """Each pattern of the list compiles (they are compiled when first needed), and the
    literal test before each regex changes no verdict: for every pattern's own example user
    agents, the first matching pattern is the one a plain regex scan finds."""
    import json
    import re
    from importlib import resources

    data = json.loads(resources.files("crawleruseragents").joinpath("crawler-user-agents.json").read_text())
    listed = bots._crawler_list()
    assert [p for _, p in listed] == [e["pattern"] for e in data]
    compiled = [re.compile(e["pattern"]) for e in data]
    samples = [ua for e in data for ua in e.get("instances", [])][:3000]
    assert len(samples) > 500
    for ua in samples:
        if not ua.strip():
            continue
        plain = next((m for c in compiled if (m := c.search(ua)) is not None), None)
        verdict = bots.classify(ua)
        if plain is None:
            assert not verdict[1] or verdict[1].startswith("ua_pattern:"), ua
        else:
            name = bots._REASON_TRIM.sub("", plain.group(0).lower()) or plain.group(0)
            assert verdict == (True, f"ua_list:{name}"), ua
