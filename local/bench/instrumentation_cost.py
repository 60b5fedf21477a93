"""The metrics' cost per request, in process: the ingest app with METRICS_ENABLED on and off,
each request through Flask's test client to the benchmark's real Redis, CPU time counted by
this process alone (`time.process_time`), rounds taking turns.

A saturation run on this shared 2-core machine varies by more than the few microseconds the
metrics cost; one process's CPU time does not. The app's CPU is the denominator, without
gunicorn's HTTP parsing, so the share it gives is an upper bound of the share of the server.
It runs in a child process (`python -m local.bench.instrumentation_cost`) with
PROMETHEUS_MULTIPROC_DIR set, so that the counters write their files as under gunicorn.
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

# The least disturbed round counts (as timeit does): noise only ever adds CPU time.
ROUNDS = 9


def measure(redis_url: str, stream_key: str, requests: int) -> list[dict]:
    """The rows, measured in a child process writing multiprocess metric files."""
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as files:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": files}
        args = [sys.executable, "-m", "local.bench.instrumentation_cost"]
        output = subprocess.run(
            [*args, redis_url, stream_key, str(requests)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return json.loads(output)


def _measure(redis_url: str, stream_key: str, requests: int, sizes=(1, 100)) -> list[dict]:
    from functions.ingest.app import create_app

    settings = Settings.from_env(
        {"REDIS_URL": redis_url, "STREAM_KEY": stream_key, "WRITE_KEYS": payloads.WRITE_KEYS}
    )
    settings = dataclasses.replace(settings, stream_max_len=10_000_000)
    clients = {
        "on": create_app(settings).test_client(),
        "off": create_app(dataclasses.replace(settings, metrics_enabled=False)).test_client(),
    }
    client = redis.Redis.from_url(redis_url)
    rows = []
    for size in sizes:
        bodies = payloads.batch_bodies(size)
        cpu_us: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(ROUNDS):
            for name, app in clients.items():
                cpu_us[name].append(_cpu_per_request_us(app, bodies, requests))
                client.delete(stream_key)
        on, off = min(cpu_us["on"]), min(cpu_us["off"])
        rows.append(
            {
                "events_per_request": size,
                "requests": requests,
                "rounds": ROUNDS,
                "on_us": round(on, 1),
                "off_us": round(off, 1),
                "cost_us": round(on - off, 1),
                "cost_share": round((on - off) / off, 4),
            }
        )
    return rows


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
