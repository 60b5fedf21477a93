"""The metrics' cost per request, in process: the ingest app with METRICS_ENABLED on and off,
each request through Flask's test client to the benchmark's real Redis, CPU time counted by
this process alone, rounds taking turns (local/bench/in_process.py).

The app's CPU is the denominator, without gunicorn's HTTP parsing, so the share it gives is an
upper bound of the share of the server. It runs in a child process with
PROMETHEUS_MULTIPROC_DIR set, so that the counters write their files as under gunicorn.
"""

from __future__ import annotations

import dataclasses

import redis

from local.bench import in_process, payloads

MODULE = "local.bench.instrumentation_cost"


def measure(redis_url: str, stream_key: str, requests: int) -> list[dict]:
    """The rows, measured in a child process writing multiprocess metric files."""
    return in_process.measure_in_child(MODULE, redis_url, stream_key, requests)


def _measure(redis_url: str, stream_key: str, requests: int, sizes=(1, 100)) -> list[dict]:
    from functions.ingest.app import create_app

    settings = in_process.app_settings(redis_url, stream_key)
    apps = {
        "on": create_app(settings).test_client(),
        "off": create_app(dataclasses.replace(settings, metrics_enabled=False)).test_client(),
    }
    stream = (redis.Redis.from_url(redis_url), stream_key)
    rows = []
    for size in sizes:
        bodies = payloads.batch_bodies(size)
        least = in_process.least_of_rounds(apps, bodies, requests, stream)
        on, off = least["on"]["cpu_us"], least["off"]["cpu_us"]
        rows.append(in_process.row(size, requests, **in_process.compared(on, off)))
    return rows


if __name__ == "__main__":
    in_process.child_main(_measure)
