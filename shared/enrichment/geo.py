"""Geolocation: `context.location` from a MaxMind-format City database (GEOIP_DATABASE).

GeoLite2-City, DB-IP's City Lite and MaxMind's commercial GeoIP2-City share one record layout:
`country.names.en`, `country.iso_code`, `subdivisions[0].names.en`, `city.names.en`,
`location.latitude`, `location.longitude`, `location.time_zone`. They become Segment's names
(`country`, `region`, `city`, `latitude`, `longitude`) plus `countryCode` and `timeZone`; only
what the record holds is set. Coordinates are rounded to `COARSE_DECIMALS` (about 11 km) unless
IPs are stored in full: an anonymized address must not be stored beside the spot it came from.

The reader is maxminddb's C extension over a memory map: opening costs little, and pages are
read as lookups touch them. A lookup that misses the cache costs about 20 µs (decoding the
record, in every language, is most of it), so lookups are cached per address (a client sends
many requests), packed as they are stored (`codec.packed`: events of a request share it).
Addresses that are not global are never looked up: no database holds them.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from typing import Any

import maxminddb
import msgspec

from shared.codec import packed
from shared.enrichment.text import MAX_TEXT_BYTES, capped
from shared.settings import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

COARSE_DECIMALS = 1
LOCATION_CACHE = 8192
# The most MsgPack bytes a `location` object holds, key included: "location" (9) and a map
# header (1); five strings of at most MAX_TEXT_BYTES (key, a 2-byte header, the text) and the
# 2-letter code; two float64s (9 each) with their keys.
MAX_LOCATION_BYTES = (
    9 + 1
    + sum(len(key) + 1 + 2 + MAX_TEXT_BYTES for key in ("country", "region", "city", "timeZone"))
    + len("countryCode") + 1 + 1 + 2
    + sum(len(key) + 1 + 9 for key in ("latitude", "longitude"))
)  # fmt: skip


# First octets of IPv4 addresses that are all global, and the first 16 bits of IPv6 ones
# (most of 2000::/3; the IETF's 2001::/23, 6to4's 2002::/16 and 3fff::/20 excluded): the
# addresses outside them are judged by `is_global`, which costs 5 µs (tests/shared/enrichment/
# test_geo.py checks these against it).
_GLOBAL_IPV4_OCTETS = frozenset(range(1, 224)) - {10, 100, 127, 169, 172, 192, 198, 203}
_GLOBAL_IPV6_PREFIXES = range(0x2003, 0x3000)


def is_global(address: Address) -> bool:
    """`address.is_global`, quickly for the common public addresses."""
    if address.version == 4:
        if (int(address) >> 24) in _GLOBAL_IPV4_OCTETS:
            return True
    elif (int(address) >> 112) in _GLOBAL_IPV6_PREFIXES:
        return True
    return address.is_global


class GeoDatabase:
    """A City database, opened at start. `locate(address)`: the `location` object, or None;
    `located(address)`: the same packed, cached."""

    def __init__(self, path: str, coarse: bool) -> None:
        self.path = path
        self.coarse = coarse
        self._reader = open_reader(path)
        self.located = lru_cache(maxsize=LOCATION_CACHE)(self._located)

    def _located(self, address: Address) -> msgspec.Raw | None:
        location = self.locate(address)
        return None if location is None else packed(location)

    def locate(self, address: Address) -> dict[str, Any] | None:
        # Addresses no database holds: not worth a lookup, and never an answer.
        if not is_global(address):
            return None
        try:
            record = self._reader.get(address)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return None
        return location_of(record, self.coarse) if isinstance(record, dict) else None

    def close(self) -> None:
        self._reader.close()


def open_reader(path: str) -> maxminddb.Reader:
    """The database at `path`, or ConfigError: one line naming the path and what is wrong."""
    try:
        if not os.path.isfile(path):
            raise ConfigError(f"GEOIP_DATABASE: {path} is not a file")
        reader = maxminddb.open_database(path)
    except ConfigError:
        raise
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"GEOIP_DATABASE: cannot read {path}: {reason}") from None
    if "City" not in reader.metadata().database_type:
        # A Country or ASN database has no cities; said at start rather than found out later.
        kind = reader.metadata().database_type
        reader.close()
        raise ConfigError(f"GEOIP_DATABASE: {path} is a {kind} database, not a City one")
    return reader


def location_of(record: dict[str, Any], coarse: bool) -> dict[str, Any] | None:
    """The `location` object of a City record (None if it holds nothing of it). Anything of
    the wrong type in the record is skipped: the database is the user's."""
    location: dict[str, Any] = {}
    country = _dict(record.get("country"))
    if name := capped(_dict(country.get("names")).get("en")):
        location["country"] = name
    code = country.get("iso_code")
    if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
        location["countryCode"] = code.upper()
    subdivisions = record.get("subdivisions")
    first = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else None
    if name := capped(_dict(_dict(first).get("names")).get("en")):
        location["region"] = name
    if name := capped(_dict(_dict(record.get("city")).get("names")).get("en")):
        location["city"] = name
    place = _dict(record.get("location"))
    latitude = _coordinate(place.get("latitude"), 90)
    longitude = _coordinate(place.get("longitude"), 180)
    if latitude is not None and longitude is not None:  # one alone locates nothing
        if coarse:
            latitude = round(latitude, COARSE_DECIMALS)
            longitude = round(longitude, COARSE_DECIMALS)
        location["latitude"], location["longitude"] = latitude, longitude
    if zone := capped(place.get("time_zone")):
        location["timeZone"] = zone
    return location or None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _coordinate(value: Any, limit: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if -limit <= value <= limit else None
