"""In-process A/B measurements of the ingest app: the harness `instrumentation_cost`,
`rate_limit_cost` and `enrichment_cost` share.

Each variant of the app (a Flask test client, no HTTP server) posts the same bodies to the
benchmark's real Redis. The variants take turns, round after round, in reversed order every
other round so that neither always runs on the other's warm caches, and the least of ROUNDS
rounds counts (as timeit does: noise only ever adds time). CPU time is this process's own
(`time.process_time`): a saturation run on a shared machine varies by more than the few
microseconds these measurements look for, one process's CPU time does not.

A measurement runs in a child process (`measure_in_child`: `python -m <module> REDIS_URL
STREAM_KEY REQUESTS [MORE...]`, the module ending in `child_main`), with PROMETHEUS_MULTIPROC_DIR
set unless it measures Lambda, so that the apps count their metrics in files, as under gunicorn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import redis

from local.bench import backlog, payloads
from shared.settings import Settings

ROUNDS = 9
# What a child process measures: (REDIS_URL, STREAM_KEY, requests per round, then any further
# arguments `measure_in_child` was given, as strings) -> rows.
Measure = Callable[..., list[dict]]


def app_settings(redis_url: str, stream_key: str, **changes: Any) -> Settings:
    """The ingest app's settings for a measurement, `changes` on top: the benchmark's write
    key, and no bound a measurement reaches. No rate limit either: a measurement sends
    hundreds of thousands of events a second from one address, which the default limits
    answer with 429 (rate_limit_cost sets its own, out of reach)."""
    settings = Settings.from_env(
        {"REDIS_URL": redis_url, "STREAM_KEY": stream_key, "WRITE_KEYS": payloads.WRITE_KEYS}
    )
    unbounded = {
        "stream_max_len": 10_000_000,
        "stream_max_bytes": 1 << 40,
        "rate_limit_events_per_s": 0,
        "rate_limit_address_events_per_s": 0,
    }
    return dataclasses.replace(settings, **{**unbounded, **changes})


def least_of_rounds(
    apps: dict[str, Any],
    bodies: payloads.Bodies,
    requests: int,
    stream: tuple[redis.Redis, str],
    counter: Callable[[], float] | None = None,
) -> dict[str, dict[str, float]]:
    """For each app, the least over ROUNDS rounds of its CPU per request (`cpu_us`, posting
    `requests` of `bodies`) and, given `counter` (a running total, such as Redis's time in a
    command), of the counter's growth per request (`counter_per_request`). Each round starts
    from an empty stream (`stream`: the client and the key the apps write)."""
    client, stream_key = stream
    names = list(apps)
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_ in range(ROUNDS):
        for name in names if round_ % 2 == 0 else reversed(names):
            measured[name].append(_one_round(apps[name], bodies, requests, counter))
            backlog.empty_stream(client, stream_key)
    return {
        name: {quantity: min(r[quantity] for r in rounds) for quantity in rounds[0]}
        for name, rounds in measured.items()
    }


def _one_round(
    app: Any, bodies: payloads.Bodies, requests: int, counter: Callable[[], float] | None
) -> dict[str, float]:
    before = counter() if counter else 0.0
    cpu_us = cpu_per_request_us(app, bodies, requests)
    if counter is None:
        return {"cpu_us": cpu_us}
    return {"cpu_us": cpu_us, "counter_per_request": (counter() - before) / requests}


def row(events_per_request: int, requests: int, **measured: float | None) -> dict:
    """A result row: what was sent in each round, how many rounds, then what was measured."""
    return {
        "events_per_request": events_per_request,
        "requests": requests,
        "rounds": ROUNDS,
        **measured,
    }


def compared(on: float, off: float, prefix: str = "") -> dict[str, float | None]:
    """Microseconds with the thing measured (`on`) and without (`off`), the difference (its
    cost) and the difference's share of `off`, under names starting with `prefix`."""
    return {
        f"{prefix}on_us": round(on, 1),
        f"{prefix}off_us": round(off, 1),
        f"{prefix}cost_us": round(on - off, 1),
        f"{prefix}cost_share": round((on - off) / off, 4) if off else None,
    }


def cpu_per_request_us(app: Any, bodies: payloads.Bodies, requests: int) -> float:
    """This process's CPU time per request, in microseconds, posting `requests` of `bodies`
    to `app` (a Flask test client); each must be accepted (202, or Segment's 200)."""
    started = time.process_time()
    for i in range(requests):
        answer = app.post(
            bodies.path, data=bodies.bodies[i % len(bodies.bodies)], headers=bodies.headers
        )
        assert answer.status_code in (200, 202), answer.status_code
    return (time.process_time() - started) * 1e6 / requests


def measure_in_child(
    module: str,
    redis_url: str,
    stream_key: str,
    requests: int,
    *more: str,
    metric_files: bool = True,
) -> list[dict]:
    """The rows `module` measures (its `child_main`), in a child process; `more`: further
    arguments, passed on to the module's measurement. With `metric_files`, the child counts
    its metrics in files, as under gunicorn (not as on Lambda). A failed measurement raises
    with what the child wrote on stderr."""
    with tempfile.TemporaryDirectory(prefix="bench-in-process-") as files:
        env = {**os.environ}
        if metric_files:
            env["PROMETHEUS_MULTIPROC_DIR"] = files
        child = subprocess.run(
            [sys.executable, "-m", module, redis_url, stream_key, str(requests), *more],
            env=env,
            capture_output=True,
            text=True,
        )
    if child.returncode:
        raise RuntimeError(f"{module} failed ({child.returncode}):\n{child.stderr[-4000:]}")
    return json.loads(child.stdout)


def child_main(measure: Measure) -> None:
    """The child's side of `measure_in_child`: the rows as JSON on stdout."""
    url, key, count, *more = sys.argv[1:]
    print(json.dumps(measure(url, key, int(count), *more)))
