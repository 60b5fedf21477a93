"""A synthetic MaxMind-format City database for the tests and the benchmark, built with
mmdb-writer.

GeoLite2 cannot be downloaded here (its licence needs an account), so the tests and `make bench`
build their own database with GeoLite2-City's layout: an IPv6 tree holding IPv4 networks under
::/96, and records shaped like GeoLite2-City's (`continent`, `country`, `registered_country`,
`subdivisions`, `city`, `location`, `postal`, names in its eight languages), of which ingest
reads `country.names.en`, `country.iso_code`, `subdivisions[0].names.en`, `city.names.en`,
`location.latitude`, `location.longitude` and `location.time_zone`. The other fields are there
because the reader decodes the whole record at each lookup: a lookup here costs what one in
GeoLite2 does.

- `write_city_database(path, networks)`: any networks, each with a `Place` or a raw record;
- `synthetic_networks(count, places)`: `count` distinct global IPv4 /24 networks, for a
  database of realistic size (the benchmark's: a million), their places drawn from `places`
  (`WORLD` unless given), with up to `cities` distinct cities (records) per place;
- `python -m local.geoip_database PATH NETWORKS`: such a database written to PATH (atomically:
  an interrupted build leaves no file); a million networks take a few minutes and about
  3 GB of memory.

Only the tests and the benchmark use it: mmdb-writer is a dev dependency, never in a bundle.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet

DATABASE_TYPE = "GeoLite2-City"
# GeoLite2's languages: every name of its records is given in each (in the real database some
# cities have fewer; the decoding cost is what matters here).
LANGUAGES = ("de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN")
# Cities named in every language; GeoLite2 names most of them in a few only.
CITY_LANGUAGES = ("de", "en", "fr", "ru")


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


# Places of the benchmark's database: a few continents, time zones and scripts.
WORLD = (
    Place("United Kingdom", "GB", "England", "London", 51.5142, -0.0931, "Europe/London"),
    Place("Germany", "DE", "Land Berlin", "Berlin", 52.5244, 13.4105, "Europe/Berlin"),
    Place("France", "FR", "Île-de-France", "Paris", 48.8534, 2.3488, "Europe/Paris"),
    Place("United States", "US", "California", "San Francisco", 37.7749, -122.4194,
          "America/Los_Angeles"),
    Place("United States", "US", "New York", "New York", 40.7143, -74.006, "America/New_York"),
    Place("Brazil", "BR", "São Paulo", "São Paulo", -23.5475, -46.6361, "America/Sao_Paulo"),
    Place("Japan", "JP", "Tokyo", "Tokyo", 35.6895, 139.6917, "Asia/Tokyo"),
    Place("India", "IN", "Karnataka", "Bengaluru", 12.9719, 77.5937, "Asia/Kolkata"),
    Place("Australia", "AU", "New South Wales", "Sydney", -33.8678, 151.2073,
          "Australia/Sydney"),
    Place("Nigeria", "NG", "Lagos", "Lagos", 6.4541, 3.3947, "Africa/Lagos"),
    Place("Sweden", "SE", "Östergötland County", "Linköping", 58.4167, 15.6167,
          "Europe/Stockholm"),
    Place("Bhutan", "BT"),  # a country and nothing more, as many networks have
)  # fmt: skip


def _names(name: str, languages: Sequence[str] = LANGUAGES) -> dict[str, str]:
    return {language: name for language in languages}


def city_record(place: Place) -> dict[str, Any]:
    """GeoLite2-City's record for `place`, with the fields beside ours that GeoLite2 has."""
    record: dict[str, Any] = {}
    if place.country is not None or place.country_code is not None:
        country: dict[str, Any] = {"geoname_id": 2635167}
        if place.country is not None:
            country["names"] = _names(place.country)
        if place.country_code is not None:
            country["iso_code"] = place.country_code
        record["country"] = country
        record["registered_country"] = dict(country)
        record["continent"] = {"code": "EU", "geoname_id": 6255148, "names": _names("Europe")}
    if place.region is not None:
        record["subdivisions"] = [
            {"geoname_id": 6269131, "iso_code": "X", "names": _names(place.region)}
        ]
    if place.city is not None:
        record["city"] = {"geoname_id": 2643743, "names": _names(place.city, CITY_LANGUAGES)}
        record["postal"] = {"code": "EC1A"}
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
        languages=list(LANGUAGES),
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


def synthetic_networks(
    count: int, places: Sequence[Place] = WORLD, cities: int = 1
) -> Iterator[tuple[str, Place]]:
    """`count` distinct global IPv4 /24 networks from 1.0.0.0 up, places from `places` in
    turn. With `cities` above 1, each place comes in up to that many variants (its city
    numbered, its coordinates moved a little): that many distinct records per place, as a real
    database has one per city, so that lookups do not all land on the same few records."""
    produced, block = 0, 1 << 16  # 1.0.0.0/24
    while produced < count:
        network = ipaddress.IPv4Network((block << 8, 24))
        block += 1
        if not network.is_global:
            continue
        place = places[produced % len(places)]
        variant = produced // len(places) % cities
        if variant and place.city is not None:
            place = dataclasses.replace(
                place,
                city=f"{place.city} {variant}",
                latitude=None if place.latitude is None else place.latitude + variant * 1e-5,
            )
        yield str(network), place
        produced += 1


def build(path: Path | str, networks: int, cities: int) -> Path:
    """A database of `networks` synthetic networks (`WORLD`, up to `cities` variants of each
    place) at `path`, written beside it first and then renamed: never a partial file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    write_city_database(partial, synthetic_networks(networks, WORLD, cities))
    os.replace(partial, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local.geoip_database", description=__doc__.split("\n")[0]
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("networks", type=int)
    parser.add_argument("--cities", type=int, default=1, help="variants of each place")
    args = parser.parse_args(argv)
    build(args.path, args.networks, args.cities)


if __name__ == "__main__":
    main()
