"""Geolocation: `context.location` from a MaxMind-format City database (GEOIP_DATABASE).

GeoLite2-City, DB-IP's City Lite and MaxMind's commercial GeoIP2-City share one record layout:
`country.names.en`, `country.iso_code`, `subdivisions[0].names.en`, `city.names.en`,
`location.latitude`, `location.longitude`, `location.time_zone`. They become Segment's names
(`country`, `region`, `city`, `latitude`, `longitude`) plus `countryCode` and `timeZone`; only
what the record holds is set. Coordinates are rounded to `COARSE_DECIMALS` (about 11 km) unless
IPs are stored in full: an anonymized address must not be stored beside the spot it came from.

The reader is maxminddb-rust (MaxMind's maintainer's Rust reader, maxminddb's API) over a memory
map: opening costs little, and pages are read as lookups touch them. Each field is read by its
path (`get_path`), which decodes only what the path reaches: a City record holds every name in
eight languages, and decoding all of it (as `get` does) cost three times the five paths (docs/
enrichment.md#cost). Lookups are cached per address (a client sends many requests), packed as
they are stored (`codec.packed`: events of a request share it). Addresses that are not global are
never looked up: no database holds them.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from typing import Any

import maxminddb_rust
import msgspec

from shared.codec import packed
from shared.enrichment.text import MAX_TEXT_BYTES, capped
from shared.settings import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

COARSE_DECIMALS = 1
LOCATION_CACHE = 8192
# Where a City record holds what `location` takes (GeoLite2's layout; the first subdivision is
# the largest, a state or a country's region).
COUNTRY = ("country", "names", "en")
COUNTRY_CODE = ("country", "iso_code")
REGION = ("subdivisions", 0, "names", "en")
CITY = ("city", "names", "en")
PLACE = ("location",)  # latitude, longitude, time_zone (and accuracy_radius, not kept)
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
        field = self._field
        return location_from(
            *(field(address, path) for path in (COUNTRY, COUNTRY_CODE, REGION, CITY, PLACE)),
            coarse=self.coarse,
        )

    def _field(self, address: Address, path: tuple[str | int, ...]) -> Any:
        """The record's value at `path`, or None: absent, or the record is of another shape
        (the reader refuses a path through a value of another type: the database is the
        user's, and one odd field must not lose the others)."""
        try:
            return self._reader.get_path(address, path)
        except (ValueError, maxminddb_rust.InvalidDatabaseError):
            return None

    def close(self) -> None:
        self._reader.close()


def open_reader(path: str) -> maxminddb_rust.Reader:
    """The database at `path`, or ConfigError: one line naming the path and what is wrong."""
    try:
        if not os.path.isfile(path):
            raise ConfigError(f"GEOIP_DATABASE: {path} is not a file")
        reader = maxminddb_rust.open_database(path)
    except ConfigError:
        raise
    except (OSError, ValueError, maxminddb_rust.InvalidDatabaseError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"GEOIP_DATABASE: cannot read {path}: {reason}") from None
    if "City" not in reader.metadata().database_type:
        # A Country or ASN database has no cities; said at start rather than found out later.
        kind = reader.metadata().database_type
        reader.close()
        raise ConfigError(f"GEOIP_DATABASE: {path} is a {kind} database, not a City one")
    return reader


def location_from(
    country: Any, code: Any, region: Any, city: Any, place: Any, coarse: bool
) -> dict[str, Any] | None:
    """The `location` object of a City record's fields (None if they hold nothing of it): its
    values at COUNTRY, COUNTRY_CODE, REGION, CITY and PLACE. Anything of the wrong type is
    skipped: the database is the user's."""
    location: dict[str, Any] = {}
    if name := capped(country):
        location["country"] = name
    if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
        location["countryCode"] = code.upper()
    if name := capped(region):
        location["region"] = name
    if name := capped(city):
        location["city"] = name
    place = _dict(place)
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
