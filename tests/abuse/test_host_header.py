"""A forged `Host` in the analytics.js settings document: one request whose `Host` names the
attacker's server, kept by a shared cache that forwards `Host` but keys on the URL alone
(nginx `proxy_cache` with `proxy_set_header Host $host`), would send every visitor's events
there for as long as the cache keeps it.

With PUBLIC_URL the document names it whatever the request says, and may be cached by anyone;
without, it is built from the request and marked private: no shared cache may keep it."""

from __future__ import annotations

import dataclasses
import logging

import urllib3

from functions.ingest.app import create_app
from tests.conftest import gunicorn_serving

KEY = "wk_web_123"
SETTINGS_PATH = f"/v1/projects/{KEY}/settings"
# What an attacker's request may carry: its own host, and the forwarded headers a proxy trusts.
FORGED = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}


def segment_io(document: dict) -> tuple[str, str]:
    segment = document["integrations"]["Segment.io"]
    return segment["apiHost"], segment["protocol"]


def test_a_forged_host_never_reaches_the_document_when_public_url_is_set(settings) -> None:
    public = dataclasses.replace(
        settings, write_keys=(("web", KEY),), public_url="https://events.example.com/Prod"
    )
    client = create_app(public).test_client()
    # Behind a balancer that ends TLS, the request itself arrives over plain http.
    honest = client.get(SETTINGS_PATH, base_url="http://10.0.0.7:8000")
    forged = client.get(SETTINGS_PATH, headers=FORGED)
    for answer in (honest, forged):
        assert answer.status_code == 200
        assert segment_io(answer.get_json()) == ("events.example.com/Prod/v1", "https")
        assert answer.headers["Cache-Control"] == "public, max-age=300"
        assert "evil" not in answer.get_data(as_text=True)
    assert forged.get_data() == honest.get_data()  # one document, whoever asks: safe to share

    # The same through gunicorn, whose forwarded-header handling comes first.
    with gunicorn_serving(public, PUBLIC_URL=public.public_url, WEB_CONCURRENCY="1") as url:
        # Connection: close, or gunicorn's graceful stop would wait for the idle connection.
        headers = {**FORGED, "Connection": "close"}
        served = urllib3.request("GET", url + SETTINGS_PATH, headers=headers, retries=False)
    assert served.status == 200 and served.data == honest.get_data()


def test_without_public_url_the_document_is_kept_by_no_shared_cache(settings, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        client = create_app(settings).test_client()
        answers = [client.get(SETTINGS_PATH, headers=FORGED) for _ in range(3)]
    for answer in answers:
        assert answer.status_code == 200
        # Built from the request (the only host it knows), so fit for that browser alone.
        assert segment_io(answer.get_json()) == ("evil.example/v1", "http")
        cache_control = answer.headers["Cache-Control"]
        assert "public" not in cache_control and "private" in cache_control
    # Said once, at start, not per request.
    lines = [r.getMessage() for r in caplog.records if "PUBLIC_URL is unset" in r.getMessage()]
    assert len(lines) == 1 and "Cache-Control: private" in lines[0]
