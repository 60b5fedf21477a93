"""MaxMind-format City databases for tests and the benchmark, built with mmdb-writer.

GeoLite2 cannot be downloaded here (its licence needs an account), so tests make their own
database with GeoLite2-City's record layout: `country.names.en`, `country.iso_code`,
`subdivisions[0].names.en`, `city.names.en`, `location.latitude`, `location.longitude`,
`location.time_zone`. An IPv6 database holding IPv4 networks under ::/96, as GeoLite2 does.

- `write_city_database(path, networks)`: any networks, each with a `Place` or a raw record;
- `small_city_database(path)`: PLACES (IPv4 and IPv6), for tests;
- `synthetic_networks(count)`: `count` distinct global IPv4 /24 networks with places taken in
  turn from PLACES, for a database of realistic size (the benchmark's: a million or more).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet

DATABASE_TYPE = "GeoLite2-City"


@dataclass(frozen=True)
class Place:
    """What a City record says of a network; None leaves the field out of the record."""

    country: str | None = None
    country_code: str | None = None
    region: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    time_zone: str | None = None

    def location(self, coarse: bool = True) -> dict[str, Any]:
        """The `context.location` ingest stores for it (coordinates rounded to 1 decimal when
        IPs are anonymized, `coarse`)."""
        location: dict[str, Any] = {}
        for key, value in (
            ("country", self.country),
            ("countryCode", self.country_code),
            ("region", self.region),
            ("city", self.city),
        ):
            if value is not None:
                location[key] = value
        if self.latitude is not None and self.longitude is not None:
            latitude, longitude = self.latitude, self.longitude
            if coarse:
                latitude, longitude = round(latitude, 1), round(longitude, 1)
            location["latitude"], location["longitude"] = latitude, longitude
        if self.time_zone is not None:
            location["timeZone"] = self.time_zone
        return location


LONDON = Place("United Kingdom", "GB", "England", "London", 51.5142, -0.0931, "Europe/London")
LINKOPING = Place(
    "Sweden", "SE", "Östergötland County", "Linköping", 58.4167, 15.6167, "Europe/Stockholm"
)
BERLIN = Place("Germany", "DE", "Land Berlin", "Berlin", 52.5244, 13.4105, "Europe/Berlin")
SAO_PAULO = Place("Brazil", "BR", "São Paulo", "São Paulo", -23.5475, -46.6361, "America/Sao_Paulo")
COUNTRY_ONLY = Place("Bhutan", "BT")

# Global networks (documentation and private ranges are never looked up), IPv4 and IPv6.
PLACES: dict[str, Place] = {
    "81.2.69.0/24": LONDON,
    "89.160.20.0/24": LINKOPING,
    "67.43.156.0/24": COUNTRY_ONLY,
    "2a02:ec80::/32": BERLIN,
    "2804:14c::/32": SAO_PAULO,
}
# Addresses in them, and one that no network holds.
IN_LONDON, IN_LINKOPING, IN_BHUTAN = "81.2.69.142", "89.160.20.112", "67.43.156.7"
IN_BERLIN, IN_SAO_PAULO = "2a02:ec80:1234:5678::9", "2804:14c:abcd:1::1"
NOWHERE = "8.8.8.8"


def city_record(place: Place) -> dict[str, Any]:
    """GeoLite2-City's record for `place` (with the few fields beside ours it also has)."""
    record: dict[str, Any] = {}
    if place.country is not None or place.country_code is not None:
        country: dict[str, Any] = {"geoname_id": 1}
        if place.country is not None:
            country["names"] = {"en": place.country, "de": place.country}
        if place.country_code is not None:
            country["iso_code"] = place.country_code
        record["country"] = country
        record["continent"] = {"code": "EU", "names": {"en": "Europe"}}
    if place.region is not None:
        record["subdivisions"] = [{"iso_code": "X", "names": {"en": place.region}}]
    if place.city is not None:
        record["city"] = {"geoname_id": 2, "names": {"en": place.city}}
    location: dict[str, Any] = {}
    if place.latitude is not None:
        location["latitude"] = MmdbF64(place.latitude)
    if place.longitude is not None:
        location["longitude"] = MmdbF64(place.longitude)
    if place.time_zone is not None:
        location["time_zone"] = place.time_zone
    if location:
        location["accuracy_radius"] = 20
        record["location"] = location
    return record


def write_city_database(
    path: Path | str, networks: Iterable[tuple[str, Place | dict[str, Any]]]
) -> Path:
    """A City database at `path` holding each (network, Place or raw record); `path`."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=DATABASE_TYPE,
        languages=["en"],
        description="synthetic test database",
    )
    records: dict[Place, dict[str, Any]] = {}  # one record per place: the writer shares it
    for network, place in networks:
        if isinstance(place, Place):
            record = records.get(place)
            if record is None:
                record = records[place] = city_record(place)
        else:
            record = place
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return Path(path)


def small_city_database(path: Path | str) -> Path:
    """PLACES as a database at `path`."""
    return write_city_database(path, PLACES.items())


def synthetic_networks(count: int) -> Iterator[tuple[str, Place]]:
    """`count` distinct global IPv4 /24 networks from 1.0.0.0 up, places from PLACES in turn."""
    places = list(PLACES.values())
    produced, block = 0, 1 << 16  # 1.0.0.0/24
    while produced < count:
        network = ipaddress.IPv4Network((block << 8, 24))
        block += 1
        if not network.is_global:
            continue
        yield str(network), places[produced % len(places)]
        produced += 1
