"""A flood from one write key or one address must be answered 429, while other sources and
other addresses keep getting 2xx.

A browser source's key sits in every page that uses it: anyone may send with it, as fast as
they like, and before rate limits one such sender could take everything the service accepts.
Now each source and each client address has a token bucket in Redis, checked by the append
script itself: over it, the answer is 429 with Retry-After and nothing is stored.

Real parts: gunicorn with the production config (two workers), a real redis-server, and
clients connecting from distinct loopback addresses (127.0.0.2, 127.0.0.3, ...), so that the
address each request comes from is the socket's, as in production. Limits are small (a few
events a second, bursts of a few) so each flood is over within a second.
"""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import redis

from shared import codec
from shared.settings import Settings
from tests.conftest import gunicorn_serving

FLOOD = 30  # requests of one event: several times every burst below


@dataclass
class Sender:
    """One client: posts one-event batches from `address`, remembering what was accepted."""

    url: str
    key: str
    address: str  # the socket's own: a loopback address of this test's
    statuses: list[int] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    retry_after: set[str] = field(default_factory=set)

    def send(self, forwarded_for: str | None = None) -> int:
        message_id = uuid.uuid4().hex
        body = {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": message_id}]}
        headers = {"Content-Type": "application/json", "Authorization": basic(self.key)}
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=10, source_address=(self.address, 0)
        )
        try:
            connection.request("POST", "/v1/batch", json.dumps(body), headers)
            answer = connection.getresponse()
            payload = answer.read()
        finally:
            connection.close()
        self.statuses.append(answer.status)
        if 200 <= answer.status < 300:
            self.accepted.add(message_id)
        else:
            assert answer.status == 429, (answer.status, payload)
            assert json.loads(payload)["code"] == "rate_limited"
            self.refused.add(message_id)
            self.retry_after.add(answer.getheader("Retry-After"))
        return answer.status

    @property
    def answered_429(self) -> int:
        return self.statuses.count(429)


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def stored_message_ids(client: redis.Redis, stream_key: str) -> set[str]:
    return {
        event["messageId"]
        for _, fields in client.xrange(stream_key)
        for event in codec.decode_entry(fields)
    }


# One server for the module: web limited as a source (2 events/s, 5 at once), backend lifted
# (a server source), shop on the default; every address 2 events/s, 5 at once; 127.0.0.2 is a
# trusted proxy. Each test sends from addresses of its own, so their buckets are apart.
LIMITS = {
    "WRITE_KEYS": "web:wk_web,backend:wk_backend,shop:wk_shop",
    "RATE_LIMIT_SOURCES": "web=2/5,backend=0",
    "RATE_LIMIT_ADDRESS_EVENTS_PER_S": "2",
    "RATE_LIMIT_ADDRESS_BURST": "5",
    "TRUSTED_PROXIES": "127.0.0.2/32",
}
MOST = FLOOD // 2  # the burst passes, and what refills while the flood lasts


@pytest.fixture(scope="module")
def module_settings(redis_server) -> Settings:
    return Settings(redis_url=redis_server.url, stream_key=f"events-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
def url(module_settings: Settings) -> Iterator[str]:
    with gunicorn_serving(module_settings, **LIMITS) as served:
        yield served


@pytest.fixture
def client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def assert_refusals_stored_nothing(client, settings, *senders: Sender) -> None:
    stored = stored_message_ids(client, settings.stream_key)
    for sender in senders:
        assert sender.accepted <= stored
        assert not sender.refused & stored


def test_a_flood_from_one_key_is_429_while_another_source_keeps_getting_2xx(
    url, client, module_settings
) -> None:
    # From ten addresses, three requests each: under every address's burst, so only web's
    # own bucket can stop it.
    flooders = [Sender(url, "wk_web", f"127.0.1.{n}") for n in range(10)]
    backend = Sender(url, "wk_backend", "127.0.1.100")  # lifted: no bucket at all
    for n in range(FLOOD):
        flooders[n % len(flooders)].send()
        backend.send()

    assert sum(sender.answered_429 for sender in flooders) >= MOST
    assert set(backend.statuses) == {200}
    assert {value for sender in flooders for value in sender.retry_after} == {"1"}
    assert_refusals_stored_nothing(client, module_settings, backend, *flooders)


def test_a_flood_from_one_address_is_429_while_another_address_keeps_getting_2xx(
    url, client, module_settings
) -> None:
    # Both send with the same key (shop, whose own limit is far above this).
    flooder = Sender(url, "wk_shop", "127.0.2.1")
    visitor = Sender(url, "wk_shop", "127.0.2.2")
    for n in range(FLOOD):
        flooder.send()
        if n % 10 == 0:
            visitor.send()

    assert flooder.answered_429 >= MOST
    assert set(visitor.statuses) == {200}
    assert flooder.retry_after == {"1"}
    assert_refusals_stored_nothing(client, module_settings, flooder, visitor)


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(
    url, client, module_settings
) -> None:
    flooder = Sender(url, "wk_shop", "127.0.3.1")  # not a trusted proxy
    for n in range(FLOOD):  # a fresh address claimed for every request
        flooder.send(forwarded_for=f"198.51.100.{n}")

    assert flooder.answered_429 >= MOST
    assert_refusals_stored_nothing(client, module_settings, flooder)


def test_through_a_trusted_proxy_the_forwarded_address_is_the_client(
    url, client, module_settings
) -> None:
    proxy = Sender(url, "wk_shop", "127.0.0.2")  # forwards for two clients
    flooder_via_proxy, visitor_via_proxy = [], []
    for n in range(FLOOD):
        # A client's own claim (left) is not believed; the proxy's entry (right) is.
        flooder_via_proxy.append(proxy.send(forwarded_for="10.9.9.9, 203.0.113.7"))
        if n % 10 == 0:
            visitor_via_proxy.append(proxy.send(forwarded_for="10.9.9.9, 203.0.113.8"))

    assert flooder_via_proxy.count(429) >= MOST
    assert set(visitor_via_proxy) == {200}
    assert_refusals_stored_nothing(client, module_settings, proxy)
