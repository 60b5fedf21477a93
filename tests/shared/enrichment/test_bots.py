"""Bots: crawlerdetect's verdict, computed fast, for browser traffic only."""

from __future__ import annotations

import time

import pytest
from crawlerdetect import CrawlerDetect

from shared.enrichment.bots import CrawlerDetector, is_browser_traffic
from tests.shared.enrichment.agents import (
    CHROME_ANDROID,
    CHROME_WINDOWS,
    HEADLESS,
    IPHONE,
)

CRAWLERS = [
    HEADLESS,  # by crawlerdetect's generic `headless` pattern: the issue names it
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
    "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "PhantomJS/2.1.1 Safari/537.36",
    "python-requests/2.31.0",
    "axios/1.6.2",
    "curl/8.4.0",
]
BROWSERS = [
    CHROME_WINDOWS,
    CHROME_ANDROID,
    IPHONE,
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
    "Mozilla/5.0 (Linux; Android 13; SM-S908B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 12; YandexSearch) AppleWebKit/537.36 (KHTML, like Gecko)",
    "analytics-ios/4.1.8",
]


@pytest.fixture(scope="module")
def detector() -> CrawlerDetector:
    return CrawlerDetector()


@pytest.mark.parametrize("user_agent", CRAWLERS + BROWSERS)
def test_the_verdict_is_crawlerdetect_s(detector: CrawlerDetector, user_agent: str) -> None:
    assert detector.is_crawler(user_agent) == CrawlerDetect().is_crawler(user_agent)
    assert detector.is_crawler(user_agent) == (user_agent in CRAWLERS)


def test_the_look_ahead_pattern_rust_cannot_compile_still_applies(detector) -> None:
    assert detector.is_crawler("Mozilla/5.0 (compatible; Yandex/1.0)")
    assert not detector.is_crawler("Mozilla/5.0 (Linux; Android 12; YandexSearch/23.1)")


def test_an_absurd_user_agent_is_not_judged_and_costs_nothing(detector) -> None:
    started = time.process_time()
    assert not detector.is_crawler("x" * 10_000)  # crawlerdetect itself: about 10 s
    assert not detector.is_crawler("Googlebot " * 100)
    assert not detector.is_crawler("   ")
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize(
    ("context", "browser"),
    [
        ({"library": {"name": "analytics.js", "version": "npm:next-1.70.0"}}, True),
        ({"library": {"name": "RudderLabs JavaScript SDK"}}, True),
        ({"userAgentData": {"brands": [], "mobile": False, "platform": ""}}, True),
        ({"library": {"name": "analytics-python"}}, False),
        ({"library": {"name": "@segment/analytics-node"}}, False),
        ({"library": {"name": ["analytics.js"]}}, False),
        ({"library": "analytics.js", "userAgentData": "Chrome"}, False),
        ({}, False),
    ],
)
def test_only_browser_traffic_is_judged(context: dict, browser: bool) -> None:
    assert is_browser_traffic(context) == browser
