"""`parsedUserAgent` from the user agent string and from client hints."""

from __future__ import annotations

import msgspec
import pytest

from shared.enrichment.text import MAX_TEXT_BYTES
from shared.enrichment.user_agents import MAX_PARSED_BYTES, UserAgentParser, with_hints
from tests.shared.enrichment.agents import CHROME_ANDROID, CHROME_WINDOWS, HEADLESS, IPHONE


@pytest.fixture(scope="module")
def parser() -> UserAgentParser:
    return UserAgentParser()


def hints(*brands: tuple[str, str], platform: str = "Windows", **more) -> dict:
    return {
        "brands": [{"brand": b, "version": v} for b, v in brands],
        "mobile": False,
        "platform": platform,
        **more,
    }


GREASE = ("Not_A Brand", "8")


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (
            CHROME_WINDOWS,
            {"browser": "Chrome", "browserVersion": "120.0.0", "os": "Windows",
             "osVersion": "10"},
        ),
        (
            IPHONE,
            {"browser": "Mobile Safari", "browserVersion": "17.0", "os": "iOS",
             "osVersion": "17.0", "device": "iPhone"},
        ),
        (HEADLESS, {"browser": "HeadlessChrome", "browserVersion": "156.0.0", "os": "Linux"}),
        ("python-requests/2.31.0", {"browser": "Python Requests", "browserVersion": "2.31"}),
    ],
)  # fmt: skip
def test_the_string_is_parsed_by_ua_parser(parser, user_agent: str, expected: dict) -> None:
    assert parser.parse(user_agent)[0] == expected


@pytest.mark.parametrize("junk", ["", "a", "}{", "\x00\x01", "x" * 513, "Mozilla/5.0 " * 1000])
def test_a_string_nothing_recognises_or_too_long_gives_nothing(parser, junk: str) -> None:
    assert parser.parse(junk) == (None, None)


def test_hints_name_the_brand_not_grease_nor_chromium(parser) -> None:
    parsed, family = parser.parse(CHROME_WINDOWS)
    sent = hints(GREASE, ("Chromium", "120"), ("Google Chrome", "120"))
    assert with_hints(parsed, family, sent) == {
        "browser": "Chrome", "browserVersion": "120", "os": "Windows",
    }  # fmt: skip
    # Brave says so only in its hints; the string says Chrome.
    brave = hints(("Brave", "120"), ("Chromium", "120"), ("Not A(Brand", "24"))
    assert with_hints(parsed, family, brave)["browser"] == "Brave"
    edge = hints(("Not)A;Brand", "99"), ("Microsoft Edge", "120"), ("Chromium", "120"))
    assert with_hints(parsed, family, edge)["browser"] == "Edge"
    only_chromium = hints(("Not:A-Brand", "8"), ("Chromium", "156"), platform="Linux")
    assert with_hints(*parser.parse(HEADLESS), only_chromium) == {
        "browser": "Chromium", "browserVersion": "156", "os": "Linux",
    }  # fmt: skip


def test_high_entropy_hints_give_full_versions_and_the_model(parser) -> None:
    parsed, family = parser.parse(CHROME_ANDROID)
    assert parsed["device"] == "K" and parsed["osVersion"] == "10"  # frozen by Chrome
    sent = hints(
        GREASE,
        ("Google Chrome", "120"),
        platform="Android",
        mobile=True,
        fullVersionList=[{"brand": "Google Chrome", "version": "120.0.6099.144"}],
        platformVersion="14.0.0",
        model="Pixel 8",
    )
    assert with_hints(parsed, family, sent) == {
        "browser": "Chrome Mobile",  # the string's family, more precise than the brand's
        "browserVersion": "120.0.6099.144",
        "os": "Android",
        "osVersion": "14.0.0",
        "device": "Pixel 8",
    }


def test_hints_drop_the_frozen_os_version_and_name_the_platform_as_ua_parser(parser) -> None:
    mac = parser.parse(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like "
        "Gecko) Chrome/120.0.0.0 Safari/537.36"
    )
    result = with_hints(*mac, hints(("Google Chrome", "120"), platform="macOS"))
    assert result["os"] == "Mac OS X" and "osVersion" not in result


@pytest.mark.parametrize(
    "wrong",
    [
        None, [], "Chrome", {"brands": "Chrome", "platform": "Windows"},
        {"brands": [{"brand": 1, "version": "1"}], "platform": "Windows"},
        {"brands": [["Chrome", "120"]], "platform": "Windows"},
        {"brands": [{"brand": "Chrome", "version": "120"}]},
        {"brands": [{"brand": "Chrome", "version": "120"}], "platform": 7},
    ],
)  # fmt: skip
def test_hints_of_the_wrong_shape_change_nothing(parser, wrong) -> None:
    parsed, family = parser.parse(CHROME_WINDOWS)
    assert with_hints(parsed, family, wrong) == parsed


def test_hints_alone_are_enough_and_every_value_is_capped() -> None:
    long = "Ö" * 100
    sent = hints((long, long), platform=long, model=long, platformVersion=long)
    result = with_hints(None, None, sent)
    assert set(result) == {"browser", "browserVersion", "os", "osVersion", "device"}
    assert all(len(value.encode()) <= MAX_TEXT_BYTES for value in result.values())
    assert len(msgspec.msgpack.encode({"parsedUserAgent": result})) - 1 <= MAX_PARSED_BYTES
    assert with_hints(None, None, hints(GREASE, platform="")) is None
