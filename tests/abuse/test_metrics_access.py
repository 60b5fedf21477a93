"""Scrapers: `/metrics`, the ingest function's and the loop runner's (the consumer's counters),
is refused to whoever lacks METRICS_TOKEN, unless METRICS_PUBLIC opens it on purpose.

A scrape names every source and its volume, the refusals and the backlog, and each one of the
ingest function makes Redis work: nothing for whoever can reach the port."""

from __future__ import annotations

import dataclasses
import logging
import signal

import urllib3

from functions.ingest.app import create_app
from local import runner, stack
from shared.settings import Settings
from tests.conftest import free_port, settings_env, wait_until

TOKEN = "scraper-secret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BATCH = {"batch": [{"type": "track", "userId": "u1", "event": "Signed Up"}]}
# Whatever the scraper sends, with no token configured: nothing opens it.
ANY_CREDENTIALS = [{}, BEARER, {"Authorization": "Bearer "}, {"Authorization": "Basic Og=="}]


def test_the_ingest_metrics_are_closed_without_a_token_unless_opened(settings, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        client = create_app(settings).test_client()
    assert client.post("/batch", json=BATCH).status_code == 202  # a source to give away
    for headers in ANY_CREDENTIALS:
        answer = client.get("/metrics", headers=headers)
        assert answer.status_code == 403, headers
        assert answer.get_json()["error"] == "forbidden"
        assert "event_ingest_" not in answer.text
    # The start says once how to open it; the refused scrapes add no line.
    [notice] = [r.getMessage() for r in caplog.records if "/metrics is closed" in r.getMessage()]
    assert "METRICS_TOKEN" in notice and "METRICS_PUBLIC=true" in notice

    # A token opens it to its bearer only; METRICS_PUBLIC does not lift a token once set.
    keyed = create_app(dataclasses.replace(settings, metrics_token=TOKEN, metrics_public=True))
    keyed_client = keyed.test_client()
    assert keyed_client.get("/metrics").status_code == 401
    assert (
        keyed_client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert "event_ingest_http_requests_total" in keyed_client.get("/metrics", headers=BEARER).text
    # METRICS_PUBLIC alone opens it to anyone.
    opened = create_app(dataclasses.replace(settings, metrics_public=True)).test_client()
    assert "event_ingest_http_requests_total" in opened.get("/metrics").text


def scrape(port: int, headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
    url = f"http://127.0.0.1:{port}/metrics"
    return urllib3.request("GET", url, headers=headers, retries=False, timeout=5)


def answers(port: int) -> bool:
    try:
        scrape(port)
    except urllib3.exceptions.HTTPError:
        return False
    return True


def test_the_runner_metrics_are_closed_without_a_token_unless_opened(
    settings: Settings, moto_endpoint: str, http_s3
) -> None:
    settings = dataclasses.replace(settings, s3_endpoint_url=moto_endpoint)
    port = free_port()
    process = stack.start_runner(settings_env(settings, METRICS_PORT=str(port)), "--budget-s", "2")
    try:
        wait_until(lambda: answers(port), what="the runner's metrics port")
        for headers in ANY_CREDENTIALS:
            answer = scrape(port, headers)
            assert answer.status == 403, headers
            assert b"METRICS_TOKEN" in answer.data and b"event_ingest_" not in answer.data
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    # The same rule as the ingest function's, on the runner's own server.
    keyed = runner.serve_metrics(free_port(), "127.0.0.1", TOKEN, public=True)
    opened = runner.serve_metrics(free_port(), "127.0.0.1", None, public=True)
    try:
        keyed_port, opened_port = keyed.server_address[1], opened.server_address[1]
        refused = scrape(keyed_port, {"Authorization": "Bearer wrong"})
        assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert scrape(keyed_port).status == 401
        assert b"event_ingest_consumer_" in scrape(keyed_port, BEARER).data
        assert b"event_ingest_consumer_" in scrape(opened_port).data
    finally:
        for server in (keyed, opened):
            server.shutdown()
            server.server_close()
