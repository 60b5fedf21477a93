"""Node SDKs that speak Segment's tracking API, pointed at the gunicorn-served ingest function by
changing only their host and write key, deliver every event into the archive.

Each SDK runs in a Node script (`js/node/*.cjs`) that sends a few hundred events of each type,
flushes, and prints what it sent and every HTTP answer it got, hooked into the SDK's own HTTP
client. Every answer must be a 2xx, and the archive must then hold exactly the events sent.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.sdks.conftest import WRITE_KEY, archive_until_complete, assert_archived_as_sent

# The first test to use node_env may pay for `npm ci` (a few seconds with a warm registry).
pytestmark = pytest.mark.timeout(300)
ROUNDS = 200  # of each of the six types: 1,200 events per SDK run

SEGMENT = "node/analytics-node.cjs"
RUDDER = "node/rudder-node.cjs"
SDKS = [
    pytest.param(SEGMENT, {}, "@segment/analytics-node", id="segment-analytics-node"),
    # RudderStack's SDK gzips by default; without it, axios sends plain application/json.
    pytest.param(RUDDER, {"gzip": True}, "analytics-node", id="rudder-sdk-node-gzip"),
    pytest.param(RUDDER, {"gzip": False}, "analytics-node", id="rudder-sdk-node-plain"),
]


@pytest.mark.parametrize(("script", "options", "library"), SDKS)
def test_node_sdk_events_reach_the_archive(
    node_env, settings, http_s3, gunicorn_url, script, options, library
):
    config = {"host": gunicorn_url, "writeKey": WRITE_KEY, "rounds": ROUNDS, **options}
    result = node_env.run(script, config)

    sent, responses = result["sent"], result["responses"]
    assert Counter(e["type"] for e in sent) == dict.fromkeys(
        ["track", "identify", "page", "screen", "group", "alias"], ROUNDS
    )
    assert responses, "the SDK sent nothing"
    refused = [r for r in responses if r["status"] is None or not 200 <= r["status"] < 300]
    assert not refused, f"{len(refused)} of {len(responses)} not answered 2xx: {refused[:5]}"
    assert result["errors"] == []
    if "gzip" in options:
        # What RudderStack's SDK really sends, so a change of its headers shows up here.
        sent_as = {(r["contentType"], r["contentEncoding"]) for r in responses}
        expected = (
            ("application/x-www-form-urlencoded", "gzip")
            if options["gzip"]
            else ("application/json", None)
        )
        assert sent_as == {expected}

    archived = archive_until_complete(settings, http_s3, {e["messageId"] for e in sent})
    assert_archived_as_sent(archived, sent, library=library)


def test_node_sdk_with_a_wrong_key_is_refused(node_env, settings, gunicorn_url, redis_client):
    """The other side of the contract: an unknown key gets a 401 and nothing is stored."""
    config = {"host": gunicorn_url, "writeKey": "wk_wrong", "rounds": 1}
    result = node_env.run(SEGMENT, config)
    assert {r["status"] for r in result["responses"]} == {401}
    assert result["errors"]
    assert not redis_client.exists(settings.stream_key)
