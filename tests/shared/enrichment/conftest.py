from __future__ import annotations

from pathlib import Path

import pytest

from tests.geoip import small_city_database


@pytest.fixture(scope="session")
def city_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/geoip.py's small City database (IPv4 and IPv6 networks)."""
    return small_city_database(tmp_path_factory.mktemp("geoip") / "City.mmdb")
