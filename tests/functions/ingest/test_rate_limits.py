"""Which buckets a request takes from (functions/ingest/rate_limits.py), refusing early, and the
429 answer and its metrics, in process through Flask's test client against a real Redis."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import time

import prometheus_client
import pytest

from functions.ingest import rate_limits
from functions.ingest.app import create_app
from functions.ingest.rate_limits import RateLimits, address_bucket_name
from shared.settings import Settings
from shared.stream import RateLimited
from shared.token_bucket import Bucket

V4 = ipaddress.ip_address("198.51.100.7")
V6 = ipaddress.ip_address("2001:db8:1:2::5")


def limits(**env: str) -> RateLimits:
    return RateLimits(Settings.from_env({"WRITE_KEYS": "web:wk,backend:bk", **env}))


def batch(count: int = 1, **extra) -> dict:
    return {"batch": [{"type": "track", "userId": "u", "event": "E"}] * count, **extra}


# --- which buckets -----------------------------------------------------------------------------


def test_by_default_a_source_and_its_address_each_have_a_bucket_of_ten_seconds() -> None:
    source, address = limits().buckets("web", V4)
    assert source == Bucket("source:web", 50_000, 500_000)
    assert address == Bucket(address_bucket_name(V4), 5_000, 50_000)


def test_a_source_s_own_limit_with_or_without_its_burst() -> None:
    chosen = limits(RATE_LIMIT_SOURCES="web=200/700, backend=300")
    assert chosen.buckets("web", None) == (Bucket("source:web", 200, 700),)
    # No burst given: the default's ten seconds of it.
    assert chosen.buckets("backend", None) == (Bucket("source:backend", 300, 3000),)
    ratio = limits(
        RATE_LIMIT_EVENTS_PER_S="100", RATE_LIMIT_BURST="200", RATE_LIMIT_SOURCES="web=300"
    )
    assert ratio.buckets("web", None) == (Bucket("source:web", 300, 600),)


def test_a_source_set_to_0_takes_from_no_bucket_not_even_its_address_s() -> None:
    lifted = limits(RATE_LIMIT_SOURCES="backend=0")
    assert lifted.buckets("backend", V4) == ()
    assert len(lifted.buckets("web", V4)) == 2


def test_0_turns_a_default_limit_off() -> None:
    assert limits(RATE_LIMIT_EVENTS_PER_S="0").buckets("web", V4) == (
        Bucket(address_bucket_name(V4), 5_000, 50_000),
    )
    no_address = limits(RATE_LIMIT_ADDRESS_EVENTS_PER_S="0")
    assert no_address.buckets("web", V4) == (Bucket("source:web", 50_000, 500_000),)
    # ... while a source's own limit still holds.
    mixed = limits(RATE_LIMIT_EVENTS_PER_S="0", RATE_LIMIT_SOURCES="web=10")
    assert mixed.buckets("web", None) == (Bucket("source:web", 10, 100),)


def test_anonymous_mode_has_one_source_whose_bucket_says_so() -> None:
    anonymous = RateLimits(Settings.from_env({}))
    assert anonymous.buckets(None, None) == (Bucket("source:anonymous", 50_000, 500_000),)
    lifted = RateLimits(Settings.from_env({"RATE_LIMIT_SOURCES": "anonymous=0"}))
    assert lifted.buckets(None, V4) == ()


def test_an_unknown_address_has_no_address_bucket() -> None:
    assert limits().buckets("web", None) == (Bucket("source:web", 50_000, 500_000),)


def test_an_ipv6_client_is_its_slash_64_and_no_name_holds_an_address() -> None:
    same = ipaddress.ip_address("2001:db8:1:2:ffff:ffff:ffff:ffff")
    other = ipaddress.ip_address("2001:db8:1:3::5")
    assert address_bucket_name(V6) == address_bucket_name(same)
    assert address_bucket_name(V6) != address_bucket_name(other)
    assert address_bucket_name(V4) != address_bucket_name(ipaddress.ip_address("198.51.100.8"))
    for address in (V4, V6):
        name = address_bucket_name(address)
        assert name.startswith("address:")
        assert str(address) not in name and address.packed.hex() not in name
        assert address.packed[:8].hex() not in name


def test_a_limit_for_a_source_no_key_has_is_warned_about(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=rate_limits.__name__):
        limits(RATE_LIMIT_SOURCES="web=10,wbe=10")
    assert ["wbe" in record.getMessage() for record in caplog.records] == [True]


def test_a_source_given_twice_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="RATE_LIMIT_SOURCES: 'web' is given twice"):
        Settings.from_env({"RATE_LIMIT_SOURCES": "web=10,web=20"})


# --- refusing early ----------------------------------------------------------------------------


def test_a_bucket_redis_refused_is_refused_early_until_it_could_pass() -> None:
    chosen = limits()
    address_bucket = chosen.buckets("web", V4)[1]
    chosen.remember(RateLimited(address_bucket, 0.05), events=1)

    with pytest.raises(RateLimited) as early:
        chosen.refuse_early(V4, None, known=False)
    assert early.value.bucket == address_bucket
    assert early.value.retry_after_s == 1
    chosen.refuse_early(V6, None, known=False)  # another address: not refused
    time.sleep(0.06)
    chosen.refuse_early(V4, None, known=False)  # it could pass now


def test_a_refusal_is_remembered_until_one_event_could_pass() -> None:
    """10 events a second: a refused request of 11 events that waits 2 s leaves 1 s for one
    event (it needs 10 tokens fewer); one of 21 events, 0 s: nothing to remember."""
    chosen = limits(RATE_LIMIT_SOURCES="web=10/100")
    web = chosen.buckets("web", None)[0]
    chosen.remember(RateLimited(web, 2.0), events=21)
    chosen.refuse_early(None, "web", known=True)
    chosen.remember(RateLimited(web, 2.0), events=11)
    with pytest.raises(RateLimited) as early:
        chosen.refuse_early(None, "web", known=True)
    assert 0.9 < early.value.wait_s <= 1.0
    # Past the burst, a request waits for a full bucket: as one of 100 events would.
    chosen.remember(RateLimited(web, 12.0), events=500)
    with pytest.raises(RateLimited) as early:
        chosen.refuse_early(None, "web", known=True)
    assert 2.0 < early.value.wait_s <= 2.1


def test_a_source_is_refused_early_only_when_known_before_the_body() -> None:
    chosen = limits()
    chosen.remember(RateLimited(chosen.buckets("web", None)[0], 5), events=1)
    chosen.refuse_early(V4, "web", known=False)
    with pytest.raises(RateLimited):
        chosen.refuse_early(V4, "web", known=True)
    chosen.refuse_early(V4, "backend", known=True)


def test_a_lifted_source_is_never_refused_early_by_its_address() -> None:
    chosen = limits(RATE_LIMIT_SOURCES="backend=0")
    chosen.remember(RateLimited(chosen.buckets("web", V4)[1], 5), events=1)  # web, from V4
    chosen.refuse_early(V4, "backend", known=True)
    with pytest.raises(RateLimited):
        chosen.refuse_early(V4, "web", known=True)


def test_remembered_refusals_stay_bounded() -> None:
    # Past MAX_REMEMBERED, none expired: all are forgotten (Redis still refuses them).
    chosen = limits()
    addresses = [ipaddress.ip_address(0x0A000000 + i) for i in range(rate_limits.MAX_REMEMBERED)]
    for address in addresses:
        chosen.remember(RateLimited(chosen.buckets("web", address)[1], 60), events=1)
    with pytest.raises(RateLimited):
        chosen.refuse_early(addresses[0], "web", known=False)
    chosen.remember(RateLimited(chosen.buckets("web", V4)[1], 60), events=1)
    chosen.refuse_early(addresses[0], "web", known=False)
    with pytest.raises(RateLimited):
        chosen.refuse_early(V4, "web", known=False)


# --- the answer --------------------------------------------------------------------------------


def counted(name: str, **labels: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def web_limited(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        write_keys=(("web", "wk"), ("backend", "bk")),
        rate_limit_sources=Settings.from_env({"RATE_LIMIT_SOURCES": "web=1/5"}).rate_limit_sources,
    )


def test_over_its_limit_a_request_is_a_429_with_retry_after_and_counted(
    web_limited, redis_client
) -> None:
    client = create_app(web_limited).test_client()
    names = ("event_ingest_rate_limited_requests_total", "event_ingest_rate_limited_events_total")
    before = [counted(name, source="web", limit="source") for name in names]
    refused_before = counted("event_ingest_requests_refused_total", reason="rate_limited")

    assert client.post("/v1/batch", json=batch(5), auth=("wk", "")).status_code == 200
    answer = client.post("/v1/batch", json=batch(3), auth=("wk", ""))

    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "3"  # 1 event/s, none left, 3 asked for: 3 s
    assert answer.headers["Access-Control-Allow-Origin"] == "*"  # a browser sees the 429
    body = json.loads(answer.data)
    assert body["error"] == body["code"] == "rate_limited"
    assert redis_client.xlen(web_limited.stream_key) == 1
    after = [counted(name, source="web", limit="source") for name in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 3]
    assert (
        counted("event_ingest_requests_refused_total", reason="rate_limited") - (refused_before)
        == 1
    )
    # Another source is not held back by web's flood.
    assert client.post("/v1/batch", json=batch(5), auth=("bk", "")).status_code == 200


def test_once_refused_a_request_is_refused_before_its_body_is_read(web_limited) -> None:
    client = create_app(web_limited).test_client()
    assert client.post("/batch", json=batch(5), auth=("wk", "")).status_code == 202
    assert client.post("/batch", json=batch(1), auth=("wk", "")).status_code == 429
    # Malformed, but never read: the key in the header names a source refused a moment ago.
    assert client.post("/batch", data=b"{not json", auth=("wk", "")).status_code == 429
    # The key in the body: the source is not known before it, the address was not refused.
    assert client.post("/batch", data=b"{not json").status_code == 401


def test_a_large_refused_request_does_not_shut_out_the_small_ones_redis_admits(
    web_limited, redis_client
) -> None:
    """A refused request takes no tokens: were a 5-event refusal remembered for its own wait,
    anyone holding a public key could keep a source's small requests out of a process, at no
    cost of their own, while Redis would admit them."""
    client = create_app(web_limited).test_client()
    assert client.post("/batch", json=batch(2), auth=("wk", "")).status_code == 202  # 3 left
    assert client.post("/batch", json=batch(5), auth=("wk", "")).status_code == 429
    # 3 tokens are there for this one: Redis takes it, nothing in the process stands in between.
    assert client.post("/batch", json=batch(1), auth=("wk", "")).status_code == 202
    assert redis_client.xlen(web_limited.stream_key) == 2


def test_a_flood_from_one_address_is_refused_by_its_address(settings, redis_client) -> None:
    tight = dataclasses.replace(
        settings, rate_limit_address_events_per_s=1, rate_limit_address_burst=3
    )
    client = create_app(tight).test_client()
    flooder = {"REMOTE_ADDR": "198.51.100.7"}
    other = {"REMOTE_ADDR": "198.51.100.8"}
    before = counted(
        "event_ingest_rate_limited_requests_total", source="anonymous", limit="address"
    )
    assert client.post("/batch", json=batch(3), environ_base=flooder).status_code == 202
    assert client.post("/batch", json=batch(1), environ_base=flooder).status_code == 429
    # Refused early, before its body; anonymous mode knows its one source without one.
    assert client.post("/batch", json=batch(1), environ_base=flooder).status_code == 429
    assert client.post("/batch", json=batch(3), environ_base=other).status_code == 202
    after = counted("event_ingest_rate_limited_requests_total", source="anonymous", limit="address")
    assert after - before == 2
    assert redis_client.xlen(tight.stream_key) == 2
