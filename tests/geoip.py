"""The tests' places and their small City database; the builder is local/geoip_database.py's
(shared with the benchmark), re-exported here for the tests.

- `PLACES`: global networks (IPv4 and IPv6) and their places, with addresses in them and one
  that no network holds;
- `small_city_database(path)`: PLACES as a database, for tests.
"""

from __future__ import annotations

from pathlib import Path

from local.geoip_database import (
    DATABASE_TYPE,
    Place,
    city_record,
    synthetic_networks,
    write_city_database,
)

__all__ = [
    "DATABASE_TYPE",
    "PLACES",
    "Place",
    "city_record",
    "small_city_database",
    "synthetic_networks",
    "write_city_database",
]

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


def small_city_database(path: Path | str) -> Path:
    """PLACES as a database at `path`."""
    return write_city_database(path, PLACES.items())
