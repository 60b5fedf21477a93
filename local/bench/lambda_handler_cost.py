"""The ingest function's Lambda handler in process, warm: how long an invocation takes (what
Lambda bills) for an API Gateway event of 100 events (`/batch`) and of one (analytics.js's
`/v1/t`), the least of in_process.ROUNDS rounds.

The events are HTTP API payloads (format 2.0) as API Gateway sends them, through
`functions.ingest.app.lambda_handler`, the deployed entry point (apig-wsgi, the app, the EMF
lines it prints), to the benchmark's Redis. The function's module builds its app from the
environment when imported, as on Lambda, so the measurement runs in a child process
(`in_process.measure_in_child`) whose environment is the function's: the shipped defaults, on
Lambda (`AWS_LAMBDA_FUNCTION_NAME` set: counts kept in memory and leaving as EMF lines), with
the benchmark's write key and limits it never reaches, and no replica to wait for (the
template's REDIS_WAIT_REPLICAS=1 adds a round trip to a replica that this leaves out).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from typing import Any

import redis

from local.bench import backlog, in_process, payloads, rate_limit_cost

# (events per invocation, the bodies sent): a batch as the server SDKs send it, and one event
# as analytics.js sends it.
LOADS = (
    (100, lambda: payloads.batch_bodies(100)),
    (1, lambda: payloads.browser_bodies(1)),
)


def measure(redis_url: str, stream_key: str, invocations: int) -> list[dict]:
    """A row per load: `duration_us`, the least over the rounds of the mean wall time of its
    `invocations` invocations, and `per_event_us`."""
    return in_process.measure_in_child(
        __name__, redis_url, stream_key, invocations, metric_files=False
    )


def function_environment(redis_url: str, stream_key: str) -> dict[str, str]:
    return {
        "AWS_LAMBDA_FUNCTION_NAME": "bench-ingest",
        "REDIS_URL": redis_url,
        "STREAM_KEY": stream_key,
        "WRITE_KEYS": payloads.WRITE_KEYS,
        "LOG_LEVEL": "warning",
        "STREAM_MAX_LEN": "10000000",
        "RATE_LIMIT_EVENTS_PER_S": str(rate_limit_cost.UNREACHED),
        "RATE_LIMIT_ADDRESS_EVENTS_PER_S": str(rate_limit_cost.UNREACHED),
    }


def api_gateway_event(bodies: payloads.Bodies, body: bytes) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event posting `body` to `bodies.path`, as API Gateway sends it
    (functions/ingest/events/http-api-batch.json has a full one)."""
    headers = {name.lower(): value for name, value in bodies.headers.items()}
    headers |= {"content-length": str(len(body)), "host": "api.example.com"}
    return {
        "version": "2.0",
        "routeKey": f"POST {bodies.path}",
        "rawPath": bodies.path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "http": {
                "method": "POST",
                "path": bodies.path,
                "protocol": "HTTP/1.1",
                "sourceIp": "198.51.100.23",
                "userAgent": "bench",
            },
            "requestId": "bench",
            "routeKey": f"POST {bodies.path}",
            "stage": "$default",
        },
        # A JSON or text body arrives as text; API Gateway base64-encodes only binary ones.
        "body": body.decode(),
        "isBase64Encoded": False,
    }


def _measure(redis_url: str, stream_key: str, invocations: int) -> list[dict]:
    os.environ.update(function_environment(redis_url, stream_key))
    from functions.ingest import app as function  # builds the app from the environment

    client = redis.Redis.from_url(redis_url)
    rows = []
    for size, bodies_of in LOADS:
        bodies = bodies_of()
        events = [api_gateway_event(bodies, body) for body in bodies.bodies]
        _invoke(function.lambda_handler, events, invocations)  # warm: caches, connections
        rounds = []
        for _ in range(in_process.ROUNDS):
            rounds.append(_invoke(function.lambda_handler, events, invocations))
            backlog.empty_stream(client, stream_key)
        duration_us = round(min(rounds), 1)
        rows.append(
            in_process.row(
                size,
                invocations,
                duration_us=duration_us,
                per_event_us=round(duration_us / size, 2),
            )
        )
    return rows


def _invoke(handler: Any, events: list[dict[str, Any]], invocations: int) -> float:
    """The mean wall time of `invocations` invocations, in microseconds; each must be accepted.
    The EMF lines the handler prints are written, to nowhere (stdout is the rows' channel)."""
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        for i in range(invocations):
            answer = handler(events[i % len(events)], None)
            assert answer["statusCode"] in (200, 202), answer
        return (time.perf_counter() - started) * 1e6 / invocations


if __name__ == "__main__":
    in_process.child_main(_measure)
