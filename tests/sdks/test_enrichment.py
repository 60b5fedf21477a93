"""Enrichment at ingest (docs/enrichment.md) as the real SDKs meet it: what the stream holds for
their events.

analytics.js runs in Debian's Chromium as in test_browser_sdk.py (the page, the bundle and
drive.cjs), once per user agent: Chromium's own headless one (`HeadlessChrome`), a desktop
Chrome's on Windows and Googlebot's, each given to Chromium with its `--user-agent` flag. The
flag changes `navigator.userAgent` but not the client hints: `navigator.userAgentData` still
says Chromium on Linux, and analytics.js sends it as `context.userAgentData`. So the three
cases have the same hints and differ only in the string, which is what the bot verdict reads.

Server SDKs (`@segment/analytics-node`, segment-analytics-python) send user agents that
crawlerdetect's list flags (`python-requests`, `axios`): their events must not be bots.

Every request comes from 127.0.0.1: stored, as IP_HANDLING's default `anonymize` has it, as
`127.0.0.0` (a loopback address has no location, but its network is kept like any other).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from segment.analytics.client import Client

from shared.enrichment.bots import CrawlerDetector
from shared.settings import Settings
from tests.sdks import documented
from tests.sdks.conftest import WRITE_KEY, NodeEnv, streamed_events

# The first test to use node_env may pay for `npm ci` (a few seconds with a warm registry).
pytestmark = pytest.mark.timeout(300)

LOOPBACK_ANONYMIZED = "127.0.0.0"
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/138.0.0.0 Safari/537.36"
)
# Googlebot's desktop user agent since its crawler became an evergreen Chromium.
GOOGLEBOT = (
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; "
    "+http://www.google.com/bot.html) Chrome/138.0.7204.183 Safari/537.36"
)
# One batching round: nine events in one or two `/v1/b` requests, no preflight per path.
SCENARIO = {"name": "batching", "rounds": 1}
# (user agent given to Chromium, or None for its own; flagged as a bot; what the hints leave to
# the string in `parsedUserAgent`: Googlebot's device)
BROWSER_CASES = [
    pytest.param(None, True, {}, id="headless-chromium"),
    pytest.param(WINDOWS_CHROME, False, {}, id="windows-chrome-ua"),
    pytest.param(GOOGLEBOT, True, {"device": "Spider"}, id="googlebot-ua"),
]
PYTHON_REQUESTS = "python-requests/2.32.3"


@pytest.mark.parametrize(("user_agent", "bot", "from_string"), BROWSER_CASES)
def test_analytics_js_events_get_parsed_user_agent_and_bot_verdict(
    node_env: NodeEnv,
    chromium: str,
    settings: Settings,
    gunicorn_url: str,
    page_origin: str,
    redis_client: redis.Redis,
    user_agent: str | None,
    bot: bool,
    from_string: dict[str, str],
) -> None:
    config: dict[str, Any] = {
        "chromium": chromium,
        "pageUrl": f"{page_origin}/page.html",
        "cdn": gunicorn_url,
        "writeKey": WRITE_KEY,
        "settings": documented.analytics_js_settings(gunicorn_url, WRITE_KEY),
        "scenarios": [SCENARIO],
    }
    if user_agent is not None:
        config["userAgent"] = user_agent
    log = node_env.run("browser/drive.cjs", config, timeout_s=60)
    result = log["scenarios"][SCENARIO["name"]]
    assert result["errors"] == [] and result["networkIdle"], result
    ours = [r for r in log["requests"] if r["url"].startswith(gunicorn_url)]
    refused = [r for r in ours if r["status"] is None or not 200 <= r["status"] < 300]
    assert ours and not refused, log["requests"]

    # Every request was answered once ingest had stored its events: the stream holds them.
    events = streamed_events(redis_client, settings)
    assert sorted(e["messageId"] for e in events) == sorted(e["messageId"] for e in result["sent"])
    for event in events:
        context = event["context"]
        assert context["library"]["name"] == "analytics.js", context
        if user_agent is None:
            assert "HeadlessChrome/" in context["userAgent"], context
        else:
            assert context["userAgent"] == user_agent, context
        # Debian's Chromium's hints, whatever the flag: the Chromium brand (and GREASE), Linux.
        hints = context["userAgentData"]
        assert hints["platform"] == "Linux" and hints["mobile"] is False, context
        chromium_version = {b["brand"]: b["version"] for b in hints["brands"]}["Chromium"]
        # Hints preferred: the browser and OS they name, not the string's (HeadlessChrome,
        # Chrome on Windows, Googlebot); the string only for what they do not say.
        expected = {"browser": "Chromium", "browserVersion": chromium_version, "os": "Linux"}
        assert context["parsedUserAgent"] == {**expected, **from_string}, context
        if bot:
            assert context.get("bot") is True, context
        else:
            assert "bot" not in context, context
        assert context["ip"] == LOOPBACK_ANONYMIZED, context
        assert "location" not in context, context


def test_server_sdk_events_are_never_bots(
    node_env: NodeEnv, settings: Settings, gunicorn_url: str, redis_client: redis.Redis
) -> None:
    axios = (
        "axios/"
        + json.loads((node_env.node_modules / "axios" / "package.json").read_text())["version"]
    )
    # What makes this test mean something: as user agents alone, these are crawlers.
    detector = CrawlerDetector()
    assert detector.is_crawler(PYTHON_REQUESTS) and detector.is_crawler(axios)

    sent: dict[str, str] = {}  # messageId: the user agent its event carried
    for agent in (PYTHON_REQUESTS, axios):
        config = {"host": gunicorn_url, "writeKey": WRITE_KEY, "rounds": 1}
        config["context"] = {"userAgent": agent}
        result = node_env.run("node/analytics-node.cjs", config)
        assert result["errors"] == [], result
        sent.update(dict.fromkeys((e["messageId"] for e in result["sent"]), agent))

    errors: list[Any] = []
    client = Client(
        write_key=WRITE_KEY,
        host=gunicorn_url,
        max_retries=1,
        on_error=lambda error, batch: errors.append(error),
    )
    for i in range(3):
        message_id = str(uuid.uuid4())
        context = {"userAgent": PYTHON_REQUESTS}
        client.track(user_id=f"u{i}", event="Signed Up", context=context, message_id=message_id)
        sent[message_id] = PYTHON_REQUESTS
    client.flush()
    client.join()
    assert errors == []

    events = streamed_events(redis_client, settings)
    assert sorted(e["messageId"] for e in events) == sorted(sent)
    libraries = {e["context"]["library"]["name"] for e in events}
    assert libraries == {"@segment/analytics-node", "analytics-python"}, libraries
    for event in events:
        context = event["context"]
        assert context["userAgent"] == sent[event["messageId"]], context
        assert "bot" not in context, context
        assert context["parsedUserAgent"]["browser"] in ("Python Requests", "axios"), context
        assert context["ip"] == LOOPBACK_ANONYMIZED, context
