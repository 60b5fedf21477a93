"""The `enrichment` phase's measurement (local/bench/enrichment_cost.py) compares what it says:
the app it calls enriched stores analytics.js's events with their location (from the database,
for the request's address), the cut address, the parsed user agent; the app it calls without
enrichment stores them as sent. Small sizes and a small database built by
local/geoip_database.py, as the benchmark builds its large one."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import redis

from local.bench import enrichment_cost, in_process, payloads, phases, report, run
from local.geoip_database import WORLD, synthetic_networks, write_city_database
from shared import codec
from shared.enrichment.geo import LOCATION_CACHE, GeoDatabase
from shared.settings import Settings

NETWORKS = 2000
REQUESTS = 20


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("geoip") / "City.mmdb"
    return write_city_database(path, synthetic_networks(NETWORKS, WORLD, cities=3))


def stored(client: redis.Redis, stream_key: str) -> list[dict[str, Any]]:
    return [
        event for _, fields in client.xrange(stream_key) for event in codec.decode_entry(fields)
    ]


def test_the_enriched_app_enriches_and_the_other_stores_events_as_sent(
    settings: Settings, redis_client: redis.Redis, database: Path
) -> None:
    apps = enrichment_cost._apps(settings.redis_url, settings.stream_key, str(database))
    [address] = enrichment_cost.client_addresses(database, NETWORKS, 1)
    bodies = payloads.browser_bodies(5, variants=1)
    for name in ("on", "off"):
        sending = enrichment_cost.FromAddresses(apps[name], [address])
        in_process.cpu_per_request_us(sending, bodies, 1)
    on, off = (
        [event["context"] for event in events]
        for events in (
            stored(redis_client, settings.stream_key)[:5],
            stored(redis_client, settings.stream_key)[5:],
        )
    )
    assert len(on) == len(off) == 5
    cut = address.rpartition(".")[0] + ".0"  # IP_HANDLING=anonymize
    for context in on:
        assert context["ip"] == cut
        assert context["location"]["countryCode"] in {place.country_code for place in WORLD}
        assert context["parsedUserAgent"]["browser"] == "Chrome"
        assert "bot" not in context  # a desktop Chrome is no bot
    for context in off:
        assert not {"ip", "location", "parsedUserAgent", "bot"} & set(context)
        assert context["userAgent"] == payloads.BROWSER_USER_AGENT


def test_many_clients_are_addresses_the_database_holds_more_than_its_cache(
    database: Path,
) -> None:
    geo = GeoDatabase(str(database), coarse=True)
    addresses = enrichment_cost.client_addresses(database, NETWORKS, 4 * LOCATION_CACHE)
    assert len(set(addresses)) == 4 * LOCATION_CACHE > LOCATION_CACHE
    assert all(geo.locate(ipaddress.ip_address(a)) for a in addresses[:200])
    assert not any(ipaddress.ip_address(a).is_private for a in addresses)


def test_the_rows_say_the_cost_and_the_verdict_per_size_and_traffic(
    settings: Settings, database: Path
) -> None:
    rows = enrichment_cost._measure(
        settings.redis_url, settings.stream_key, REQUESTS, str(database), str(NETWORKS), (1, 10)
    )

    assert [(row["events_per_request"], row["clients"]) for row in rows] == [
        (1, "one"), (1, "many"), (10, "one"), (10, "many"),
    ]  # fmt: skip
    for row in rows:
        assert row["rounds"] == 9 and row["requests"] == REQUESTS
        assert row["path"] == ("/v1/t" if row["events_per_request"] == 1 else "/v1/b")
        assert row["on_us"] > 0 and row["off_us"] > 0
        assert row["cost_us"] == pytest.approx(row["on_us"] - row["off_us"], abs=0.11)
        assert row["cost_us_per_event"] == pytest.approx(
            row["cost_us"] / row["events_per_request"], abs=0.06
        )
    single, batch = rows[0], rows[2]
    assert single["met"] == (single["cost_share"] <= 0.10)
    assert batch["met"] == (batch["cost_us_per_event"] <= 1.0)
    for row in (single, batch):  # the verdict is printed as it is
        assert ("NOT met" in report.enrichment_line(row)) == (not row["met"])
    for row in (rows[1], rows[3]):  # every request a new client: the worst case, no target
        assert row["target"] is None and row["met"] is None
        assert "no target" in report.enrichment_line(row)


def test_the_database_is_built_once_and_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enrichment_cost, "NETWORKS", 300)
    said: list[str] = []

    path = enrichment_cost.database(tmp_path, said.append)

    assert path == tmp_path / enrichment_cost.DATABASE_NAME and path.is_file()
    assert len(said) == 1 and "takes a few minutes" in said[0]
    assert list(tmp_path.iterdir()) == [path]  # no partial file left beside it
    built = path.stat().st_mtime_ns
    assert enrichment_cost.database(tmp_path, said.append) == path
    assert path.stat().st_mtime_ns == built and len(said) == 1


def test_cold_start_figures_come_from_fresh_processes(database: Path) -> None:
    cold = enrichment_cost.cold_start(database, runs=1)
    report.enrichment_cold_start_line(cold)

    assert cold["runs"] == 1
    assert 0 < cold["open_database_ms"] < 5000 and cold["first_lookup_ms"] > 0
    assert 0 < cold["enricher_without_imports_s"] < cold["enricher_with_imports_s"]
    assert cold["imports_s"] > 0


def test_the_phase_runs_alone_and_needs_only_redis() -> None:
    assert run.parse_args(["--phase", "enrichment"]).phases == ["enrichment"]
    assert phases.needs(["enrichment"]) == {"redis"}
    assert phases.PHASES.index("enrichment") == phases.PHASES.index("rate-limits") + 1
