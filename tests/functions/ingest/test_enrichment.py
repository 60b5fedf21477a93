"""Enrichment through the real app: the client's address as gunicorn sees it (X-Forwarded-For
believed only from TRUSTED_PROXIES), anonymized; its location from a City database built by
tests/geoip.py; IP_HANDLING, DROP_BOTS and their metric; a bad GEOIP_DATABASE at start."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import redis
import urllib3

from functions.ingest.app import create_app
from local.lambda_build import ROOT
from shared import codec
from shared.settings import ConfigError, Settings
from tests import geoip
from tests.conftest import free_port, gunicorn_serving, settings_env
from tests.shared.enrichment.agents import CHROME_WINDOWS, HEADLESS

KEY = "wk_enrichment"
SOURCE = "web"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
BROWSER = {"name": "analytics.js", "version": "npm:next-1.70.0"}


@pytest.fixture(scope="module")
def city_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return geoip.small_city_database(tmp_path_factory.mktemp("geoip") / "GeoLite2-City.mmdb")


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return dataclasses.replace(settings, write_keys=((SOURCE, KEY),))


def stored(redis_client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    return [
        event
        for _, fields in redis_client.xrange(settings.stream_key)
        for event in codec.decode_entry(fields)
    ]


def post(url: str, body: dict[str, Any], path: str = "/v1/batch", **headers: str) -> int:
    answer = urllib3.request(
        "POST", url + path, body=json.dumps(body).encode(), headers={**AUTH, **headers}
    )
    return answer.status


def track(**context: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", "userId": "u", "context": context}


# --- the address, as gunicorn sees it -----------------------------------------------------------


def test_the_peer_s_address_is_stored_anonymized_and_a_spoofed_forwarded_for_ignored(
    keyed: Settings, redis_client: redis.Redis, city_database: Path
) -> None:
    with gunicorn_serving(keyed, GEOIP_DATABASE=str(city_database)) as url:
        spoofed = {"X-Forwarded-For": geoip.IN_LONDON}
        assert post(url, {"batch": [track(userAgent=CHROME_WINDOWS)]}, **spoofed) == 200
    [event] = stored(redis_client, keyed)
    # The peer is this host (loopback: no location), not the address the client claimed.
    assert event["context"]["ip"] == "127.0.0.0"
    assert "location" not in event["context"]
    assert event["context"]["parsedUserAgent"]["browser"] == "Chrome"


def test_behind_a_trusted_proxy_the_client_s_address_is_used_ipv4_and_ipv6(
    keyed: Settings, redis_client: redis.Redis, city_database: Path
) -> None:
    env = {"GEOIP_DATABASE": str(city_database), "TRUSTED_PROXIES": "127.0.0.1/32"}
    with gunicorn_serving(keyed, **env) as url:
        # The client wrote 81.2.69.142 itself; the proxy appended what it saw.
        behind = {"X-Forwarded-For": f"{geoip.IN_LONDON}, {geoip.IN_LINKOPING}"}
        kept_location = {"city": "Sent by the client"}
        batch = [track(), track(location=kept_location), track(ip=geoip.IN_BERLIN)]
        assert post(url, {"batch": batch}, **behind) == 200
        ipv6 = {"X-Forwarded-For": geoip.IN_SAO_PAULO}
        assert post(url, {"batch": [track()]}, **ipv6) == 200
    plain, kept, own, from_ipv6 = (e["context"] for e in stored(redis_client, keyed))
    assert plain == {"ip": "89.160.20.0", "location": geoip.LINKOPING.location()}
    assert kept == {"ip": "89.160.20.0", "location": kept_location}
    assert own == {"ip": "2a02:ec80:1234::", "location": geoip.BERLIN.location()}
    assert from_ipv6 == {"ip": "2804:14c:abcd::", "location": geoip.SAO_PAULO.location()}


# --- IP_HANDLING, DROP_BOTS, through the app ----------------------------------------------------


def app_client(settings: Settings, city_database: Path, **changes: Any) -> Any:
    changed = dataclasses.replace(
        settings, write_keys=((SOURCE, KEY),), geoip_database=str(city_database), **changes
    )
    return create_app(changed).test_client()


@pytest.mark.parametrize(
    ("handling", "ours", "theirs"),
    [
        ("anonymize", "81.2.69.0", "2a02:ec80:1234::"),
        ("full", geoip.IN_LONDON, geoip.IN_BERLIN),
        ("none", None, None),
    ],
)
def test_ip_handling(
    settings, redis_client, city_database, handling: str, ours: str | None, theirs: str | None
) -> None:
    client = app_client(settings, city_database, ip_handling=handling)
    batch = [track(), track(ip=geoip.IN_BERLIN)]
    answer = client.post(
        "/v1/batch", json={"batch": batch}, headers=AUTH,
        environ_base={"REMOTE_ADDR": geoip.IN_LONDON},
    )  # fmt: skip
    assert answer.status_code == 200
    mine, client_sent = (e["context"] for e in stored(redis_client, settings))
    assert mine.get("ip") == ours and client_sent.get("ip") == theirs
    coarse = handling != "full"
    assert mine["location"] == geoip.LONDON.location(coarse=coarse)
    assert client_sent["location"] == geoip.BERLIN.location(coarse=coarse)


def dropped_count() -> float:
    """event_ingest_bot_events_dropped_total, all routes."""
    return sum(
        sample.value
        for family in prometheus_client.REGISTRY.collect()
        for sample in family.samples
        if sample.name == "event_ingest_bot_events_dropped_total"
    )


def test_drop_bots_answers_as_accepted_stores_the_others_and_counts(
    settings, redis_client, city_database
) -> None:
    client = app_client(settings, city_database, drop_bots=True)
    before = dropped_count()
    bot = track(userAgent=HEADLESS, library=BROWSER)
    human = track(userAgent=CHROME_WINDOWS, library=BROWSER)
    server = track(userAgent="python-requests/2.31.0", library={"name": "analytics-python"})
    answer = client.post("/v1/batch", json={"batch": [bot, human, bot, server]}, headers=AUTH)
    assert answer.status_code == 200 and answer.get_json() == {"success": True}
    kept = stored(redis_client, settings)
    assert [e["context"]["userAgent"] for e in kept] == [
        CHROME_WINDOWS,
        server["context"]["userAgent"],
    ]
    assert dropped_count() - before == 2
    # A request of bots only: answered alike, nothing stored.
    answer = client.post("/v1/t", json=bot, headers=AUTH)
    assert answer.status_code == 200 and len(stored(redis_client, settings)) == 2
    assert dropped_count() - before == 3


def test_without_drop_bots_a_bot_is_stored_flagged(settings, redis_client, city_database):
    client = app_client(settings, city_database)
    bot = track(userAgent=HEADLESS, library=BROWSER)
    assert client.post("/v1/t", json=bot, headers=AUTH).status_code == 200
    [event] = stored(redis_client, settings)
    assert event["context"]["bot"] is True


# --- size accounting and bad input --------------------------------------------------------------


def test_a_tiny_event_is_never_refused_because_of_what_enrichment_adds(
    settings, redis_client, city_database
) -> None:
    """The allowance per event grows by what enrichment may add: a 27-byte event, which its body
    allows only ~330 bytes, becomes ~520 bytes with a location, and is stored."""
    client = app_client(settings, city_database)
    answer = client.post(
        "/v1/t", data=b'{"userId":"u","event":"e"}', headers=AUTH,
        environ_base={"REMOTE_ADDR": geoip.IN_LINKOPING},
    )  # fmt: skip
    assert answer.status_code == 200, answer.get_json()
    [event] = stored(redis_client, settings)
    assert event["context"]["location"] == geoip.LINKOPING.location()


@pytest.mark.parametrize(
    "context",
    [
        {"userAgent": "Mozilla/5.0 " + "x" * 10_240},
        {"userAgent": 7, "userAgentData": "Chrome", "library": BROWSER},
        {"userAgentData": {"brands": [{"brand": None}], "platform": []}, "library": BROWSER},
        {"ip": ["81.2.69.142"], "location": 7},
    ],
)
def test_bad_input_is_stored_without_that_enrichment_never_refused(
    settings, redis_client, city_database, context
) -> None:
    client = app_client(settings, city_database)
    for remote in ("not an address", "10.0.0.1", "::1", geoip.NOWHERE):
        answer = client.post(
            "/v1/batch", json={"batch": [track(**context)]}, headers=AUTH,
            environ_base={"REMOTE_ADDR": remote},
        )  # fmt: skip
        assert answer.status_code == 200, answer.get_json()
    for event in stored(redis_client, settings):
        assert "parsedUserAgent" not in event["context"] and "bot" not in event["context"]
        assert event["context"].get("location") == context.get("location")


def test_a_missing_or_unreadable_database_fails_the_start_naming_the_path(
    settings: Settings, tmp_path: Path
) -> None:
    missing = tmp_path / "GeoLite2-City.mmdb"
    with pytest.raises(ConfigError, match=str(missing)):
        create_app(dataclasses.replace(settings, geoip_database=str(missing)))
    # gunicorn does not start, and says why, naming the path.
    env = settings_env(settings, WEB_CONCURRENCY="1", GEOIP_DATABASE=str(missing))
    args = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "local" / "gunicorn.conf.py")]
    args.append("functions.ingest.app:app")
    bind = {"BIND": f"127.0.0.1:{free_port()}"}
    ran = subprocess.run(
        args, cwd=ROOT, env={**env, **bind}, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode != 0
    assert f"GEOIP_DATABASE: {missing} is not a file" in ran.stderr, ran.stderr
