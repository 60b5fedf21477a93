"""The rate limits' cost per request and per event, in process: the ingest app with no limits
beside the app with a source and an address limit (both buckets checked and taken by the
append script, at rates no run reaches), each request through Flask's test client to the
benchmark's real Redis, rounds taking turns, the least of in_process.ROUNDS kept
(local/bench/in_process.py).

Two costs, each the difference of the two apps in the same run:
- the app's CPU per request (`time.process_time` of this process alone): choosing the buckets
  and their keys, one more argument list for the script. Both apps work out the client's
  address (client_address.py), which enrichment needs anyway;
- Redis's time per request in the append script, from Redis's own accounting of EVALSHA
  (`INFO commandstats`, microseconds of the command itself): the bucket reads and writes and
  `TIME`, where a server's throughput is decided when Redis is the bottleneck.

It runs in a child process with PROMETHEUS_MULTIPROC_DIR set, as the metrics' measurement
does, so that both apps count their metrics as under gunicorn.
"""

from __future__ import annotations

import functools
from typing import Any

import redis

from local.bench import in_process, payloads

MODULE = "local.bench.rate_limit_cost"
# Rates and bursts far above what this process can send: every request passes, and pays.
UNREACHED = 1_000_000_000


def measure(redis_url: str, stream_key: str, requests: int) -> list[dict]:
    """The rows (one per request size), measured in a child process."""
    return in_process.measure_in_child(MODULE, redis_url, stream_key, requests)


def _apps(redis_url: str, stream_key: str) -> dict[str, Any]:
    from functions.ingest.app import create_app

    limited = in_process.app_settings(
        redis_url,
        stream_key,
        rate_limit_events_per_s=UNREACHED,
        rate_limit_burst=UNREACHED,
        rate_limit_address_events_per_s=UNREACHED,
        rate_limit_address_burst=UNREACHED,
    )
    unlimited = in_process.app_settings(redis_url, stream_key)
    return {
        "limits": create_app(limited).test_client(),
        "none": create_app(unlimited).test_client(),
    }


def _measure(redis_url: str, stream_key: str, requests: int, sizes=(1, 100)) -> list[dict]:
    apps = _apps(redis_url, stream_key)
    client = redis.Redis.from_url(redis_url)
    rows = []
    for size in sizes:
        least = in_process.least_of_rounds(
            apps,
            payloads.batch_bodies(size),
            requests,
            (client, stream_key),
            counter=functools.partial(_script_usec, client),
        )
        rows.append(_row(size, requests, least))
    return rows


def _row(size: int, requests: int, least: dict[str, dict[str, float]]) -> dict:
    on, off = least["limits"]["cpu_us"], least["none"]["cpu_us"]
    # Redis's time in the append script per request (`_script_usec`).
    redis_on = least["limits"]["counter_per_request"]
    redis_off = least["none"]["counter_per_request"]
    cost = on - off + redis_on - redis_off
    return in_process.row(
        size,
        requests,
        **in_process.compared(on, off, prefix="app_"),
        **in_process.compared(redis_on, redis_off, prefix="redis_"),
        cost_us_per_request=round(cost, 1),
        cost_us_per_event=round(cost / size, 2),
    )


def _script_usec(client: redis.Redis) -> float:
    """Microseconds Redis has spent in EVALSHA (the append script) since its start."""
    return float(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


if __name__ == "__main__":
    in_process.child_main(_measure)
