"""Enrichment's cost per request and per event, in process: the ingest app with every enrichment
on (a City database of a million networks, IP_HANDLING=anonymize, user agents parsed and
judged) beside the same app with enrichment off, each request through Flask's test client to
the benchmark's real Redis, rounds taking turns, the least of in_process.ROUNDS kept
(local/bench/in_process.py). Then what enrichment adds to a cold start, in fresh processes.

No setting turns enrichment off, so the app without it is the same app, built while
`functions.ingest.app.Enricher` is a stub that returns the events as they are and adds no bytes
(`NoEnrichment`): both apps have the same settings, and differ only in the enricher.

The requests are analytics.js's (`payloads.browser_bodies`): a browser's user agent with client
hints, the analytics.js library, no `context.ip`. Their client address (REMOTE_ADDR) is a
global address the database holds, from one of two kinds of traffic:
- `one` client: every request from the same address, as one visitor's page sends them; its
  location is in GeoDatabase's cache after the first request;
- `many` clients: every request from another address, cycling through more addresses than the
  location cache holds, so that every request pays a lookup in the database.
User agents repeat in both (a visitor's requests carry the same one): a user agent not yet
cached costs a parse once, which docs/enrichment.md gives apart.

The targets (issue 26) are for the traffic its caches are made for, one client's: a 100-event
batch costs at most 1 µs per event more with enrichment, a single-event request at most 10%
more. `many` clients is the worst case (no request from an address seen in the last
LOCATION_CACHE), reported beside them with no target.
"""

from __future__ import annotations

import itertools
import random
import statistics
import subprocess
import sys
import unittest.mock
from pathlib import Path
from typing import Any

import redis

from local.bench import in_process, payloads

MODULE = "local.bench.enrichment_cost"
# The benchmark's database: a million /24 networks, as GeoLite2-City has a few million; 12
# places with 4,096 cities each, about 49,000 distinct records.
NETWORKS = 1_000_000
CITIES = 4096
DATABASE_NAME = "geoip-1m.mmdb"
SIZES = (1, 100)
CLIENTS = ("one", "many")
# Targets: per event on a 100-event batch, and as a share of a single-event request.
BATCH_TARGET_US_PER_EVENT = 1.0
SINGLE_TARGET_SHARE = 0.10
# Fresh processes per cold-start figure, the median kept.
COLD_STARTS = 7


class NoEnrichment:
    """An `Enricher` that changes nothing: the app without enrichment."""

    max_added_bytes = 0
    geo = None

    def __init__(self, settings: Any) -> None:
        pass

    def enrich(
        self, events: list[dict[str, Any]], address: Any, body_bytes: int
    ) -> list[dict[str, Any]]:
        return events


class FromAddresses:
    """A test client whose requests come from `addresses` in turn (REMOTE_ADDR), carrying on
    from one round to the next."""

    def __init__(self, client: Any, addresses: list[str]) -> None:
        self._client = client
        self._next = itertools.cycle(addresses).__next__

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.post(*args, environ_base={"REMOTE_ADDR": self._next()}, **kwargs)


def database(out_dir: Path, say: Any = print) -> Path:
    """The benchmark's City database, under `out_dir`: built once (in a process of its own,
    which takes minutes and a few GB of memory), then reused."""
    path = out_dir / DATABASE_NAME
    if path.is_file():
        return path
    say(
        f"  building a synthetic City database of {NETWORKS:,} networks at {path}: this takes"
        " a few minutes, once (later runs reuse it)"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "local.geoip_database",
            str(path),
            str(NETWORKS),
            "--cities",
            str(CITIES),
        ],
        check=True,
    )
    return path


def measure(
    redis_url: str, stream_key: str, requests: int, database: Path, networks: int = NETWORKS
) -> list[dict]:
    """The rows (per request size and kind of traffic), measured in a child process."""
    return in_process.measure_in_child(
        MODULE, redis_url, stream_key, requests, str(database), str(networks)
    )


def client_addresses(database: Path | str, networks: int, count: int, seed: int = 1) -> list[str]:
    """`count` distinct global addresses that the database (`networks` /24 networks from
    1.0.0.0 up, local/geoip_database.py's) holds, in random order."""
    import ipaddress

    import maxminddb_rust

    rng = random.Random(seed)
    # The networks skip non-global ranges (10.0.0.0/8): a tenth more covers them.
    span = int(networks * 256 * 1.1)
    found: dict[str, None] = {}
    with maxminddb_rust.open_database(str(database)) as reader:
        while len(found) < count:
            address = ipaddress.IPv4Address((1 << 24) + rng.randrange(span))
            if address.is_global and reader.get_path(address, ("country",)) is not None:
                found[str(address)] = None
    return list(found)


