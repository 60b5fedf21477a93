"""Scenario 1: the consumer is SIGKILLed again and again, at random moments and mid-flush,
while the load continues; each time a new runner starts and takes over what it left."""

from __future__ import annotations

import random
import time

from tests.conftest import wait_until
from tests.faults.harness import LoadClient, StoreTrap, assert_nothing_lost, settle, sigkill

# Random moments, and inside a flush: before its object is stored, and after it is stored
# but before the consumer hears back (so before XACK: the case that can duplicate).
KILLS = ["random", "random", "random", "before", "after", "after"]


def test_sigkilled_consumers_lose_nothing(start_pipeline, monkeypatch, report, seed):
    rng = random.Random(seed)
    started = time.monotonic()
    pipeline = start_pipeline()
    trap = StoreTrap(pipeline.settings.s3_bucket, pipeline.settings.s3_prefix).install(monkeypatch)
    load = LoadClient(pipeline.url, threads=2, requests_per_s=60, seed=seed).start()
    pipeline.start_runner()
    kills = rng.sample(KILLS, len(KILLS))
    in_flight = 0  # events the killed consumers held unacknowledged
    try:
        for kind in kills:
            time.sleep(rng.uniform(0.3, 2.5))
            if kind == "random":
                in_flight += pipeline.kill_runner()
            else:
                fired = trap.arm(kind, sigkill(pipeline.runner.pid))
                wait_until(fired.is_set, timeout_s=20, what=f"a flush to kill ({kind} storing)")
                in_flight += pipeline.reap_killed_runner()
            pipeline.start_runner()
        time.sleep(1.0)
    finally:
        trap.disarm()
        load.stop()

    outcome = settle(
        pipeline,
        load,
        "consumer SIGKILL",
        started,
        notes=f"{len(kills)} kills, {kills.count('after')} between store and ack; "
        f"{in_flight} events in flight",
    )
    report(outcome.figures)
    assert pipeline.stop_runner() == 0
    assert len(pipeline.killed_runners) == len(KILLS)
    assert outcome.figures.dead_letters == 0
    assert_nothing_lost(outcome, max_duplicates=in_flight)
