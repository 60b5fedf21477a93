"""Scenario 2: redis-server is SIGKILLed and restarted on the same AOF file (same port, same
directory) while the load continues. The client retries what got 503 with the same
messageIds; gunicorn and the runner reconnect by themselves."""

from __future__ import annotations

import random
import time

from tests.faults.harness import MAX_BATCH, LoadClient, assert_nothing_lost, settle

CRASHES = 2
THREADS = 2


def test_redis_sigkilled_and_restarted_on_its_aof_loses_nothing(start_pipeline, report, seed):
    rng = random.Random(seed)
    started = time.monotonic()
    pipeline = start_pipeline()
    runner = pipeline.start_runner()
    load = LoadClient(pipeline.url, threads=THREADS, requests_per_s=60, seed=seed).start()
    downtimes, waiting = [], []  # waiting: entries not yet archived just before a crash
    try:
        for _ in range(CRASHES):
            time.sleep(rng.uniform(1.5, 3.0))
            waiting.append(pipeline.redis.xlen(pipeline.settings.stream_key))
            pipeline.redis_server.kill()
            downtimes.append(rng.uniform(0.5, 2.0))
            time.sleep(downtimes[-1])
            pipeline.redis_server.start()  # same port, same directory: the same AOF
        accepted = len(load.accepted)
        load.wait_for(lambda c: len(c.accepted) > accepted, 20, "ingest to accept again")
        time.sleep(1.0)
    finally:
        load.stop()

    outcome = settle(
        pipeline,
        load,
        "redis-server SIGKILL",
        started,
        notes=f"{CRASHES} crashes, down {', '.join(f'{d:.1f}s' for d in downtimes)}, "
        f"{'/'.join(map(str, waiting))} entries unarchived at them; "
        f"{load.retried_batches} batches retried",
    )
    report(outcome.figures)
    assert pipeline.gunicorn.poll() is None, "gunicorn died with Redis"
    assert pipeline.runner is runner and runner.poll() is None, "the runner died with Redis"
    assert load.unavailable > 0, "no request saw Redis down: the crash was not felt"
    assert outcome.figures.dead_letters == 0
    # A request in flight at a crash may have been written but not answered: its retry adds a
    # second copy. Nothing else may duplicate: the consumer did not die.
    assert_nothing_lost(outcome, max_duplicates=CRASHES * THREADS * MAX_BATCH)
    assert pipeline.stop_runner() == 0