def _apps(redis_url: str, stream_key: str, database: str) -> dict[str, Any]:
    from functions.ingest import app as ingest_app

    settings = in_process.app_settings(
        redis_url, stream_key, geoip_database=database, ip_handling="anonymize"
    )
    on = ingest_app.create_app(settings).test_client()
    with unittest.mock.patch.object(ingest_app, "Enricher", NoEnrichment):
        off = ingest_app.create_app(settings).test_client()
    return {"on": on, "off": off}


def _measure(
    redis_url: str,
    stream_key: str,
    requests: int,
    database: str,
    networks: str,
    sizes: tuple[int, ...] = SIZES,
    clients: tuple[str, ...] = CLIENTS,
) -> list[dict]:
    from shared.enrichment.geo import LOCATION_CACHE

    apps = _apps(redis_url, stream_key, database)
    # More addresses than the location cache holds, visited in a cycle: every lookup misses.
    many = client_addresses(database, int(networks), 4 * LOCATION_CACHE)
    addresses = {"one": many[:1], "many": many}
    stream = (redis.Redis.from_url(redis_url), stream_key)
    rows = []
    for size in sizes:
        bodies = payloads.browser_bodies(size)
        for kind in clients:
            sending = {name: FromAddresses(app, addresses[kind]) for name, app in apps.items()}
            least = in_process.least_of_rounds(sending, bodies, requests, stream)
            on, off = least["on"]["cpu_us"], least["off"]["cpu_us"]
            rows.append(_row(bodies.path, size, kind, requests, on, off))
    return rows


def _row(path: str, size: int, clients: str, requests: int, on: float, off: float) -> dict:
    compared = in_process.compared(on, off)
    per_event = round((on - off) / size, 2)
    target: str | None
    if clients != "one":  # the worst case, reported beside the targets (module docstring)
        target, met = None, None
    elif size == 1:
        share = compared["cost_share"]
        target = f"<= {SINGLE_TARGET_SHARE:.0%} per request"
        met = share is not None and share <= SINGLE_TARGET_SHARE
    else:
        target = f"<= {BATCH_TARGET_US_PER_EVENT:g} us per event"
        met = per_event <= BATCH_TARGET_US_PER_EVENT
    return in_process.row(
        size,
        requests,
        path=path,
        clients=clients,
        **compared,
        cost_us_per_event=per_event,
        target=target,
        met=met,
    )


# --- cold start ------------------------------------------------------------------------------

# Each prints the seconds it measured. The interpreter's own start is never counted; the
# settings module (which ingest imports whatever it enables) is imported before timing.
_OPEN = """
import sys, time
import maxminddb_rust
started = time.perf_counter()
reader = maxminddb_rust.open_database(sys.argv[1])
opened = time.perf_counter()
reader.get_path("1.0.0.1", ("country", "iso_code"))
print(opened - started, time.perf_counter() - opened)
"""
_ENRICHER = """
import sys, time
from shared.settings import Settings
settings = Settings.from_env({"GEOIP_DATABASE": sys.argv[1]})
started = time.perf_counter()
from shared.enrichment import Enricher
imported = time.perf_counter()
Enricher(settings)
print(imported - started, time.perf_counter() - imported)
"""


def cold_start(database: Path, runs: int = COLD_STARTS) -> dict[str, Any]:
    """What enrichment adds to a cold start, in seconds, the median of `runs` fresh processes
    each: opening the database (and its first lookup), and building the Enricher from Settings
    with and without the imports of shared.enrichment (maxminddb-rust, ua-parser,
    crawlerdetect)."""
    opens, firsts, imports, builds = [], [], [], []
    for _ in range(runs):
        opened, first = _timed(_OPEN, database)
        opens.append(opened)
        firsts.append(first)
        imported, built = _timed(_ENRICHER, database)
        imports.append(imported)
        builds.append(built)
    totals = [i + b for i, b in zip(imports, builds, strict=True)]
    median = statistics.median
    return {
        "runs": runs,
        "database_mb": round(database.stat().st_size / 2**20, 1),
        "open_database_ms": round(median(opens) * 1000, 3),
        "first_lookup_ms": round(median(firsts) * 1000, 3),
        "enricher_without_imports_s": round(median(builds), 3),
        "imports_s": round(median(imports), 3),
        "enricher_with_imports_s": round(median(totals), 3),
    }


def _timed(script: str, database: Path) -> list[float]:
    output = subprocess.run(
        [sys.executable, "-c", script, str(database)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [float(value) for value in output.split()]


if __name__ == "__main__":
    in_process.child_main(_measure)
