"""The Enricher: every part together, on events as `events.prepare` leaves them."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared import codec
from shared import events as events_module
from shared.enrichment import Enricher
from shared.enrichment.enricher import NEW_AGENTS_PER_REQUEST
from shared.settings import Settings
from tests import geoip
from tests.shared.enrichment.agents import CHROME_WINDOWS, HEADLESS

LONDON = ipaddress.ip_address(geoip.IN_LONDON)
BROWSER = {"name": "analytics.js", "version": "npm:next-1.70.0"}
HINTS = {
    "brands": [
        {"brand": "Not_A Brand", "version": "8"},
        {"brand": "Chromium", "version": "120"},
        {"brand": "Google Chrome", "version": "120"},
    ],
    "mobile": False,
    "platform": "Windows",
}


@pytest.fixture(scope="module")
def enricher(city_database: Path) -> Enricher:
    return Enricher(Settings(geoip_database=str(city_database)))


def prepared(*raw: dict[str, Any], context: dict | None = None) -> list[dict[str, Any]]:
    envelope = events_module.Envelope(context=context)
    batch = [{"type": "track", "event": "e", "userId": "u", **event} for event in raw]
    return events_module.prepare(batch, "2024-05-01T12:00:00.000Z", envelope)


def stored(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events as consumers read them: the enricher packs what events share (codec.packed)."""
    return codec.decode_entry(codec.encode_entry(events))


def test_an_event_gets_ip_location_parsed_user_agent(enricher: Enricher) -> None:
    [event] = stored(
        enricher.enrich(prepared({"context": {"userAgent": CHROME_WINDOWS}}), LONDON, 100)
    )
    assert event["context"] == {
        "userAgent": CHROME_WINDOWS,
        "ip": "81.2.69.0",
        "location": geoip.LONDON.location(),
        "parsedUserAgent": {
            "browser": "Chrome", "browserVersion": "120.0.0", "os": "Windows", "osVersion": "10",
        },
    }  # fmt: skip


def test_an_event_without_context_gets_one(enricher: Enricher) -> None:
    [event] = stored(enricher.enrich(prepared({}), LONDON, 100))
    assert event["context"] == {"ip": "81.2.69.0", "location": geoip.LONDON.location()}
    [event] = Enricher(Settings(ip_handling="none")).enrich(prepared({}), LONDON, 100)
    assert "context" not in event


def test_a_client_s_ip_is_cut_and_located_and_its_location_kept(enricher: Enricher) -> None:
    sent = [
        {"context": {"ip": geoip.IN_BERLIN}},
        {"context": {"ip": geoip.IN_LINKOPING, "location": {"city": "Home"}}},
        {"context": {"ip": "0.0.0.0"}},  # a placeholder: ours replaces it
        {"context": {"ip": "somewhere"}},
        {"context": {"ip": 81}},
        {"context": {"location": None}},
    ]
    contexts = [e["context"] for e in stored(enricher.enrich(prepared(*sent), LONDON, 1000))]
    assert contexts == [
        {"ip": "2a02:ec80:1234::", "location": geoip.BERLIN.location()},
        {"ip": "89.160.20.0", "location": {"city": "Home"}},
        {"ip": "81.2.69.0", "location": geoip.LONDON.location()},
        {},
        {},
        {"location": None, "ip": "81.2.69.0"},
    ]


@pytest.mark.parametrize(
    ("handling", "ours", "clients"),
    [("full", "81.2.69.142", geoip.IN_BERLIN), ("none", None, None)],
)
def test_ip_handling_full_and_none(
    city_database: Path, handling: str, ours: str | None, clients: str | None
) -> None:
    enricher = Enricher(Settings(ip_handling=handling, geoip_database=str(city_database)))
    mine, theirs = stored(
        enricher.enrich(prepared({}, {"context": {"ip": geoip.IN_BERLIN}}), LONDON, 100)
    )
    coarse = handling != "full"
    assert mine["context"].get("ip") == ours
    assert mine["context"]["location"] == geoip.LONDON.location(coarse=coarse)
    assert theirs["context"].get("ip") == clients
    assert theirs["context"]["location"] == geoip.BERLIN.location(coarse=coarse)


@pytest.mark.parametrize(
    ("address", "ip"),
    [
        (None, None),
        ("127.0.0.1", "127.0.0.0"),
        ("10.0.0.1", "10.0.0.0"),
        (geoip.NOWHERE, "8.8.8.0"),
        ("::1", "::"),
    ],
)
def test_an_address_unknown_private_or_absent_gives_no_location(
    enricher: Enricher, address: str | None, ip: str | None
) -> None:
    parsed = None if address is None else ipaddress.ip_address(address)
    [event] = enricher.enrich(prepared({"context": {"userAgent": "curl/8"}}), parsed, 100)
    assert "location" not in event["context"]
    assert event["context"].get("ip") == ip


