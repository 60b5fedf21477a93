"""The client's address: the peer, X-Forwarded-For only through TRUSTED_PROXIES (walked from
the right as nginx's real_ip_recursive), and on Lambda the platform's source IP, read from
apig-wsgi's environ for the sample events of functions/ingest/events/."""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from apig_wsgi import get_environ_v1, get_environ_v2

from functions.ingest import client_address as module
from functions.ingest.client_address import client_address, parse_address
from shared.settings import Settings

SAMPLES = Path(__file__).parents[3] / "functions" / "ingest" / "events"
PROXIES = Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8:ffff::/48"}).trusted_proxies


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def gunicorn_environ(peer: str, forwarded_for: str | None = None) -> dict[str, str]:
    environ = {"REMOTE_ADDR": peer}
    if forwarded_for is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return environ


def sample(name: str, forwarded_for: str | None = None) -> dict[str, Any]:
    """A sample event, its X-Forwarded-For (single- and multi-value forms) replaced."""
    event = copy.deepcopy(json.loads((SAMPLES / name).read_text()))
    if forwarded_for is not None:
        for form in ("headers", "multiValueHeaders"):
            headers = event.get(form) or {}
            for header in [h for h in headers if h.lower() == "x-forwarded-for"]:
                multi = isinstance(headers[header], list)
                headers[header] = [forwarded_for] if multi else forwarded_for
    return event


# --- behind no proxy ---------------------------------------------------------------------------


def test_the_peer_is_the_client_when_no_proxy_is_trusted() -> None:
    assert client_address(gunicorn_environ("203.0.113.9")) == ip("203.0.113.9")


def test_a_forwarded_for_from_a_peer_not_trusted_is_ignored() -> None:
    spoofed = gunicorn_environ("203.0.113.9", "198.51.100.1, 10.0.0.1")
    assert client_address(spoofed) == ip("203.0.113.9")
    assert client_address(spoofed, PROXIES) == ip("203.0.113.9")


def test_a_dual_stack_socket_s_mapped_address_is_the_ipv4_address() -> None:
    assert client_address(gunicorn_environ("::ffff:203.0.113.9")) == ip("203.0.113.9")


def test_no_address_at_all_is_none() -> None:
    assert client_address({}) is None
    assert client_address(gunicorn_environ("")) is None


# --- through trusted proxies -------------------------------------------------------------------


def test_through_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() -> None:
    # The client wrote 198.51.100.1 itself; the proxy appended what it saw, 203.0.113.7.
    environ = gunicorn_environ("10.1.2.3", "198.51.100.1, 203.0.113.7")
    assert client_address(environ, PROXIES) == ip("203.0.113.7")


def test_trusted_hops_are_walked_through_recursively() -> None:
    environ = gunicorn_environ("10.1.2.3", "198.51.100.1, 203.0.113.7, 10.9.9.9, 10.8.8.8")
    assert client_address(environ, PROXIES) == ip("203.0.113.7")


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    environ = gunicorn_environ("10.1.2.3", "10.7.7.7, 10.8.8.8")
    assert client_address(environ, PROXIES) == ip("10.7.7.7")


def test_a_trusted_proxy_without_the_header_is_itself_the_client() -> None:
    assert client_address(gunicorn_environ("10.1.2.3"), PROXIES) == ip("10.1.2.3")


def test_a_malformed_hop_ends_the_walk_at_the_last_trusted_one() -> None:
    # Junk cannot buy a fresh address: it stops at the proxy, whose address all junk shares.
    environ = gunicorn_environ("10.1.2.3", "198.51.100.1, unknown, 10.8.8.8")
    assert client_address(environ, PROXIES) == ip("10.8.8.8")


def test_several_forwarded_for_headers_count_as_one_list() -> None:
    # WSGI servers join repeated headers with commas, in order.
    environ = gunicorn_environ("10.1.2.3", "198.51.100.1,203.0.113.7,10.8.8.8")
    assert client_address(environ, PROXIES) == ip("203.0.113.7")


def test_hops_with_ports_and_brackets_and_ipv6_proxies() -> None:
    environ = gunicorn_environ(
        "2001:db8:ffff::1", "[2001:db8:1:2::5]:4431, 203.0.113.7:80, [2001:db8:ffff::2]:443"
    )
    assert client_address(environ, PROXIES) == ip("203.0.113.7")
    environ = gunicorn_environ("2001:db8:ffff::1", "[2001:db8:1:2::5]:4431")
    assert client_address(environ, PROXIES) == ip("2001:db8:1:2::5")


def test_a_unix_socket_peer_is_a_local_proxy_and_trusted() -> None:
    environ = gunicorn_environ("", "198.51.100.1, 203.0.113.7")
    assert client_address(environ) == ip("203.0.113.7")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("192.0.2.1:443", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("192.0.2.256", None),
        ("example.com:80", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    assert parse_address(text) == (None if expected is None else ip(expected))


def test_a_private_peer_forwarding_untrusted_is_warned_about_once(caplog, monkeypatch) -> None:
    monkeypatch.setattr(module, "_warned_untrusted_proxy", False)
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        client_address(gunicorn_environ("93.184.216.34", "198.51.100.1"))  # a client
        assert not caplog.records
        client_address(gunicorn_environ("10.1.2.3", "198.51.100.1"))
        client_address(gunicorn_environ("10.1.2.4", "198.51.100.2"))
    assert len(caplog.records) == 1
    assert "TRUSTED_PROXIES" in caplog.records[0].getMessage()


# --- on Lambda ---------------------------------------------------------------------------------


def test_http_api_v2_is_the_platform_s_source_ip_whatever_the_header_says() -> None:
    event = sample("http-api-batch.json", forwarded_for="6.6.6.6, 198.51.100.23")
    environ = get_environ_v2(event, None)
    assert client_address(environ) == ip("198.51.100.23")
    assert client_address(environ, PROXIES) == ip("198.51.100.23")


def test_rest_api_is_the_source_ip_not_apig_wsgi_s_remote_addr() -> None:
    event = sample("rest-api-batch.json", forwarded_for="6.6.6.6, 203.0.113.10")
    environ = get_environ_v1(event, None, encode_query_params=True)
    assert environ["REMOTE_ADDR"] == "6.6.6.6"  # apig-wsgi's: the client's own first entry
    assert client_address(environ) == ip("203.0.113.10")


def test_behind_a_trusted_proxy_in_front_of_api_gateway_the_header_is_walked() -> None:
    # A CDN in front: API Gateway sees the CDN's address and appends it to the header.
    event = sample("http-api-batch.json", forwarded_for="6.6.6.6, 203.0.113.7, 10.2.2.2")
    event["requestContext"]["http"]["sourceIp"] = "10.2.2.2"
    assert client_address(get_environ_v2(event, None), PROXIES) == ip("203.0.113.7")


def test_an_alb_event_is_the_entry_the_alb_appended() -> None:
    event = sample("alb-batch.json", forwarded_for="6.6.6.6, 192.0.2.45")
    environ = get_environ_v1(event, None, encode_query_params=True)
    assert client_address(environ) == ip("192.0.2.45")
    assert client_address(sample_environ_without_forwarded_for("alb-batch.json")) is None


def sample_environ_without_forwarded_for(name: str) -> dict[str, Any]:
    event = sample(name)
    for form in ("headers", "multiValueHeaders"):
        headers = event.get(form) or {}
        for header in [h for h in headers if h.lower() == "x-forwarded-for"]:
            del headers[header]
    return get_environ_v1(event, None, encode_query_params=True)
