"""Geolocation from a MaxMind-format City database (tests/geoip.py builds one)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.enrichment import geo
from shared.enrichment.geo import MAX_LOCATION_BYTES, GeoDatabase
from shared.enrichment.text import MAX_TEXT_BYTES
from shared.settings import ConfigError
from tests import geoip


def locate(database: GeoDatabase, text: str) -> dict | None:
    return database.locate(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    ("address", "place"),
    [
        (geoip.IN_LONDON, geoip.LONDON),
        (geoip.IN_LINKOPING, geoip.LINKOPING),
        (geoip.IN_BERLIN, geoip.BERLIN),
        (geoip.IN_SAO_PAULO, geoip.SAO_PAULO),
        (geoip.IN_BHUTAN, geoip.COUNTRY_ONLY),
    ],
)
def test_a_location_has_segment_s_names_and_only_what_the_record_holds(
    city_database: Path, address: str, place: geoip.Place
) -> None:
    coarse, full = GeoDatabase(str(city_database), True), GeoDatabase(str(city_database), False)
    assert locate(coarse, address) == place.location(coarse=True)
    assert locate(full, address) == place.location(coarse=False)


def test_coordinates_are_rounded_to_a_tenth_of_a_degree_unless_ips_are_kept_in_full(
    city_database: Path,
) -> None:
    coarse = locate(GeoDatabase(str(city_database), True), geoip.IN_LONDON)
    full = locate(GeoDatabase(str(city_database), False), geoip.IN_LONDON)
    assert (coarse["latitude"], coarse["longitude"]) == (51.5, -0.1)
    assert (full["latitude"], full["longitude"]) == (51.5142, -0.0931)


@pytest.mark.parametrize(
    "address", [geoip.NOWHERE, "127.0.0.1", "10.1.2.3", "192.168.0.1", "::1", "fe80::1"]
)
def test_an_address_absent_or_private_has_no_location(city_database: Path, address: str) -> None:
    assert locate(GeoDatabase(str(city_database), True), address) is None


def test_located_is_the_location_packed_and_cached(city_database: Path) -> None:
    database = GeoDatabase(str(city_database), True)
    address = ipaddress.ip_address(geoip.IN_LONDON)
    assert database.located(address) is database.located(address)
    assert msgspec.msgpack.decode(database.located(address)) == geoip.LONDON.location()
    assert database.located(ipaddress.ip_address("10.1.2.3")) is None


def test_the_quick_global_check_agrees_with_ipaddress_on_every_ipv4_16_and_ipv6_prefix() -> None:
    """The shortcut says "global" only where `is_global` does: checked at the first, a middle
    and the last address of every IPv4 /16 and IPv6 /16 it claims."""
    for octet in geo._GLOBAL_IPV4_OCTETS:
        for second in range(256):
            for low in (0, 0x7F01, 0xFFFF):
                address = ipaddress.IPv4Address((octet << 24) | (second << 16) | low)
                assert address.is_global, address
    for prefix in geo._GLOBAL_IPV6_PREFIXES:
        for low in (0, 1 << 100, (1 << 112) - 1):
            address = ipaddress.IPv6Address((prefix << 112) | low)
            assert address.is_global, address


@given(st.ip_addresses())
def test_the_quick_global_check_is_is_global(address: geo.Address) -> None:
    assert geo.is_global(address) is address.is_global


def test_a_missing_or_unreadable_database_fails_with_one_line_naming_the_path(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "GeoLite2-City.mmdb"
    with pytest.raises(ConfigError) as refused:
        GeoDatabase(str(missing), True)
    assert str(missing) in str(refused.value) and "\n" not in str(refused.value)
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database\n" * 10)
    with pytest.raises(ConfigError) as refused:
        GeoDatabase(str(junk), True)
    assert str(junk) in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match=str(tmp_path)):
        GeoDatabase(str(tmp_path), True)  # a directory


def test_a_database_that_is_no_city_database_is_refused(tmp_path: Path) -> None:
    path = geoip.write_city_database(tmp_path / "Country.mmdb", [])
    data = path.read_bytes().replace(b"GeoLite2-City", b"GeoLite2-Ctry")
    path.write_bytes(data)
    with pytest.raises(ConfigError, match="not a City one"):
        GeoDatabase(str(path), True)


def test_records_of_the_wrong_shape_give_what_is_usable(tmp_path: Path) -> None:
    """The database is the user's: a field of another type than GeoLite2's (which the reader
    refuses to walk through) is skipped, and the record's other fields still count."""
    long = "Ü" * 100
    records = {
        "81.2.69.0/24": {},
        "81.2.70.0/24": {"country": "Germany", "city": [], "location": "x"},
        "81.2.71.0/24": {
            "country": {"names": {"en": long}, "iso_code": "germany"},
            "subdivisions": "Berlin",
            "location": {"latitude": 91.0, "longitude": 13.4, "time_zone": 7},
        },
        "81.2.72.0/24": {"location": {"latitude": True, "longitude": 1.0}},
        "81.2.73.0/24": "a string, no record",
        "81.2.74.0/24": {"subdivisions": [{"names": "Bavaria"}], "city": {"names": {"en": "B"}}},
        "81.2.75.0/24": {"subdivisions": [], "country": {"iso_code": "de"}},
    }
    path = geoip.write_city_database(tmp_path / "odd.mmdb", records.items())
    database = GeoDatabase(str(path), True)
    located = {network: locate(database, network.replace("0/24", "9")) for network in records}
    assert located == {
        "81.2.69.0/24": None,
        "81.2.70.0/24": None,
        "81.2.71.0/24": {"country": "Ü" * (MAX_TEXT_BYTES // 2)},
        "81.2.72.0/24": None,
        "81.2.73.0/24": None,
        "81.2.74.0/24": {"city": "B"},
        "81.2.75.0/24": {"countryCode": "DE"},
    }


def test_a_closed_database_locates_nothing(city_database: Path) -> None:
    database = GeoDatabase(str(city_database), True)
    database.close()
    assert locate(database, geoip.IN_LONDON) is None


def test_the_stated_bound_holds_for_the_largest_location(tmp_path: Path) -> None:
    long = "é" * 200
    record = {
        "country": {"names": {"en": long}, "iso_code": "DE"},
        "subdivisions": [{"names": {"en": long}}],
        "city": {"names": {"en": long}},
        "location": {"latitude": -89.123456789, "longitude": 179.98765432, "time_zone": long},
    }
    path = geoip.write_city_database(tmp_path / "long.mmdb", [("81.2.69.0/24", record)])
    location = locate(GeoDatabase(str(path), False), "81.2.69.1")
    assert len(location) == 7
    assert len(msgspec.msgpack.encode({"location": location})) - 1 <= MAX_LOCATION_BYTES
