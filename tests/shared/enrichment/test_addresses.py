"""IP_HANDLING: what `context.ip` keeps of an address, ours or the client's."""

from __future__ import annotations

import ipaddress

import pytest

from shared.enrichment.addresses import ANONYMIZE, FULL, NONE, client_sent, stored_form
from shared.settings import ConfigError, Settings


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("address", "anonymized"),
    [
        ("81.2.69.142", "81.2.69.0"),
        ("255.255.255.255", "255.255.255.0"),
        ("2a02:ec80:1234:5678:9abc::1", "2a02:ec80:1234::"),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8:ffff::"),
        ("fe80::1%eth0", "fe80::"),
    ],
)
def test_anonymize_keeps_an_ipv4_24_and_an_ipv6_48(address: str, anonymized: str) -> None:
    assert stored_form(ip(address), ANONYMIZE) == anonymized


def test_full_keeps_the_address_without_its_zone_and_none_keeps_nothing() -> None:
    assert stored_form(ip("81.2.69.142"), FULL) == "81.2.69.142"
    assert stored_form(ip("fe80::1%" + "z" * 200), FULL) == "fe80::1"
    assert stored_form(ip("81.2.69.142"), NONE) is None
    assert stored_form(None, ANONYMIZE) is None


def test_a_client_sent_address_is_cut_like_ours_and_located_in_full() -> None:
    assert client_sent("81.2.69.142", ANONYMIZE) == ("81.2.69.0", ip("81.2.69.142"), True)
    assert client_sent(" ::ffff:81.2.69.142 ", ANONYMIZE)[:2] == ("81.2.69.0", ip("81.2.69.142"))
    assert client_sent("81.2.69.142", FULL) == ("81.2.69.142", ip("81.2.69.142"), True)
    assert client_sent("81.2.69.142", NONE) == (None, ip("81.2.69.142"), True)


def test_a_client_sent_value_that_is_no_address_is_removed_unless_kept_in_full() -> None:
    for junk in ("1.2.3.4:80", "unknown", "", "x" * 100_000):
        assert client_sent(junk, ANONYMIZE) == (None, None, True)
        assert client_sent(junk, FULL) == (junk, None, True)


@pytest.mark.parametrize("placeholder", ["0.0.0.0", "::", "::ffff:0.0.0.0"])
def test_an_unspecified_address_counts_as_none_sent(placeholder: str) -> None:
    for handling in (ANONYMIZE, FULL, NONE):
        assert client_sent(placeholder, handling) == (None, None, False)


def test_ip_handling_is_checked_at_start() -> None:
    assert Settings.from_env({}).ip_handling == ANONYMIZE
    assert Settings.from_env({"IP_HANDLING": " Full "}).ip_handling == FULL
    with pytest.raises(ConfigError, match="IP_HANDLING must be one of anonymize, full, none"):
        Settings.from_env({"IP_HANDLING": "truncate"})