@pytest.mark.parametrize(
    "context",
    [
        {"userAgent": "x" * 10_240},
        {"userAgent": 42},
        {"userAgent": None},
        {"userAgent": ["Chrome"]},
        {"userAgent": {"name": "Chrome"}},
        {"userAgent": ""},
        {"userAgent": "\ud800 junk \x00"},
        {"userAgent": "\x00 junk"},
        {"userAgentData": {"brands": "Chrome"}, "library": BROWSER},
        {"userAgentData": [1, 2], "userAgent": "Googlebot\ud800"},
        {"userAgentData": {"brands": [{"brand": {}}] * 1000, "platform": "x"}},
    ],
)
def test_bad_user_agents_are_stored_without_that_enrichment(enricher, context) -> None:
    sent = copy.deepcopy(context)
    [event] = enricher.enrich(prepared({"context": context}), LONDON, 20_000)
    assert "parsedUserAgent" not in event["context"] and "bot" not in event["context"]
    assert {k: v for k, v in event["context"].items() if k not in ("ip", "location")} == sent


def test_hints_of_the_wrong_shape_leave_the_string_s_parse(enricher: Enricher) -> None:
    context = {"userAgentData": [1, 2], "userAgent": HEADLESS}
    [event] = stored(enricher.enrich(prepared({"context": context}), LONDON, 500))
    assert event["context"]["parsedUserAgent"]["browser"] == "HeadlessChrome"
    assert "bot" not in event["context"]  # no browser SDK, no hints: not browser traffic


def test_client_hints_are_preferred(enricher: Enricher) -> None:
    context = {"userAgent": CHROME_WINDOWS, "userAgentData": HINTS, "library": BROWSER}
    [event] = stored(enricher.enrich(prepared({"context": context}), LONDON, 500))
    assert event["context"]["parsedUserAgent"] == {
        "browser": "Chrome", "browserVersion": "120", "os": "Windows",
    }  # fmt: skip


def test_parsed_user_agent_and_bot_are_the_server_s(enricher: Enricher) -> None:
    sent = {"parsedUserAgent": {"browser": "Mine"}, "bot": False}
    a, b = stored(
        enricher.enrich(
            prepared({"context": sent}, {"context": {**sent, "userAgent": CHROME_WINDOWS}}),
            LONDON,
            500,
        )
    )
    assert "parsedUserAgent" not in a["context"] and "bot" not in a["context"]
    assert b["context"]["parsedUserAgent"]["browser"] == "Chrome" and "bot" not in b["context"]


@pytest.mark.parametrize(
    ("context", "bot"),
    [
        ({"userAgent": HEADLESS, "library": BROWSER}, True),
        ({"userAgent": HEADLESS, "library": {"name": "RudderLabs JavaScript SDK"}}, True),
        ({"userAgent": HEADLESS, "userAgentData": HINTS}, True),
        ({"userAgent": "Mozilla/5.0 (compatible; Googlebot/2.1)", "library": BROWSER}, True),
        ({"userAgent": CHROME_WINDOWS, "library": BROWSER, "userAgentData": HINTS}, False),
        # Server SDKs are never bots, whatever their user agent.
        ({"userAgent": "python-requests/2.31.0", "library": {"name": "analytics-python"}}, False),
        ({"userAgent": "axios/1.6.2", "library": {"name": "@segment/analytics-node"}}, False),
        ({"userAgent": HEADLESS}, False),
    ],
)
def test_bots_are_flagged_among_browser_traffic_only(enricher, context, bot) -> None:
    [event] = enricher.enrich(prepared({"context": context}), LONDON, 500)
    assert event["context"].get("bot") is (True if bot else None)


def test_drop_bots_leaves_them_out(city_database: Path) -> None:
    enricher = Enricher(Settings(drop_bots=True))
    bot = {"context": {"userAgent": HEADLESS, "library": BROWSER}}
    human = {"context": {"userAgent": CHROME_WINDOWS, "library": BROWSER}}
    batch = prepared(bot, human, {}, bot)
    assert enricher.enrich(batch, LONDON, 1000) == [batch[1], batch[2]]
    # One batch context for all: all of them bots, or none.
    shared = {"userAgent": HEADLESS, "library": BROWSER}
    assert enricher.enrich(prepared({}, {}, context=shared), LONDON, 1000) == []


