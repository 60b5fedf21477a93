"""The rate limits' cost per request and per event, in process: the ingest app with no limits
beside the app with a source and an address limit (both buckets checked and taken by the
append script, at rates no run reaches), each request through Flask's test client to the
benchmark's real Redis, rounds taking turns, the least of ROUNDS kept.

Two costs, each the difference of the two apps in the same run:
- the app's CPU per request (`time.process_time` of this process alone): choosing the buckets
  and their keys, one more argument list for the script. Both apps work out the client's
  address (client_address.py), which enrichment needs anyway;
- Redis's time per request in the append script, from Redis's own accounting of EVALSHA
  (`INFO commandstats`, microseconds of the command itself): the bucket reads and writes and
  `TIME`, where a server's throughput is decided when Redis is the bottleneck.

It runs in a child process (`python -m local.bench.rate_limit_cost`) with
PROMETHEUS_MULTIPROC_DIR set, as the metrics' measurement does, so that both apps count their
metrics as under gunicorn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import redis

from local.bench import payloads
from shared.settings import Settings

# The least disturbed round counts (as timeit does): noise only ever adds time.
ROUNDS = 9
# Rates and bursts far above what this process can send: every request passes, and pays.
UNREACHED = 1_000_000_000


def measure(redis_url: str, stream_key: str, requests: int) -> list[dict]:
    """The rows (one per request size), measured in a child process."""
    with tempfile.TemporaryDirectory(prefix="bench-rate-limits-") as files:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": files}
        args = [sys.executable, "-m", "local.bench.rate_limit_cost"]
        output = subprocess.run(
            [*args, redis_url, stream_key, str(requests)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return json.loads(output)


def _apps(redis_url: str, stream_key: str) -> dict:
    from functions.ingest.app import create_app

    settings = Settings.from_env(
        {"REDIS_URL": redis_url, "STREAM_KEY": stream_key, "WRITE_KEYS": payloads.WRITE_KEYS}
    )
    settings = dataclasses.replace(
        settings, stream_max_len=10_000_000, stream_max_bytes=1 << 40, metrics_public=True
    )
    limited = dataclasses.replace(
        settings,
        rate_limit_events_per_s=UNREACHED,
        rate_limit_burst=UNREACHED,
        rate_limit_address_events_per_s=UNREACHED,
        rate_limit_address_burst=UNREACHED,
    )
    unlimited = dataclasses.replace(
        settings, rate_limit_events_per_s=0, rate_limit_address_events_per_s=0
    )
    return {
        "limits": create_app(limited).test_client(),
        "none": create_app(unlimited).test_client(),
    }


def _measure(redis_url: str, stream_key: str, requests: int, sizes=(1, 100)) -> list[dict]:
    apps = _apps(redis_url, stream_key)
    client = redis.Redis.from_url(redis_url)
    rows = []
    for size in sizes:
        bodies = payloads.batch_bodies(size)
        app_us: dict[str, list[float]] = {name: [] for name in apps}
        redis_us: dict[str, list[float]] = {name: [] for name in apps}
        for round_ in range(ROUNDS):
            order = list(apps) if round_ % 2 == 0 else list(reversed(apps))
            for name in order:
                script_before = _script_usec(client)
                app_us[name].append(_cpu_per_request_us(apps[name], bodies, requests))
                redis_us[name].append((_script_usec(client) - script_before) / requests)
                client.delete(stream_key)
        rows.append(_row(size, requests, app_us, redis_us))
    return rows


def _row(size: int, requests: int, app_us: dict, redis_us: dict) -> dict:
    on, off = min(app_us["limits"]), min(app_us["none"])
    redis_on, redis_off = min(redis_us["limits"]), min(redis_us["none"])
    return {
        "events_per_request": size,
        "requests": requests,
        "rounds": ROUNDS,
        "app_on_us": round(on, 1),
        "app_off_us": round(off, 1),
        "app_cost_us": round(on - off, 1),
        "app_cost_share": round((on - off) / off, 4),
        "redis_on_us": round(redis_on, 1),
        "redis_off_us": round(redis_off, 1),
        "redis_cost_us": round(redis_on - redis_off, 1),
        "cost_us_per_request": round(on - off + redis_on - redis_off, 1),
        "cost_us_per_event": round((on - off + redis_on - redis_off) / size, 2),
    }


def _script_usec(client: redis.Redis) -> float:
    """Microseconds Redis has spent in EVALSHA (the append script) since its start."""
    return float(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def _cpu_per_request_us(app, bodies: payloads.Bodies, requests: int) -> float:
    started = time.process_time()
    for i in range(requests):
        answer = app.post(
            bodies.path, data=bodies.bodies[i % len(bodies.bodies)], headers=bodies.headers
        )
        assert answer.status_code == 202, answer.status_code
    return (time.process_time() - started) * 1e6 / requests


if __name__ == "__main__":
    url, key, count = sys.argv[1:4]
    print(json.dumps(_measure(url, key, int(count))))
