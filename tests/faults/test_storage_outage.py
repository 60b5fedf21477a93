"""Scenario 3: the S3 endpoint goes away for a few seconds, then comes back on the same port.

moto keeps its buckets in module-level state of this process, so a ThreadedMotoServer started
again keeps what was stored before the outage (checked below). Meanwhile the consumer must
acknowledge nothing, stop reading, and resume by itself.
"""

from __future__ import annotations

import time

from tests.conftest import archived_keys, wait_until
from tests.faults.harness import LoadClient, Pipeline, assert_nothing_lost, settle

OUTAGE_S = 4.0


def test_storage_outage_delays_the_archive_and_loses_nothing(start_pipeline, report, seed):
    started = time.monotonic()
    pipeline = start_pipeline()
    bucket, prefix = pipeline.settings.s3_bucket, pipeline.settings.s3_prefix
    runner = pipeline.start_runner()
    load = LoadClient(pipeline.url, threads=2, requests_per_s=60, seed=seed).start()
    try:
        load.wait_for(lambda c: len(c.accepted) > 200, 20, "some load")
        # Hammering the endpoint while it is down would be pointless: wait for two objects.
        keys_before = wait_until_keys(pipeline, 2)
        pipeline.moto.stop()
        time.sleep(OUTAGE_S)
        stuck_pending, unread = pipeline.pending(), pipeline.undelivered()
        pipeline.moto.start()  # same port; moto's backend state lives on in this process
        keys_after_restart = set(archived_keys(pipeline.s3, bucket, prefix))
        time.sleep(1.5)
    finally:
        load.stop()

    outcome = settle(pipeline, load, "S3 endpoint outage", started, notes=f"down {OUTAGE_S:.0f}s")
    report(outcome.figures)
    assert keys_before <= keys_after_restart, "moto lost objects across its restart"
    # The consumer held a flush it could not store, and read nothing more while it could not.
    assert stuck_pending > 0, "no flush was waiting for storage: the outage was not felt"
    assert unread >= 20, f"only {unread} entries unread after {OUTAGE_S}s of outage"
    assert pipeline.runner is runner and runner.poll() is None, "the runner died"
    assert outcome.figures.dead_letters == 0
    # Storage failing is not a consumer dying: every retried put rewrites the same key.
    assert_nothing_lost(outcome, max_duplicates=0)
    assert pipeline.stop_runner() == 0


def wait_until_keys(pipeline: Pipeline, count: int) -> set[str]:
    settings = pipeline.settings

    def keys() -> set[str] | None:
        found = set(archived_keys(pipeline.s3, settings.s3_bucket, settings.s3_prefix))
        return found if len(found) >= count else None

    return wait_until(keys, timeout_s=20, what=f"{count} archived objects")