def test_a_shared_batch_context_is_enriched_once_and_alike(enricher: Enricher) -> None:
    batch_context = {"userAgent": CHROME_WINDOWS, "library": BROWSER}
    batch = prepared({}, {"context": {"ip": geoip.IN_BERLIN}}, {}, context=batch_context)
    first, own, last = enricher.enrich(batch, LONDON, 1000)
    assert first["context"] is last["context"]  # as prepare leaves it: one dict, stored twice
    first, own, last = stored([first, own, last])
    assert first["context"]["ip"] == "81.2.69.0"
    assert own["context"]["ip"] == "2a02:ec80:1234::"  # its own merged copy, its own address
    assert own["context"]["location"] == geoip.BERLIN.location()
    assert first["context"]["location"] == geoip.LONDON.location()
    assert own["context"]["parsedUserAgent"] == first["context"]["parsedUserAgent"]


def test_a_request_has_a_budget_of_new_user_agents(city_database: Path) -> None:
    enricher = Enricher(Settings())
    agents = [f"Mozilla/5.0 (Windows NT 10.0) Chrome/{n}.0.0.0 Safari/537.36" for n in range(200)]
    batch = prepared(*({"context": {"userAgent": agent}} for agent in agents))
    enriched = enricher.enrich(batch, LONDON, 10 * 1024)
    parsed = [e for e in enriched if "parsedUserAgent" in e["context"]]
    assert len(parsed) == NEW_AGENTS_PER_REQUEST + 10
    # Known ones cost nothing: the next request parses the next ones.
    again = enricher.enrich(
        prepared(*({"context": {"userAgent": agent}} for agent in agents)), LONDON, 10 * 1024
    )
    assert sum("parsedUserAgent" in e["context"] for e in again) == 2 * len(parsed)


def test_what_an_event_grows_by_is_within_max_added_bytes(city_database: Path) -> None:
    enricher = Enricher(Settings(geoip_database=str(city_database)))
    for raw in (
        {},
        {"context": {"userAgent": "Mozilla/5.0 (Linux; Android 13; SM-S908B) SamsungBrowser/23.0",
                     "userAgentData": {**HINTS, "platformVersion": "Ö" * 80, "model": "É" * 90},
                     "library": BROWSER, **{f"k{i}": i for i in range(13)}}},
    ):  # fmt: skip
        before = msgspec.msgpack.encode(prepared(copy.deepcopy(raw)))
        after = msgspec.msgpack.encode(enricher.enrich(prepared(copy.deepcopy(raw)), LONDON, 9))
        assert 0 < len(after) - len(before) <= enricher.max_added_bytes


def test_each_event_of_a_batch_is_enriched_as_it_would_be_alone(enricher: Enricher) -> None:
    """Events like the one before take a shortcut (the same user agent and hints, nothing to
    replace): whatever differs from one event to the next, each ends as it would alone."""
    other_hints = {**HINTS, "platform": "macOS"}
    googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    contexts = [
        {"userAgent": CHROME_WINDOWS, "userAgentData": HINTS, "library": BROWSER},
        {"userAgent": CHROME_WINDOWS, "userAgentData": HINTS, "library": BROWSER},
        {"userAgent": CHROME_WINDOWS, "userAgentData": other_hints, "library": BROWSER},
        {"userAgent": CHROME_WINDOWS, "userAgentData": other_hints, "ip": "81.2.69.142"},
        {"userAgent": CHROME_WINDOWS, "userAgentData": other_hints, "parsedUserAgent": "x"},
        {"userAgent": CHROME_WINDOWS, "userAgentData": other_hints, "bot": False},
        {"userAgent": CHROME_WINDOWS, "userAgentData": other_hints, "location": {"city": "X"}},
        {"userAgent": CHROME_WINDOWS},
        {"userAgent": googlebot, "library": BROWSER},
        {"userAgent": googlebot, "library": {"name": "analytics-node"}},
        {"userAgent": googlebot, "library": BROWSER},
        {"userAgent": HEADLESS, "userAgentData": HINTS},
        {"userAgent": HEADLESS},
    ]
    raw = [{"context": context} for context in contexts]
    batch = enricher.enrich(prepared(*copy.deepcopy(raw)), LONDON, 10_000)
    alone = [enricher.enrich(prepared(event), LONDON, 10_000)[0] for event in copy.deepcopy(raw)]
    assert [event["context"] for event in batch] == [event["context"] for event in alone]
    assert batch[9]["context"].get("bot") is None and batch[10]["context"]["bot"] is True
