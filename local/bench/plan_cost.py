"""A tracking plan's cost at ingest, in process: the ingest app with a plan of PLANNED_EVENTS
events (TRACKING_PLAN, `tag` mode) beside the same app without one, each request through
Flask's test client to the benchmark's real Redis, rounds taking turns, the least of
in_process.ROUNDS kept (local/bench/in_process.py).

The requests are `/batch` bodies of track events named after the plan's events, with the
properties their schemas ask for (typed, required ones present, a few more), so that every
event is checked against a schema and passes: what a plan costs a well-instrumented app. A
second body kind has one event in ten breaking its schema (a string for a number), so that
the cost of finding, tagging and counting violations shows too.

The target (issue 27): validation adds at most 2 µs per event, for the events that keep the plan
(those that break it report their cost, without a target). The whole requests' A/B shows
that cost within the app's, but cannot resolve it: its difference varies between runs by tens of
µs per request (a 100-event row once measured -9 µs), more than a single event's target. So each
row also times the check alone (`TrackingPlan.checked` on the same events as ingest prepares
them, least of the rounds as well), and the verdict is taken from that.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import redis
import yaml

from local.bench import in_process, payloads
from shared import events
from shared.settings import Settings

MODULE = "local.bench.plan_cost"
PLANNED_EVENTS = 50
SIZES = (1, 100)
KINDS = ("valid", "10% violating")
TARGET_US_PER_EVENT = 2.0
CHECK_EVENTS = 50_000

_json = msgspec.json.Encoder()


def plan_document(events: int = PLANNED_EVENTS) -> dict[str, Any]:
    """A plan of `events` track events, each with a schema of typed properties, two required;
    identify traits too."""
    properties = {
        "revenue": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "sku": {"type": "string"},
        "quantity": {"type": "integer"},
        "coupon": {"type": ["string", "null"]},
    }
    track = {
        f"Event {n}": {
            "properties": {
                "type": "object",
                "required": ["revenue", "currency"],
                "properties": properties,
            }
        }
        for n in range(events)
    }
    return {
        "sources": {
            "default": {
                "mode": "tag",
                "unplanned": "tag",
                "track": track,
                "identify": {
                    "traits": {"type": "object", "properties": {"email": {"type": "string"}}}
                },
            }
        }
    }


def bodies(size: int, kind: str, variants: int = 16, seed: int = 1) -> payloads.Bodies:
    """`/batch` bodies of `size` planned events; with "10% violating", one event in ten has a
    string for its number."""
    rng = random.Random(seed * 1000 + size)
    headers = {"Content-Type": "application/json", **payloads.auth_headers()}
    made = []
    for _ in range(variants):
        events = []
        for index in range(size):
            revenue: Any = round(rng.uniform(1, 500), 2)
            if kind != "valid" and index % 10 == 9:
                revenue = str(revenue)
            events.append(
                {
                    "type": "track",
                    "event": f"Event {rng.randrange(PLANNED_EVENTS)}",
                    "userId": f"user-{rng.randrange(10_000)}",
                    "properties": {
                        "revenue": revenue,
                        "currency": "EUR",
                        "sku": f"sku-{rng.randrange(1000)}",
                        "quantity": rng.randrange(1, 5),
                        "coupon": None,
                    },
                }
            )
        made.append(_json.encode({"batch": events}))
    return payloads.Bodies("/batch", made, size, headers)


def measure(redis_url: str, stream_key: str, requests: int) -> list[dict]:
    """The rows (per request size and kind of body), measured in a child process."""
    return in_process.measure_in_child(MODULE, redis_url, stream_key, requests)


def _apps(redis_url: str, stream_key: str, plan_path: str) -> dict[str, Any]:
    from functions.ingest import app as ingest_app

    settings = in_process.app_settings(redis_url, stream_key)
    planned = in_process.app_settings(redis_url, stream_key, tracking_plan=plan_path)
    return {
        "on": ingest_app.create_app(planned).test_client(),
        "off": ingest_app.create_app(settings).test_client(),
    }


def _verdict(kind: str, check_us_per_event: float) -> dict[str, Any]:
    """The target is what a plan costs the events that keep it, a well-instrumented app's
    traffic; events that break it cost more (each violation found, described and tagged), and
    their rows report that cost without a target."""
    if kind != "valid":
        return {"target": None, "met": None}
    return {
        "target": f"<= {TARGET_US_PER_EVENT:g} us per event",
        "met": check_us_per_event <= TARGET_US_PER_EVENT,
    }


def check_cpu_us(plan_path: str, bodies: payloads.Bodies, requests: int) -> float:
    """CPU per request of the plan's check alone (what the planned app adds to a request), on
    the bodies' events validated and stamped as ingest does, least of in_process.ROUNDS rounds.
    Tagging is done again on the same events each time: it replaces, never adds."""
    from functions.ingest.instrumentation import RequestRecord
    from functions.ingest.tracking_plan import TrackingPlan

    plan = TrackingPlan(Settings(tracking_plan=plan_path))
    prepared = [
        events.prepare(msgspec.json.decode(body)["batch"], events.received_at_now())
        for body in bodies.bodies
    ]
    least = math.inf
    for _ in range(in_process.ROUNDS):
        started = time.process_time()
        for i in range(requests):
            record = RequestRecord()  # where `checked` leaves what metrics count
            plan.checked(prepared[i % len(prepared)], None, refuse_blocked=True, record=record)
        least = min(least, (time.process_time() - started) * 1e6 / requests)
    return least


def _measure(
    redis_url: str,
    stream_key: str,
    requests: int,
    sizes: tuple[int, ...] = SIZES,
    kinds: tuple[str, ...] = KINDS,
    check_events: int = CHECK_EVENTS,
) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as folder:
        plan = Path(folder) / "plan.yaml"
        plan.write_text(yaml.safe_dump(plan_document()))
        apps = _apps(redis_url, stream_key, str(plan))
        stream = (redis.Redis.from_url(redis_url), stream_key)
        rows = []
        for size in sizes:
            for kind in kinds:
                sent = bodies(size, kind)
                least = in_process.least_of_rounds(apps, sent, requests, stream)
                on, off = least["on"]["cpu_us"], least["off"]["cpu_us"]
                # Rounds of at least CHECK_EVENTS events: a round of 2,000 one-event checks
                # (4 ms) varies by half between runs, one of 50,000 does not.
                check = check_cpu_us(str(plan), sent, max(requests, check_events // size))
                rows.append(
                    in_process.row(
                        size,
                        requests,
                        kind=kind,
                        planned_events=PLANNED_EVENTS,
                        **in_process.compared(on, off),
                        cost_us_per_event=round((on - off) / size, 2),
                        check_us=round(check, 2),
                        check_us_per_event=round(check / size, 2),
                        **_verdict(kind, check / size),
                    )
                )
    return rows


if __name__ == "__main__":
    in_process.child_main(_measure)
