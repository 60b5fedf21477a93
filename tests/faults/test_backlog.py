"""Scenario 4: no consumer runs until the backlog reaches STREAM_MAX_LEN. Ingest must then
answer 503 (Retry-After, a JSON error) and accept nothing of those requests, Redis's memory
must stay bounded, and once the consumer starts everything accepted is archived."""

from __future__ import annotations

import json
import time

from tests.faults.harness import LoadClient, assert_nothing_lost, settle

MAX_LEN = 100
OVERFLOW_S = 3.0  # how long the load keeps pushing against the full backlog


def test_full_backlog_refuses_with_503_and_loses_nothing(start_pipeline, report, seed):
    started = time.monotonic()
    pipeline = start_pipeline(STREAM_MAX_LEN=str(MAX_LEN))
    redis, key = pipeline.redis, pipeline.settings.stream_key
    baseline = redis.info("memory")["used_memory"]
    # Fast retries: a few hundred requests per second push against the bound.
    load = LoadClient(pipeline.url, threads=3, requests_per_s=150, retry_wait_s=0.02, seed=seed)
    load.start()
    try:
        load.wait_for(lambda c: c.unavailable > 0, 30, "the backlog to fill up")
        memory = [baseline]
        deadline = time.monotonic() + OVERFLOW_S
        while time.monotonic() < deadline:
            memory.append(redis.info("memory")["used_memory"])
            time.sleep(0.2)
        refused = load.unavailable
        with load.lock:
            accepted_while_full, backlog = load.accepted_requests, redis.xlen(key)
        rejection = load.last_unavailable

        pipeline.start_runner()
        load.wait_for(
            lambda c: c.accepted_requests > accepted_while_full + 50, 30, "admission to resume"
        )
        time.sleep(1.0)
    finally:
        load.stop()

    outcome = settle(
        pipeline,
        load,
        "backlog at STREAM_MAX_LEN",
        started,
        notes=f"STREAM_MAX_LEN={MAX_LEN}, {refused} refused while full",
    )
    report(outcome.figures)
    # The bound is exact, and a refused request added nothing: one entry per accepted request.
    assert backlog == MAX_LEN
    assert accepted_while_full == MAX_LEN
    assert refused >= 50, "the load barely pushed against the bound"
    assert rejection is not None and rejection.status == 503
    assert float(rejection.headers["Retry-After"]) > 0
    assert json.loads(rejection.body)["error"] == "backlog_full"
    # Generous: an entry costs about its request body; an unbounded stream would keep growing.
    limit = baseline + 4 * MAX_LEN * load.largest_body + 2 * 1024 * 1024
    assert max(memory) < limit, f"Redis used {max(memory)} bytes, limit {limit}"
    assert outcome.figures.dead_letters == 0
    assert_nothing_lost(outcome, max_duplicates=0)
    assert pipeline.stop_runner() == 0
