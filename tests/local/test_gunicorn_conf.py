"""gunicorn with the project's configuration (`local/gunicorn.conf.py`) stays up under ordinary
crowded traffic: hundreds of idle keep-alive connections and slow senders cost only themselves,
and every slow client is cut off after a bound.

Latency under the crowd is a `make bench` row; here only answers and bounds count.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlparse

import pytest

from local.bench.crowd import Crowd, crowd_of, normal_requests
from local.server_limits import raise_open_files_limit
from tests.conftest import gunicorn_serving

BODY = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}]}).encode()
IDLE, SLOW = 500, 100
KEEPALIVE_S = 5  # local/gunicorn.conf.py's default: the bound on idle and slow clients


@pytest.fixture(autouse=True)
def enough_file_descriptors():
    """The crowd needs ~600 sockets here, and gunicorn (started after this) as many."""
    needed = 2 * (IDLE + SLOW) + 256
    if raise_open_files_limit(needed) < needed:
        pytest.skip(f"the hard limit on open files is below the {needed} this test needs")


def test_a_crowd_of_idle_and_slow_connections_starves_no_one(gunicorn_url):
    address = urlparse(gunicorn_url)
    host, port = address.hostname, address.port

    async def scenario():
        async with crowd_of(host, port, BODY, idle=IDLE, slow=SLOW) as crowd:
            await normal_requests(crowd, host, port, BODY, count=20, timeout_s=5.0)
            all_cut = await crowd.all_slow_cut(timeout_s=KEEPALIVE_S + 5)
        return crowd, all_cut

    crowd, all_cut = asyncio.run(scenario())
    assert crowd.idle_opened == IDLE and crowd.slow_opened == SLOW
    assert crowd.statuses == [202] * 20, crowd.statuses
    # Slow senders are disconnected once they have spent `keepalive` on their headers.
    assert all_cut, f"{crowd.slow_cut_after_s.count(None)} slow senders were never cut off"
    assert max(crowd.slow_cut_after_s) < KEEPALIVE_S + 3, crowd.slow_cut_after_s


def test_an_idle_keep_alive_connection_is_closed_after_keepalive(gunicorn_url):
    address = urlparse(gunicorn_url)
    with socket.create_connection((address.hostname, address.port), timeout=KEEPALIVE_S + 5) as s:
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # one request, then silence
        )
        answered = time.monotonic()
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        closed_after = time.monotonic() - answered
    assert received.startswith(b"HTTP/1.1 200")
    assert KEEPALIVE_S - 1 < closed_after < KEEPALIVE_S + 3


def test_a_body_sent_too_slowly_gets_408_within_the_body_timeout(settings):
    with gunicorn_serving(settings, GUNICORN_BODY_TIMEOUT="2") as url:
        address = urlparse(url)
        with socket.create_connection((address.hostname, address.port), timeout=10) as s:
            s.sendall(
                b"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(BODY)
            )
            started = time.monotonic()
            s.settimeout(0.5)
            for byte in BODY:  # one byte every half second: 2 s buys 4 of them
                s.sendall(bytes([byte]))
                try:
                    answer = s.recv(65536)
                    break
                except TimeoutError:
                    continue
            elapsed = time.monotonic() - started
            s.settimeout(5)
            while chunk := s.recv(65536):  # the rest of the answer, then the server hangs up
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"error":"request_timeout"' in answer
    assert 1.5 < elapsed < 4


def test_a_burst_of_concurrent_requests_shares_a_bounded_redis_pool(settings, redis_client):
    """Hundreds of requests at once, each in its own greenlet: they take turns on at most
    REDIS_MAX_CONNECTIONS connections per worker instead of opening one each."""
    clients_before = redis_client.info("clients")["connected_clients"]
    peak = []
    with gunicorn_serving(settings, REDIS_MAX_CONNECTIONS="2") as url:
        address = urlparse(url)

        async def burst():
            async def one():
                crowd = Crowd()
                await normal_requests(crowd, address.hostname, address.port, BODY, count=1)
                peak.append(redis_client.info("clients")["connected_clients"])
                return crowd.statuses[0]

            return await asyncio.gather(*(one() for _ in range(300)))

        statuses = asyncio.run(burst())
    assert set(statuses) <= {202, 503} and statuses.count(202) > 0, statuses
    assert max(peak) - clients_before <= 2 * 2  # two workers, two connections each
